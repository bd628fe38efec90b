"""Protobuf's wire format for the codecs the plugin generates, and the registry `Codec` finds them in.

The plugin generates, per message, an encoder and a decoder that work on betterproto2 dataclasses
directly: the decoder makes the object with `object.__new__` and sets every field and
`_unknown_fields`; the encoder reads the attributes. They write the common cases (one-byte varints,
short strings, bytes and bodies) in place, under the conditions of the fast paths below, and call
the functions below for the rest, through `_api_v1`, so the names are part of that API (code
generated earlier also calls `build_plain`).

Code generated for betterproto 2.0.0b7 messages (plugin 0.1) calls some names of its own (`UNSET`,
`fields_of`, `build`, `write_message`, `append`, `extend`, `put`, `read_enum`, `read_message_type`):
they stay, and work where that code runs, i.e. where it imported `betterproto` 2.0.0b7 itself. This
module never imports it: `UNSET` (its PLACEHOLDER) is looked up in `sys.modules` when asked for.

Bytes are written as google protobuf writes them: fields in field-number order, packed repeated
scalars (unless `[packed = false]`), map entries with both key and value, a float's negative zero,
unknown fields last. Reading checks framing the way google protobuf (upb) does: truncated values,
keys longer than five bytes or above 2^32, field number 0, wire types 4 (outside a group), 6 and 7,
varints longer than ten bytes, lengths longer than five bytes or past the end, bad UTF-8 in strings,
groups that do not end, nesting deeper than 100. Any of these raises `DecodeError` (or `IndexError`
/ `struct.error` for reads past the end of the buffer), which `Codec` turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
import struct
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, TypeVar

import betterproto2

# What generated code calls (through `_api_v1`, which re-exports exactly these): for every protobuf
# scalar type T, read_T / write_T and, for packable ones, read_packed_T / write_packed_T; for every
# wrapper type, read_T_value / write_T_value. Part of API v1: never removed, never changed in meaning.
__all__ = [
    "Any", "DecodeError", "EPOCH", "Fields", "append", "build", "datetime", "encode_message", "extend",
    "fields_of", "nonzero", "put", "register", "skip_field", "timedelta", "read_key", "read_message",
    "read_message_type", "write_message", "read_timestamp", "read_duration", "write_timestamp",
    "write_duration", "read_string", "read_bytes", "write_string", "write_bytes", "read_int32", "read_int64",
    "read_uint32", "read_uint64", "read_sint32", "read_sint64", "read_bool", "read_enum", "read_fixed32",
    "read_sfixed32", "read_float", "read_fixed64", "read_sfixed64", "read_double", "write_int32",
    "write_int64", "write_uint32", "write_uint64", "write_sint32", "write_sint64", "write_bool",
    "write_enum", "write_fixed32", "write_sfixed32", "write_float", "write_fixed64", "write_sfixed64",
    "write_double", "read_packed_int32", "read_packed_int64", "read_packed_uint32", "read_packed_uint64",
    "read_packed_sint32", "read_packed_sint64", "read_packed_bool", "read_packed_enum",
    "read_packed_fixed32", "read_packed_sfixed32", "read_packed_float", "read_packed_fixed64",
    "read_packed_sfixed64", "read_packed_double", "write_packed_int32", "write_packed_int64",
    "write_packed_uint32", "write_packed_uint64", "write_packed_sint32", "write_packed_sint64",
    "write_packed_bool", "write_packed_enum", "write_packed_fixed32", "write_packed_sfixed32",
    "write_packed_float", "write_packed_fixed64", "write_packed_sfixed64", "write_packed_double",
    "read_bool_value", "read_int32_value", "read_int64_value", "read_uint32_value", "read_uint64_value",
    "read_float_value", "read_double_value", "read_string_value", "read_bytes_value", "write_bool_value",
    "write_int32_value", "write_int64_value", "write_uint32_value", "write_uint64_value",
    "write_float_value", "write_double_value", "write_string_value", "write_bytes_value",
    "build_plain", "read_enum_open", "read_packed_enum_open", "read_message_class",
]

M = TypeVar("M", bound=betterproto2.Message)
V = TypeVar("V")
Fields = dict[str, Any]
Encoder = Callable[[Any], bytes]
Decoder = Callable[[bytes, int, int, int], Any]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""A Timestamp's zero, for a map's Timestamp value missing from its entry."""
MAX_DEPTH = 100
"""Nested messages (and groups) deeper than this are refused, as google protobuf refuses them."""

