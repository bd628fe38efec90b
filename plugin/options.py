"""Our `(natsmicro.*)` options as betterproto2 dataclasses, read from descriptor unknown fields.

protoc hands extension values to the plugin inside each options message; betterproto2_compiler's
descriptor classes keep them as raw bytes in `_unknown_fields`. No google.protobuf runtime is needed.
Duration options are `Duration` messages (None when absent); `seconds` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import betterproto2
from betterproto2_compiler.lib.google.protobuf import Duration as Duration

SERVICE = 50001
ENDPOINT = 50002
KV_STORE = 50003
OBJECT_STORE = 50004
STREAM = 50005
CHUNKED_IO = 50006


@dataclass(eq=False, repr=False)
class ServiceOptions(betterproto2.Message):
    subject_prefix: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    name: str = betterproto2.field(2, betterproto2.TYPE_STRING)
    version: str = betterproto2.field(3, betterproto2.TYPE_STRING)
    description: str = betterproto2.field(4, betterproto2.TYPE_STRING)
    metadata: dict[str, str] = betterproto2.field(5, betterproto2.TYPE_MAP, map_meta=betterproto2.map_meta(betterproto2.TYPE_STRING, betterproto2.TYPE_STRING))
    timeout: Duration | None = betterproto2.field(6, betterproto2.TYPE_MESSAGE, optional=True)
    skip: bool = betterproto2.field(7, betterproto2.TYPE_BOOL)
    json: bool = betterproto2.field(8, betterproto2.TYPE_BOOL)
    error_codes: list[str] = betterproto2.field(9, betterproto2.TYPE_STRING, repeated=True)
    queue_group_disabled: bool = betterproto2.field(10, betterproto2.TYPE_BOOL)


@dataclass(eq=False, repr=False)
class EndpointOptions(betterproto2.Message):
    timeout: Duration | None = betterproto2.field(1, betterproto2.TYPE_MESSAGE, optional=True)
    skip: bool = betterproto2.field(2, betterproto2.TYPE_BOOL)
    metadata: dict[str, str] = betterproto2.field(3, betterproto2.TYPE_MAP, map_meta=betterproto2.map_meta(betterproto2.TYPE_STRING, betterproto2.TYPE_STRING))
    queue_group_disabled: bool = betterproto2.field(4, betterproto2.TYPE_BOOL)
    pending_msg_limit: int = betterproto2.field(5, betterproto2.TYPE_INT32)
    pending_bytes_limit: int = betterproto2.field(6, betterproto2.TYPE_INT32)


@dataclass(eq=False, repr=False)
class StreamOptions(betterproto2.Message):
    max_inflight: int = betterproto2.field(1, betterproto2.TYPE_INT32)
    ordered: bool = betterproto2.field(2, betterproto2.TYPE_BOOL)


@dataclass(eq=False, repr=False)
class ChunkedIOOptions(betterproto2.Message):
    chunk_field: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    default_chunk_size: int = betterproto2.field(2, betterproto2.TYPE_INT32)


class KVWriteMode(betterproto2.Enum):
    KV_WRITE_MODE_UNSPECIFIED = 0
    KV_WRITE_MODE_LAST_WRITE_WINS = 1
    KV_WRITE_MODE_COMPARE_AND_SET = 2
    KV_WRITE_MODE_CREATE_ONLY = 3


class KVPersistFailurePolicy(betterproto2.Enum):
    KV_PERSIST_FAILURE_POLICY_UNSPECIFIED = 0
    KV_PERSIST_FAILURE_POLICY_BEST_EFFORT = 1
    KV_PERSIST_FAILURE_POLICY_REQUIRED = 2


@dataclass(eq=False, repr=False)
class KVStoreOptions(betterproto2.Message):
    bucket: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    key_template: str = betterproto2.field(2, betterproto2.TYPE_STRING)
    ttl: Duration | None = betterproto2.field(3, betterproto2.TYPE_MESSAGE, optional=True)
    description: str = betterproto2.field(4, betterproto2.TYPE_STRING)
    max_history: int = betterproto2.field(5, betterproto2.TYPE_INT32)
    client_only: bool = betterproto2.field(6, betterproto2.TYPE_BOOL)
    metadata: dict[str, str] = betterproto2.field(7, betterproto2.TYPE_MAP, map_meta=betterproto2.map_meta(betterproto2.TYPE_STRING, betterproto2.TYPE_STRING))
    limit_marker_ttl: Duration | None = betterproto2.field(8, betterproto2.TYPE_MESSAGE, optional=True)
    key_ttl: Duration | None = betterproto2.field(9, betterproto2.TYPE_MESSAGE, optional=True)
    purge_ttl: Duration | None = betterproto2.field(10, betterproto2.TYPE_MESSAGE, optional=True)
    write_mode: KVWriteMode = betterproto2.field(11, betterproto2.TYPE_ENUM, default_factory=lambda: KVWriteMode(0))
    persist_failure_policy: KVPersistFailurePolicy = betterproto2.field(12, betterproto2.TYPE_ENUM, default_factory=lambda: KVPersistFailurePolicy(0))
    compression: bool = betterproto2.field(13, betterproto2.TYPE_BOOL)


@dataclass(eq=False, repr=False)
class ObjectStoreOptions(betterproto2.Message):
    bucket: str = betterproto2.field(1, betterproto2.TYPE_STRING)
    key_template: str = betterproto2.field(2, betterproto2.TYPE_STRING)
    ttl: Duration | None = betterproto2.field(3, betterproto2.TYPE_MESSAGE, optional=True)
    description: str = betterproto2.field(4, betterproto2.TYPE_STRING)
    client_only: bool = betterproto2.field(5, betterproto2.TYPE_BOOL)
    compression: bool = betterproto2.field(6, betterproto2.TYPE_BOOL)


O = TypeVar("O", bound=betterproto2.Message)


def seconds(duration: Duration | None) -> float | None:
    """A Duration option in seconds; None when it is absent."""
    if duration is None:
        return None
    return timedelta(seconds=duration.seconds, microseconds=duration.nanos / 1e3).total_seconds()


class OptionError(ValueError):
    """An option value that cannot be read."""


def extension_numbers(options: betterproto2.Message | None) -> set[int]:
    """Which extension field numbers an options message carries."""
    raw = getattr(options, "_unknown_fields", b"") if options is not None else b""
    return {field.number for field in betterproto2.parse_fields(raw)} if raw else set()


def read_extension(options: betterproto2.Message | None, number: int, message_type: type[O]) -> O | None:
    """The value of extension `number` in a descriptor's options, or None when it is not set."""
    raw = getattr(options, "_unknown_fields", b"") if options is not None else b""
    if not raw:
        return None
    parts = []
    for field in betterproto2.parse_fields(raw):
        if field.number != number:
            continue
        if field.wire_type != 2:
            raise OptionError(f"extension {number} has wire type {field.wire_type}, expected a message")
        parts.append(field.value)
    # repeated occurrences merge, as protobuf does: parsing their concatenation merges them
    value = message_type.parse(b"".join(parts)) if parts else None
    if value is not None:
        unknown = extension_numbers(value)
        if unknown:
            names = ", ".join(str(n) for n in sorted(unknown))
            raise OptionError(f"unknown field(s) {names} in {message_type.__name__}: is options.proto newer than this plugin?")
    return value
