"""Message bodies: protobuf binary (the default) or proto3 JSON (`(natsmicro.service).json`)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import betterproto

from .errors import ErrorCode, RpcError

M = TypeVar("M", bound=betterproto.Message)


def _check_framing(data: bytes) -> None:
    """Walk the top-level protobuf fields and reject truncated or malformed framing.

    betterproto's parser silently accepts a length that runs past the end of the data, so a garbled
    body would decode into a plausible message; this walk makes it an `INVALID_ARGUMENT` instead.
    """
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if key >> 3 == 0:
            raise ValueError("field number 0")
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            pos += length
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if pos > end:
            raise ValueError("truncated field")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


class Codec:
    """Encodes and decodes bodies for one service."""

    def __init__(self, json_bodies: bool = False) -> None:
        self.json = json_bodies

    def encode(self, message: betterproto.Message) -> bytes:
        if self.json:
            return json.dumps(message.to_dict(), separators=(",", ":")).encode()
        return bytes(message)

    def decode(self, message_type: type[M], data: bytes, method: str | None = None) -> M:
        """Decode a body; anything that does not decode is `INVALID_ARGUMENT`."""
        try:
            if self.json:
                value: Any = json.loads(data) if data else {}
                if not isinstance(value, dict):
                    raise ValueError("JSON body is not an object")
                return message_type().from_dict(value)  # type: ignore[no-any-return]  # betterproto: untyped
            _check_framing(data)
            return message_type().parse(data)
        except Exception as error:  # betterproto raises many kinds; all mean a bad body
            raise RpcError(
                ErrorCode.INVALID_ARGUMENT,
                f"cannot decode {message_type.__name__}: {error}",
                method=method,
            ) from None


PROTO = Codec(False)
JSON = Codec(True)