ENCODERS: dict[type, Encoder] = {}
DECODERS: dict[type, Decoder] = {}


class DecodeError(ValueError):
    """A body that is not a valid encoding of its message."""


def register(message_type: type[M], encode: Callable[[M], bytes], decode: Callable[[bytes, int, int, int], M]) -> None:
    """Generated code registers each message's codec here; `Codec` uses it for that exact class."""
    ENCODERS[message_type] = encode
    DECODERS[message_type] = decode


def fields_of(message: Any) -> Fields:
    """A message's `__dict__`, without betterproto 2.0.0b7's `__getattribute__` (code generated for it)."""
    fields: Fields = object.__getattribute__(message, "__dict__")
    return fields


_new = object.__new__
_set_attribute = object.__setattr__


def build(message_type: type[V], fields: Fields) -> V:
    """A message with exactly `fields` as its `__dict__` (no `__init__`, no `__post_init__`; code
    generated for betterproto 2.0.0b7, whose `__setattr__` is bypassed)."""
    message = _new(message_type)
    _set_attribute(message, "__dict__", fields)
    return message


def unset() -> Any:
    """betterproto 2.0.0b7's PLACEHOLDER (`UNSET` of API v1): a field never set, in code generated
    for it, which imported `betterproto` itself; this module does not import it."""
    module = sys.modules.get("betterproto")
    if module is None:
        raise AttributeError(
            "UNSET is for code generated for betterproto 2.0.0b7 messages: install betterproto==2.0.0b7 "
            "for it, or regenerate it with this version's plugin (betterproto2 messages)"
        )
    return module.PLACEHOLDER


def build_plain(message_type: type[V], fields: Fields) -> V:
    """A plain dataclass message (betterproto2) with exactly `fields` as its `__dict__`: no `__init__`,
    no `__post_init__` (the decoder sets `_unknown_fields` itself)."""
    message = _new(message_type)
    message.__dict__ = fields
    return message


def encode_message(message: betterproto2.Message) -> bytes:
    """A message's body: its generated encoder if it has one, else its own `bytes()`."""
    encode = ENCODERS.get(type(message))
    return encode(message) if encode is not None else bytes(message)


# --- Writing ----------------------------------------------------------------------------------------
# Every write_* function writes its field unconditionally: whether a default is left out is decided
# by the generated code, as protobuf decides it (implicit presence, `optional`, oneofs, elements).


def put_varint(out: bytearray, value: int) -> None:
    """Append a varint; a negative number as its 64-bit two's complement (ten bytes), as protobuf
    writes it. Numbers outside 64 bits raise (betterproto 2.0.0b7 wrote an invalid varint)."""
    if value < 0:
        if value < -(1 << 63):
            raise ValueError(f"{value} does not fit in 64 bits")
        value += 1 << 64
    elif value >> 64:
        raise ValueError(f"{value} does not fit in 64 bits")
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)


def varint(value: int) -> bytes:
    out = bytearray()
    put_varint(out, value)
    return bytes(out)


def write_int32(out: bytearray, tag: bytes, value: int) -> None:
    out += tag
    if 0 <= value < 0x80:
        out.append(value)
    elif 0 < value < 0x4000:
        out.append(value & 0x7F | 0x80)
        out.append(value >> 7)
    else:
        put_varint(out, value)


write_int64 = write_uint32 = write_uint64 = write_enum = write_int32


