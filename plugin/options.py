"""Our `(natsmicro.*)` options as betterproto dataclasses, read from descriptor unknown fields.

protoc hands extension values to the plugin inside each options message; betterproto's descriptor
classes keep them as raw bytes in `_unknown_fields`. No google.protobuf runtime is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import betterproto

SERVICE = 50001
ENDPOINT = 50002
KV_STORE = 50003
OBJECT_STORE = 50004
STREAM = 50005
CHUNKED_IO = 50006


@dataclass(eq=False, repr=False)
class ServiceOptions(betterproto.Message):
    subject_prefix: str = betterproto.string_field(1)
    name: str = betterproto.string_field(2)
    version: str = betterproto.string_field(3)
    description: str = betterproto.string_field(4)
    metadata: dict[str, str] = betterproto.map_field(5, betterproto.TYPE_STRING, betterproto.TYPE_STRING)
    timeout: timedelta = betterproto.message_field(6)
    skip: bool = betterproto.bool_field(7)
    json: bool = betterproto.bool_field(8)
    error_codes: list[str] = betterproto.string_field(9)
    queue_group_disabled: bool = betterproto.bool_field(10)


@dataclass(eq=False, repr=False)
class EndpointOptions(betterproto.Message):
    timeout: timedelta = betterproto.message_field(1)
    skip: bool = betterproto.bool_field(2)
    metadata: dict[str, str] = betterproto.map_field(3, betterproto.TYPE_STRING, betterproto.TYPE_STRING)
    queue_group_disabled: bool = betterproto.bool_field(4)
    pending_msg_limit: int = betterproto.int32_field(5)
    pending_bytes_limit: int = betterproto.int32_field(6)


@dataclass(eq=False, repr=False)
class StreamOptions(betterproto.Message):
    max_inflight: int = betterproto.int32_field(1)
    ordered: bool = betterproto.bool_field(2)


@dataclass(eq=False, repr=False)
class ChunkedIOOptions(betterproto.Message):
    chunk_field: str = betterproto.string_field(1)
    default_chunk_size: int = betterproto.int32_field(2)


class KVWriteMode(betterproto.Enum):
    KV_WRITE_MODE_UNSPECIFIED = 0
    KV_WRITE_MODE_LAST_WRITE_WINS = 1
    KV_WRITE_MODE_COMPARE_AND_SET = 2
    KV_WRITE_MODE_CREATE_ONLY = 3


class KVPersistFailurePolicy(betterproto.Enum):
    KV_PERSIST_FAILURE_POLICY_UNSPECIFIED = 0
    KV_PERSIST_FAILURE_POLICY_BEST_EFFORT = 1
    KV_PERSIST_FAILURE_POLICY_REQUIRED = 2


@dataclass(eq=False, repr=False)
class KVStoreOptions(betterproto.Message):
    bucket: str = betterproto.string_field(1)
    key_template: str = betterproto.string_field(2)
    ttl: timedelta = betterproto.message_field(3)
    description: str = betterproto.string_field(4)
    max_history: int = betterproto.int32_field(5)
    client_only: bool = betterproto.bool_field(6)
    metadata: dict[str, str] = betterproto.map_field(7, betterproto.TYPE_STRING, betterproto.TYPE_STRING)
    limit_marker_ttl: timedelta = betterproto.message_field(8)
    key_ttl: timedelta = betterproto.message_field(9)
    purge_ttl: timedelta = betterproto.message_field(10)
    write_mode: KVWriteMode = betterproto.enum_field(11)
    persist_failure_policy: KVPersistFailurePolicy = betterproto.enum_field(12)
    compression: bool = betterproto.bool_field(13)


@dataclass(eq=False, repr=False)
class ObjectStoreOptions(betterproto.Message):
    bucket: str = betterproto.string_field(1)
    key_template: str = betterproto.string_field(2)
    ttl: timedelta = betterproto.message_field(3)
    description: str = betterproto.string_field(4)
    client_only: bool = betterproto.bool_field(5)
    compression: bool = betterproto.bool_field(6)


O = TypeVar("O", bound=betterproto.Message)


class OptionError(ValueError):
    """An option value that cannot be read."""


def extension_numbers(options: betterproto.Message | None) -> set[int]:
    """Which extension field numbers an options message carries."""
    raw = getattr(options, "_unknown_fields", b"") if options is not None else b""
    return {field.number for field in betterproto.parse_fields(raw)} if raw else set()


def read_extension(options: betterproto.Message | None, number: int, message_type: type[O]) -> O | None:
    """The value of extension `number` in a descriptor's options, or None when it is not set."""
    raw = getattr(options, "_unknown_fields", b"") if options is not None else b""
    if not raw:
        return None
    value: O | None = None
    for field in betterproto.parse_fields(raw):
        if field.number != number:
            continue
        if field.wire_type != 2:
            raise OptionError(f"extension {number} has wire type {field.wire_type}, expected a message")
        value = value or message_type()
        value.parse(field.value)  # repeated occurrences merge, as protobuf does
    if value is not None:
        unknown = extension_numbers(value)
        if unknown:
            names = ", ".join(str(n) for n in sorted(unknown))
            raise OptionError(f"unknown field(s) {names} in {message_type.__name__}: is options.proto newer than this plugin?")
    return value
