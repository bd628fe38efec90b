"""Schema reflection at generation: the literal each generated module embeds for its services.

protoc and buf hand the plugin every FileDescriptorProto the files to generate need. A module embeds those of its package's files and of everything they import, transitively, but the well-known types (`google/protobuf/*.proto`: every
protobuf runtime has them), as one FileDescriptorSet without source info, zlib'd and base64'd (`ServiceSpec.schema`): the runtime
publishes it (docs/PROTOCOL.md, "Schema reflection"), the CLI and the gateway read messages with it.
Read before betterproto builds its model, which renames descriptors in place.
"""

from __future__ import annotations

import base64
import zlib

from betterproto.lib.google.protobuf import FileDescriptorProto

WELL_KNOWN = "google/protobuf/"
_SOURCE_CODE_INFO = 9  # FileDescriptorProto.source_code_info: comments and spans, not needed to read messages


def schemas(files: list[FileDescriptorProto], packages: set[str]) -> dict[str, str]:
    """Per package in `packages`: the literal of its files and their imports."""
    by_name = {file.name: file for file in files}
    literals: dict[str, str] = {}
    for package in sorted(packages):
        ordered: list[FileDescriptorProto] = []  # each file after its imports; the same from protoc and buf
        seen: set[str] = set()

        def visit(name: str) -> None:
            if name in seen or name not in by_name or name.startswith(WELL_KNOWN):
                return
            seen.add(name)
            for dependency in by_name[name].dependency:
                visit(dependency)
            ordered.append(by_name[name])

        for name in sorted(file.name for file in files if file.package == package):
            visit(name)
        body = b"".join(_field(1, _without_source_info(bytes(file))) for file in ordered)
        literals[package] = base64.b64encode(zlib.compress(body, 9)).decode()
    return literals


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _without_source_info(data: bytes) -> bytes:
    """A serialized FileDescriptorProto without its top-level source_code_info field (protoc's output:
    trusted framing)."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        wire = tag & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unexpected wire type {wire} in a FileDescriptorProto")
        if tag >> 3 != _SOURCE_CODE_INFO:
            out += data[start:pos]
    return bytes(out)