def write_sint32(out: bytearray, tag: bytes, value: int) -> None:
    write_int32(out, tag, value << 1 if value >= 0 else (value << 1) ^ -1)


write_sint64 = write_sint32


def write_bool(out: bytearray, tag: bytes, value: bool) -> None:
    out += tag
    out.append(1 if value else 0)


def _fixed_writer(fmt: str) -> Callable[[bytearray, bytes, Any], None]:
    pack = struct.Struct(fmt).pack

    def write(out: bytearray, tag: bytes, value: Any) -> None:
        out += tag
        out += pack(value)

    return write


write_fixed32 = _fixed_writer("<I")
write_sfixed32 = _fixed_writer("<i")
write_float = _fixed_writer("<f")
write_fixed64 = _fixed_writer("<Q")
write_sfixed64 = _fixed_writer("<q")
write_double = _fixed_writer("<d")


def nonzero(value: Any) -> bool:
    """Whether an implicit-presence float field is written: not unset, not None, not +0.0 (protobuf
    compares a float's bits, so -0.0 is written)."""
    if value is None or not isinstance(value, (int, float)):  # None, or 2.0.0b7's PLACEHOLDER
        return False
    return bool(value) or math.copysign(1.0, value) < 0


def write_bytes(out: bytearray, tag: bytes, value: bytes | bytearray) -> None:
    out += tag
    size = len(value)
    if size < 0x80:
        out.append(size)
    else:
        put_varint(out, size)
    out += value


def write_string(out: bytearray, tag: bytes, value: str) -> None:
    data = value.encode()
    out += tag
    size = len(data)
    if size < 0x80:
        out.append(size)
    else:
        put_varint(out, size)
    out += data


def write_message(out: bytearray, tag: bytes, message: betterproto2.Message, body: bytes) -> None:
    """A singular message field of code generated for 2.0.0b7: written when it has content or 2.0.0b7 counts it as set
    (`_serialized_on_wire`: received, or given a value)."""
    if body or fields_of(message)["_serialized_on_wire"]:
        write_bytes(out, tag, body)


def _packed_varint_writer(zigzag: bool) -> Callable[[bytearray, bytes, Any], None]:
    def write(out: bytearray, tag: bytes, values: Any) -> None:
        body = bytearray()
        for value in values:
            if zigzag:
                value = value << 1 if value >= 0 else (value << 1) ^ -1
            if 0 <= value < 0x80:
                body.append(value)
            else:
                put_varint(body, value)
        write_bytes(out, tag, body)

    return write


write_packed_int32 = write_packed_int64 = write_packed_uint32 = write_packed_uint64 = write_packed_enum = (
    _packed_varint_writer(False)
)
write_packed_sint32 = write_packed_sint64 = _packed_varint_writer(True)


def write_packed_bool(out: bytearray, tag: bytes, values: Any) -> None:
    write_bytes(out, tag, bytes([1 if value else 0 for value in values]))


def _packed_fixed_writer(code: str) -> Callable[[bytearray, bytes, Any], None]:
    def write(out: bytearray, tag: bytes, values: Any) -> None:
        write_bytes(out, tag, struct.pack(f"<{len(values)}{code}", *values))

    return write


write_packed_fixed32 = _packed_fixed_writer("I")
write_packed_sfixed32 = _packed_fixed_writer("i")
write_packed_float = _packed_fixed_writer("f")
write_packed_fixed64 = _packed_fixed_writer("Q")
write_packed_sfixed64 = _packed_fixed_writer("q")
write_packed_double = _packed_fixed_writer("d")


def _seconds_nanos(seconds: int, nanos: int) -> bytearray:
    body = bytearray()
    if seconds:
        write_int64(body, b"\x08", seconds)
    if nanos:
        write_int32(body, b"\x10", nanos)
    return body


