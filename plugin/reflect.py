"""Schema reflection at generation: the literal each generated module embeds for its services.

protoc and buf hand the plugin every FileDescriptorProto the files to generate need. A module embeds those of its package's files and of everything they import, transitively, but the well-known types (`google/protobuf/*.proto`: every
protobuf runtime has them), as one FileDescriptorSet without source info, zlib'd and base64'd (`ServiceSpec.schema`): the runtime
publishes it (docs/PROTOCOL.md, "Schema reflection"), the CLI and the gateway read messages with it.
"""

from __future__ import annotations

from betterproto2_compiler.lib.google.protobuf import FileDescriptorProto

from betterproto_nats.encoding.protobuf import write_bytes
from betterproto_nats.schema.descriptors import schema_literal, wire_fields

WELL_KNOWN = "google/protobuf/"
_SET_FILE = b"\x0a"  # FileDescriptorSet.file (field 1, length-delimited)
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
        body = bytearray()
        for file in ordered:
            write_bytes(body, _SET_FILE, _without_source_info(bytes(file)))
        literals[package] = schema_literal(bytes(body))
    return literals


def _without_source_info(data: bytes) -> bytes:
    """A serialized FileDescriptorProto without its top-level source_code_info field."""
    return b"".join(data[start:end] for number, start, end, _ in wire_fields(data) if number != _SOURCE_CODE_INFO)
