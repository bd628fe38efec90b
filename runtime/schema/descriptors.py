"""A service's own schema as generated code embeds it, and the reflection convention's names.

The plugin embeds in each generated module a `FileDescriptorSet` (the module's proto files and
everything they import, without source info) as base64 of its zlib'd bytes. A running service
publishes, per endpoint, the `proto.*` keys below in its `$SRV` INFO metadata, and answers
`$SRV.PROTO.<name>[.<id>]` with the set (docs/PROTOCOL.md, "Schema reflection"). Nothing here
parses descriptors: the service only hands the bytes on.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import zlib
from typing import Any, Iterator

from .spec import Cardinality, MethodSpec, ServiceSpec

# Per-endpoint `$SRV` INFO metadata keys.
METHOD_KEY = "proto.method"  # "streaming.v1.StreamDemoService/Ping"
SHAPE_KEY = "proto.shape"  # unary | server | client | bidi
REQUEST_KEY = "proto.request"  # the request message's full name
RESPONSE_KEY = "proto.response"
SCHEMA_KEY = "proto.schema"  # "sha256:<hex>" of the set `$SRV.PROTO` answers with
KEYS = (METHOD_KEY, SHAPE_KEY, REQUEST_KEY, RESPONSE_KEY, SCHEMA_KEY)

SCHEMA_VERB = "PROTO"  # `$SRV.PROTO.<name>` and `$SRV.PROTO.<name>.<id>`
SCHEMA_DIGEST_HEADER = "Nats-Schema-Digest"
# What a generated module may embed (decompressed): far beyond any real schema, a bound on zlib.
MAX_SCHEMA_BYTES = 16 * 1024 * 1024

SHAPES = {
    Cardinality.UNARY: "unary",
    Cardinality.SERVER_STREAM: "server",
    Cardinality.CLIENT_STREAM: "client",
    Cardinality.BIDI: "bidi",
}


def schema_subject(name: str, id: str | None = None) -> str:
    """Where a service answers schema requests (`$SRV.PROTO.<name>[.<id>]`)."""
    return f"$SRV.{SCHEMA_VERB}.{name}" + (f".{id}" if id else "")


@functools.lru_cache(maxsize=64)
def schema_bytes(literal: str) -> bytes:
    """The serialized FileDescriptorSet of an embedded literal (b"" for none); decoded once."""
    if not literal:
        return b""
    inflater = zlib.decompressobj()
    data = inflater.decompress(base64.b64decode(literal), MAX_SCHEMA_BYTES)
    if inflater.unconsumed_tail:
        raise ValueError(f"embedded schema is larger than {MAX_SCHEMA_BYTES} bytes")
    return data


def schema_literal(data: bytes) -> str:
    """The literal the plugin embeds for a serialized FileDescriptorSet."""
    return base64.b64encode(zlib.compress(data, 9)).decode()


def digest(data: bytes) -> str:
    """`sha256:<hex>` of a serialized schema: equal digests, equal sets."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def wire_fields(data: bytes) -> Iterator[tuple[int, int, int, bytes | None]]:
    """The top-level fields of a serialized message: (number, start, end of the whole field in
    `data`, the payload of a length-delimited one or None). ValueError on broken framing. For
    descriptors (generated code's, the plugin's input), not for bodies from the wire."""
    pos, size = 0, len(data)

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= size or shift > 63:
                raise ValueError("a broken varint in a descriptor")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while pos < size:
        start = pos
        key = varint()
        wire, payload = key & 7, None
        if wire == 0:
            varint()
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length = varint()
            payload = data[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"wire type {wire} in a descriptor")
        if pos > size:
            raise ValueError("a truncated field in a descriptor")
        yield key >> 3, start, pos, payload


def _strings(data: bytes, *numbers: int) -> dict[int, str]:
    """The string fields `numbers` of a serialized message (the last of each wins, as protobuf reads)."""
    return {number: payload.decode() for number, _, _, payload in wire_fields(data) if number in numbers and payload is not None}


def _messages(data: bytes, number: int) -> Iterator[bytes]:
    return (payload for found, _, _, payload in wire_fields(data) if found == number and payload is not None)


# Field numbers of descriptor.proto: FileDescriptorSet.file; FileDescriptorProto.package, .service;
# ServiceDescriptorProto.name, .method; MethodDescriptorProto.name, .input_type, .output_type.
_SET_FILE, _FILE_PACKAGE, _FILE_SERVICE, _NAME, _SERVICE_METHOD, _INPUT, _OUTPUT = 1, 2, 6, 1, 2, 2, 3


def method_types(data: bytes, service: str) -> dict[str, tuple[str, str]]:
    """Request and response full names of each method of `service` (proto full name), read from a
    serialized FileDescriptorSet (at start, once)."""
    found: dict[str, tuple[str, str]] = {}
    for file in _messages(data, _SET_FILE):
        package = _strings(file, _FILE_PACKAGE).get(_FILE_PACKAGE, "")
        for described in _messages(file, _FILE_SERVICE):
            if ".".join(filter(None, (package, _strings(described, _NAME).get(_NAME, "")))) != service:
                continue
            for method in _messages(described, _SERVICE_METHOD):
                names = _strings(method, _NAME, _INPUT, _OUTPUT)
                found[names.get(_NAME, "")] = (names.get(_INPUT, "").lstrip("."), names.get(_OUTPUT, "").lstrip("."))
    return found


def endpoint_metadata(
    spec: ServiceSpec, method: MethodSpec[Any, Any], types: dict[str, tuple[str, str]], schema_digest: str
) -> dict[str, str]:
    """The `proto.*` keys of one endpoint (none when the schema does not describe it)."""
    if method.name not in types:
        return {}
    request, response = types[method.name]
    return {
        METHOD_KEY: spec.full_name(method),
        SHAPE_KEY: SHAPES[method.cardinality],
        REQUEST_KEY: request,
        RESPONSE_KEY: response,
        SCHEMA_KEY: schema_digest,
    }