def write_timestamp(out: bytearray, tag: bytes, value: datetime) -> None:
    """A Timestamp from a datetime (UTC; a naive datetime raises)."""
    offset = value - EPOCH
    seconds, micros = divmod((offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds, 1_000_000)
    write_bytes(out, tag, _seconds_nanos(seconds, micros * 1000))


def write_duration(out: bytearray, tag: bytes, value: timedelta) -> None:
    """A Duration from a timedelta; seconds and nanos carry the same sign, as protobuf requires
    (betterproto 2.0.0b7 gets negative fractions wrong: -1.5 s becomes -1 s + 0.5 s)."""
    micros = (value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds
    sign = -1 if micros < 0 else 1
    seconds, micros = divmod(abs(micros), 1_000_000)
    write_bytes(out, tag, _seconds_nanos(sign * seconds, sign * micros * 1000))


# Wrapper messages (google.protobuf.*Value), which betterproto2 maps to Optional scalars: the field
# is written whenever it is not None; the wrapped value inside only when it is not the default.


def write_bool_value(out: bytearray, tag: bytes, value: bool) -> None:
    write_bytes(out, tag, b"\x08\x01" if value else b"")


def write_int32_value(out: bytearray, tag: bytes, value: int) -> None:
    body = bytearray()
    if value:
        write_int32(body, b"\x08", value)
    write_bytes(out, tag, body)


write_int64_value = write_uint32_value = write_uint64_value = write_int32_value


def write_float_value(out: bytearray, tag: bytes, value: float) -> None:
    body = bytearray()
    if nonzero(value):
        write_float(body, b"\x0d", value)
    write_bytes(out, tag, body)


def write_double_value(out: bytearray, tag: bytes, value: float) -> None:
    body = bytearray()
    if nonzero(value):
        write_double(body, b"\x09", value)
    write_bytes(out, tag, body)


def write_string_value(out: bytearray, tag: bytes, value: str) -> None:
    body = bytearray()
    if value:
        write_string(body, b"\x0a", value)
    write_bytes(out, tag, body)


def write_bytes_value(out: bytearray, tag: bytes, value: bytes) -> None:
    body = bytearray()
    if value:
        write_bytes(body, b"\x0a", value)
    write_bytes(out, tag, body)


# --- Reading ----------------------------------------------------------------------------------------
# Readers take the buffer and the position of a value (after its key) and return the value and the
# position after it. Varint and fixed-size readers may run past `end` of a nested message (never past
# the buffer): the generated loop then ends beyond `end` and refuses the message.

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF


def read_varint(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte, `first` (>= 0x80), was at `pos - 1`; at most ten
    bytes, bits beyond 64 dropped."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than ten bytes")


def _read_short(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a varint of at most five bytes (keys and lengths), whose first byte was `first`."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 35:
            raise DecodeError("key or length longer than five bytes")


def read_key(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of a field key (field number << 3 | wire type) of two to five bytes."""
    value, pos = _read_short(data, pos, first)
    if value > _MASK32:
        raise DecodeError("field number out of range")
    return value, pos


def _read_length(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """A length prefix (at most five bytes) and the position after it; the stop must be within end."""
    size = data[pos]
    pos += 1
    if size >= 0x80:
        size, pos = _read_short(data, pos, size)
    stop = pos + size
    if stop > end:
        raise DecodeError("length past the end of the message")
    return pos, stop




def read_uint64(data: bytes, pos: int) -> tuple[int, int]:
    value = data[pos]
    if value < 0x80:
        return value, pos + 1
    byte = data[pos + 1]
    if byte < 0x80:  # two bytes: below 2^14, the same for every integer type
        return value & 0x7F | byte << 7, pos + 2
    value, pos = read_varint(data, pos + 1, value)
    return value, pos


def read_int64(data: bytes, pos: int) -> tuple[int, int]:
    value = data[pos]
    if value < 0x80:
        return value, pos + 1
    byte = data[pos + 1]
    if byte < 0x80:  # two bytes: below 2^14, the same for every integer type
        return value & 0x7F | byte << 7, pos + 2
    value, pos = read_varint(data, pos + 1, value)
    return (value ^ 0x8000000000000000) - 0x8000000000000000, pos


def read_uint32(data: bytes, pos: int) -> tuple[int, int]:
    value = data[pos]
    if value < 0x80:
        return value, pos + 1
    byte = data[pos + 1]
    if byte < 0x80:  # two bytes: below 2^14, the same for every integer type
        return value & 0x7F | byte << 7, pos + 2
    value, pos = read_varint(data, pos + 1, value)
    return value & _MASK32, pos


def read_int32(data: bytes, pos: int) -> tuple[int, int]:
    value = data[pos]
    if value < 0x80:
        return value, pos + 1
    byte = data[pos + 1]
    if byte < 0x80:  # two bytes: below 2^14, the same for every integer type
        return value & 0x7F | byte << 7, pos + 2
    value, pos = read_varint(data, pos + 1, value)
    return ((value & _MASK32) ^ 0x80000000) - 0x80000000, pos


def read_sint32(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = read_uint32(data, pos)
    return (value >> 1) ^ -(value & 1), pos


def read_sint64(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = read_uint64(data, pos)
    return (value >> 1) ^ -(value & 1), pos


def read_bool(data: bytes, pos: int) -> tuple[bool, int]:
    value = data[pos]
    if value < 0x80:
        return value != 0, pos + 1
    value, pos = read_varint(data, pos + 1, value)
    return value != 0, pos


def read_enum(data: bytes, pos: int, enum: Any) -> tuple[Any, int]:
    """An open enum of code generated for betterproto 2.0.0b7 (its `try_value` keeps unknown numbers).
    Read as int32, as protobuf does (2.0.0b7 keeps negative numbers as 64-bit unsigned ones)."""
    value, pos = read_int32(data, pos)
    return enum.try_value(value), pos


def read_enum_open(data: bytes, pos: int, enum: Callable[[int], V]) -> tuple[V, int]:
    """An open enum of betterproto2, whose class keeps unknown numbers itself (`_missing_`); read as int32."""
    value, pos = read_int32(data, pos)
    return enum(value), pos


def _fixed_reader(fmt: str) -> Callable[[bytes, int], tuple[Any, int]]:
    unpack = struct.Struct(fmt).unpack_from
    size = struct.calcsize(fmt)

    def read(data: bytes, pos: int) -> tuple[Any, int]:
        return unpack(data, pos)[0], pos + size

    return read


read_fixed32: Callable[[bytes, int], tuple[int, int]] = _fixed_reader("<I")
read_sfixed32: Callable[[bytes, int], tuple[int, int]] = _fixed_reader("<i")
read_float: Callable[[bytes, int], tuple[float, int]] = _fixed_reader("<f")
read_fixed64: Callable[[bytes, int], tuple[int, int]] = _fixed_reader("<Q")
read_sfixed64: Callable[[bytes, int], tuple[int, int]] = _fixed_reader("<q")
read_double: Callable[[bytes, int], tuple[float, int]] = _fixed_reader("<d")


def read_bytes(data: bytes, pos: int, end: int) -> tuple[bytes, int]:
    size = data[pos]
    if size < 0x80 and pos + 1 + size <= end:
        return data[pos + 1 : pos + 1 + size], pos + 1 + size
    pos, stop = _read_length(data, pos, end)
    return data[pos:stop], stop


def read_string(data: bytes, pos: int, end: int) -> tuple[str, int]:
    size = data[pos]
    if size < 0x80 and pos + 1 + size <= end:
        return data[pos + 1 : pos + 1 + size].decode(), pos + 1 + size  # strict UTF-8, as proto3 requires
    pos, stop = _read_length(data, pos, end)
    return data[pos:stop].decode(), stop


def read_message(data: bytes, pos: int, end: int, depth: int, decode: Callable[[bytes, int, int, int], V]) -> tuple[V, int]:
    """A nested message (or map entry) decoded by its generated decoder."""
    if depth >= MAX_DEPTH:
        raise DecodeError(f"messages nested more than {MAX_DEPTH} deep")
    size = data[pos]
    if size < 0x80 and pos + 1 + size <= end:
        pos += 1
    else:
        pos, stop = _read_length(data, pos, end)
        size = stop - pos
    return decode(data, pos, pos + size, depth + 1), pos + size


def read_message_type(data: bytes, pos: int, end: int, depth: int, message_type: type[M]) -> tuple[M, int]:
    """A nested message in code generated for betterproto 2.0.0b7: its registered decoder if any,
    else the class's parse after a framing check."""
    decode = DECODERS.get(message_type)
    if decode is not None:
        return read_message(data, pos, end, depth, decode)
    body, stop = _framed_body(data, pos, end, depth)
    message = message_type().parse(body)  # an instance's parse: code generated for 2.0.0b7 calls this
    setattr(message, "_serialized_on_wire", True)  # 2.0.0b7's flag: a received message counts as set
    return message, stop


def _framed_body(data: bytes, pos: int, end: int, depth: int) -> tuple[bytes, int]:
    """A nested message's bytes, checked as upb checks them, for a parser other than ours."""
    if depth >= MAX_DEPTH:
        raise DecodeError(f"messages nested more than {MAX_DEPTH} deep")
    pos, stop = _read_length(data, pos, end)
    body = data[pos:stop]
    check_framing(body)
    return body, stop


def read_message_class(data: bytes, pos: int, end: int, depth: int, message_type: Any) -> tuple[Any, int]:
    """A nested betterproto2 message of another module or one without a generated codec: its registered
    decoder if any, else betterproto2's classmethod `parse` after a framing check."""
    decode = DECODERS.get(message_type)
    if decode is not None:
        return read_message(data, pos, end, depth, decode)
    body, stop = _framed_body(data, pos, end, depth)
    return message_type.parse(body), stop


def _read_seconds_nanos(data: bytes, pos: int, end: int, depth: int) -> tuple[int, int, int]:
    """(seconds, nanos, position after) of a Timestamp or Duration; other fields are skipped."""
    if depth >= MAX_DEPTH:
        raise DecodeError(f"messages nested more than {MAX_DEPTH} deep")
    pos, stop = _read_length(data, pos, end)
    seconds = nanos = 0
    while pos < stop:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = read_key(data, pos, tag)
        if tag == 1 << 3 | 0:
            seconds, pos = read_int64(data, pos)
        elif tag == 2 << 3 | 0:
            nanos, pos = read_int32(data, pos)
        else:
            pos = skip_field(data, pos, stop, tag, depth + 1)
    if pos != stop:
        raise DecodeError("truncated field")
    return seconds, nanos, stop


def read_timestamp(data: bytes, pos: int, end: int, depth: int) -> tuple[datetime, int]:
    """A Timestamp as a datetime (UTC, microseconds; beyond datetime's range it raises)."""
    seconds, nanos, pos = _read_seconds_nanos(data, pos, end, depth)
    return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000), pos


def read_duration(data: bytes, pos: int, end: int, depth: int) -> tuple[timedelta, int]:
    """A Duration as a timedelta."""
    seconds, nanos, pos = _read_seconds_nanos(data, pos, end, depth)
    return timedelta(seconds=seconds, microseconds=nanos / 1e3), pos


def _wrapper_reader(key: int, read: Callable[[bytes, int, int], tuple[Any, int]], default: Any) -> Callable[[bytes, int, int, int], tuple[Any, int]]:
    def read_wrapper(data: bytes, pos: int, end: int, depth: int) -> tuple[Any, int]:
        if depth >= MAX_DEPTH:
            raise DecodeError(f"messages nested more than {MAX_DEPTH} deep")
        pos, stop = _read_length(data, pos, end)
        value = default
        while pos < stop:
            tag = data[pos]
            pos += 1
            if tag >= 0x80:
                tag, pos = read_key(data, pos, tag)
            if tag == key:
                value, pos = read(data, pos, stop)
            else:
                pos = skip_field(data, pos, stop, tag, depth + 1)
        if pos != stop:
            raise DecodeError("truncated field")
        return value, stop

    return read_wrapper


def _scalar(read: Callable[[bytes, int], tuple[Any, int]]) -> Callable[[bytes, int, int], tuple[Any, int]]:
    return lambda data, pos, end: read(data, pos)


read_bool_value: Callable[[bytes, int, int, int], tuple[bool, int]] = _wrapper_reader(0x08, _scalar(read_bool), False)
read_int32_value: Callable[[bytes, int, int, int], tuple[int, int]] = _wrapper_reader(0x08, _scalar(read_int32), 0)
read_int64_value: Callable[[bytes, int, int, int], tuple[int, int]] = _wrapper_reader(0x08, _scalar(read_int64), 0)
read_uint32_value: Callable[[bytes, int, int, int], tuple[int, int]] = _wrapper_reader(0x08, _scalar(read_uint32), 0)
read_uint64_value: Callable[[bytes, int, int, int], tuple[int, int]] = _wrapper_reader(0x08, _scalar(read_uint64), 0)
read_float_value: Callable[[bytes, int, int, int], tuple[float, int]] = _wrapper_reader(0x0D, _scalar(read_float), 0.0)
read_double_value: Callable[[bytes, int, int, int], tuple[float, int]] = _wrapper_reader(0x09, _scalar(read_double), 0.0)
read_string_value: Callable[[bytes, int, int, int], tuple[str, int]] = _wrapper_reader(0x0A, read_string, "")
read_bytes_value: Callable[[bytes, int, int, int], tuple[bytes, int]] = _wrapper_reader(0x0A, read_bytes, b"")


def _packed_varints(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    pos, stop = _read_length(data, pos, end)
    values = []
    while pos < stop:
        value = data[pos]
        pos += 1
        if value >= 0x80:
            value, pos = read_varint(data, pos, value)
        values.append(value)
    if pos != stop:
        raise DecodeError("truncated packed field")
    return values, stop


def read_packed_uint64(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    return _packed_varints(data, pos, end)


def read_packed_int64(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    values, pos = _packed_varints(data, pos, end)
    return [(v ^ 0x8000000000000000) - 0x8000000000000000 for v in values], pos


def read_packed_uint32(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    values, pos = _packed_varints(data, pos, end)
    return [v & _MASK32 for v in values], pos


def read_packed_int32(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    values, pos = _packed_varints(data, pos, end)
    return [((v & _MASK32) ^ 0x80000000) - 0x80000000 for v in values], pos


def read_packed_sint32(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    values, pos = _packed_varints(data, pos, end)
    return [((v & _MASK32) >> 1) ^ -(v & 1) for v in values], pos


def read_packed_sint64(data: bytes, pos: int, end: int) -> tuple[list[int], int]:
    values, pos = _packed_varints(data, pos, end)
    return [(v >> 1) ^ -(v & 1) for v in values], pos


def read_packed_bool(data: bytes, pos: int, end: int) -> tuple[list[bool], int]:
    values, pos = _packed_varints(data, pos, end)
    return [v != 0 for v in values], pos


def read_packed_enum(data: bytes, pos: int, end: int, enum: Any) -> tuple[list[Any], int]:
    values, pos = read_packed_int32(data, pos, end)
    return [enum.try_value(v) for v in values], pos


def read_packed_enum_open(data: bytes, pos: int, end: int, enum: Callable[[int], V]) -> tuple[list[V], int]:
    values, pos = read_packed_int32(data, pos, end)
    return [enum(v) for v in values], pos


def _packed_fixed_reader(code: str) -> Callable[[bytes, int, int], tuple[list[Any], int]]:
    size = struct.calcsize(code)

    def read(data: bytes, pos: int, end: int) -> tuple[list[Any], int]:
        pos, stop = _read_length(data, pos, end)
        count, rest = divmod(stop - pos, size)
        if rest:
            raise DecodeError("packed field length is not a multiple of its element size")
        return list(struct.unpack_from(f"<{count}{code}", data, pos)), stop

    return read


read_packed_fixed32: Callable[[bytes, int, int], tuple[list[int], int]] = _packed_fixed_reader("I")
read_packed_sfixed32: Callable[[bytes, int, int], tuple[list[int], int]] = _packed_fixed_reader("i")
read_packed_float: Callable[[bytes, int, int], tuple[list[float], int]] = _packed_fixed_reader("f")
read_packed_fixed64: Callable[[bytes, int, int], tuple[list[int], int]] = _packed_fixed_reader("Q")
read_packed_sfixed64: Callable[[bytes, int, int], tuple[list[int], int]] = _packed_fixed_reader("q")
read_packed_double: Callable[[bytes, int, int], tuple[list[float], int]] = _packed_fixed_reader("d")


def skip_field(data: bytes, pos: int, end: int, tag: int, depth: int) -> int:
    """The position after the value of a field the message does not know (or knows with another wire
    type): generated decoders keep its bytes as the message's `_unknown_fields`."""
    if tag < 8:
        raise DecodeError("field number 0")
    wire_type = tag & 7
    if wire_type == 0:
        byte = data[pos]
        pos += 1
        if byte >= 0x80:
            _, pos = read_varint(data, pos, byte)
    elif wire_type == 2:
        pos = _read_length(data, pos, end)[1]
    elif wire_type == 5:
        pos += 4
    elif wire_type == 1:
        pos += 8
    elif wire_type == 3:  # a group (proto2): fields up to the end-group key of the same number
        if depth >= MAX_DEPTH:
            raise DecodeError(f"groups nested more than {MAX_DEPTH} deep")
        while True:
            if pos >= end:
                raise DecodeError("group without its end")
            inner = data[pos]
            pos += 1
            if inner >= 0x80:
                inner, pos = read_key(data, pos, inner)
            if inner & 7 == 4:
                if inner >> 3 != tag >> 3:
                    raise DecodeError("group ended by another field number")
                break
            pos = skip_field(data, pos, end, inner, depth + 1)
    else:
        raise DecodeError(f"wire type {wire_type} where a field starts")
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def append(fields: Fields, name: str, value: Any) -> None:
    """One element of a repeated field."""
    values = fields[name]
    if values is unset():
        fields[name] = [value]
    else:
        values.append(value)


def extend(fields: Fields, name: str, values: list[Any]) -> None:
    """A packed run of a repeated field; runs and single elements concatenate, as in protobuf."""
    current = fields[name]
    if current is unset():
        fields[name] = values
    else:
        current.extend(values)


def put(fields: Fields, name: str, entry: tuple[Any, Any]) -> None:
    """One entry of a map field; a later entry with the same key wins."""
    entries = fields[name]
    if entries is unset():
        fields[name] = {entry[0]: entry[1]}
    else:
        entries[entry[0]] = entry[1]


# --- Messages without a generated decoder -------------------------------------------------------------


def check_framing(data: bytes) -> None:
    """Walk the top-level fields and reject truncated or malformed framing, before betterproto2 parses.

    betterproto2's parser silently accepts a length that runs past the end of the data, so a garbled
    body would decode into a plausible message; this walk makes it an error instead. Groups are
    refused too: betterproto2 would read a group's fields as the message's own.
    """
    pos, end = 0, len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag >= 0x80:
            tag, pos = read_key(data, pos, tag)
        if tag & 7 == 3:
            raise DecodeError("wire type 3 (group) where a field starts")
        pos = skip_field(data, pos, end, tag, 0)
