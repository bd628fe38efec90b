"""Messages as JSON the way protobuf defines it (the proto3 JSON mapping: int64 as strings, bytes as
base64, enums by name, well-known types, oneofs, maps), on dynamic messages built from descriptors:
google protobuf's `json_format` and `message_factory` do the mapping."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message

from ..core.errors import ErrorCode, RpcError


def message_class(descriptor: Descriptor) -> type[Message]:
    """The dynamic message class of a descriptor (protobuf caches it)."""
    made: type[Message] = message_factory.GetMessageClass(descriptor)
    return made


def encode(descriptor: Descriptor, obj: Any) -> bytes:
    """A JSON value (parsed) as the binary message; INVALID_ARGUMENT names the field that is wrong."""
    if not isinstance(obj, dict):
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{descriptor.full_name}: a JSON object is needed, not {type(obj).__name__}")
    try:
        message = json_format.ParseDict(obj, message_class(descriptor)(), descriptor_pool=descriptor.file.pool)
    except (json_format.ParseError, ValueError, TypeError) as error:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{descriptor.full_name}: {_one_line(error)}") from None
    data: bytes = message.SerializeToString()
    return data


def decode(descriptor: Descriptor, data: bytes, *, defaults: bool = False) -> Any:
    """A binary message as its JSON value (fields at their default left out unless `defaults`); what
    protobuf cannot read or show (an `Any` of an unknown type, a Timestamp out of range) is an RpcError."""
    try:
        return to_json(message_class(descriptor).FromString(data), defaults=defaults)
    except (DecodeError, ValueError, TypeError, json_format.Error) as error:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"cannot decode {descriptor.full_name}: {_one_line(error)}") from None


def _one_line(error: Exception) -> str:
    """protobuf's message (it names the field and the path), on one line and bounded."""
    return " ".join(str(error).split())[:500]


def to_json(message: Message, *, defaults: bool = False) -> Any:
    """A dynamic message's JSON value."""
    return json_format.MessageToDict(
        message, always_print_fields_with_no_presence=defaults, descriptor_pool=message.DESCRIPTOR.file.pool
    )


def loads(text: str | bytes, where: str = "malformed JSON") -> Any:
    """Parse JSON text; INVALID_ARGUMENT says where it is malformed (too deep a nesting and text that
    is not UTF-8 included: `where` prefixes the message)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{where}: {error.msg} at line {error.lineno} column {error.colno}") from None
    except (RecursionError, ValueError) as error:  # (UnicodeDecodeError is a ValueError)
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{where}: {_one_line(error)[:120]}") from None


def dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON text: one line unless `indent`."""
    return json.dumps(obj, ensure_ascii=False, indent=indent, separators=None if indent else (",", ":"))
