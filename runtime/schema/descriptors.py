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
from typing import Any

from betterproto.lib.google.protobuf import FileDescriptorSet

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


def method_types(data: bytes, service: str) -> dict[str, tuple[str, str]]:
    """Request and response full names of each method of `service` (proto full name), read from a
    serialized FileDescriptorSet with betterproto's descriptor classes (at start, once)."""
    found: dict[str, tuple[str, str]] = {}
    for file in FileDescriptorSet().parse(data).file:
        for described in file.service:
            if ".".join(filter(None, (file.package, described.name))) == service:
                for method in described.method:
                    found[method.name] = (method.input_type.lstrip("."), method.output_type.lstrip("."))
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
