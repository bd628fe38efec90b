"""Message bodies: protobuf binary (the default) or proto3 JSON (`(natsmicro.service).json`).

Binary bodies go through the codec the plugin generated for the message's class (registered in
`protobuf` when its module is imported) and through the message's own `parse` / `bytes()` for any
other class (messages the generator leaves to betterproto2, code generated before the codec existed).
JSON bodies always use betterproto2's to_dict/from_dict.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Callable, TypeVar

import betterproto2

from ..core.errors import ErrorCode, RpcError
from .protobuf import DECODERS, ENCODERS, DecodeError, check_framing

M = TypeVar("M", bound=betterproto2.Message)


def _reason(error: Exception) -> str:
    """Why a body did not decode, in a few words that never quote the body (remote input)."""
    if isinstance(error, DecodeError):  # ours: fixed texts
        return str(error)
    if isinstance(error, (IndexError, struct.error)):
        return "truncated field"
    if isinstance(error, UnicodeDecodeError):
        return f"invalid UTF-8 in a string field ({error.reason})"
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at character {error.pos})"
    if isinstance(error, OverflowError):
        return "a value out of range (a Timestamp or Duration beyond datetime's)"
    return f"{type(error).__name__} from betterproto2"  # its messages may quote the body


class Codec:
    """Encodes and decodes bodies for one service."""

    def __init__(self, json_bodies: bool = False) -> None:
        self.json = json_bodies

    def encode(self, message: betterproto2.Message) -> bytes:
        if self.json:
            return json.dumps(message.to_dict(), separators=(",", ":")).encode()
        encode = ENCODERS.get(type(message))
        return encode(message) if encode is not None else bytes(message)

    def encoder(self, message_type: type[M]) -> Callable[[M], bytes]:
        """`encode` for one message type, looked up once: the generated encoder itself when the class
        has one (no call in between), else `encode`. For instances of `message_type`: the generated
        encoder writes that class's fields, whatever the class of the message it is given."""
        generated: Callable[[M], bytes] | None = None if self.json else ENCODERS.get(message_type)
        return self.encode if generated is None else generated

    def decoder(self, message_type: type[M], method: str | None = None) -> Callable[[bytes], M]:
        """`decode` for one message type, looked up once (a stream decodes every message with it)."""
        generated: Callable[[bytes, int, int, int], M] | None = None if self.json else DECODERS.get(message_type)
        if generated is None:
            return lambda data: self.decode(message_type, data, method)

        def decode(data: bytes) -> M:
            try:
                if type(data) is not bytes:
                    data = bytes(data)
                return generated(data, 0, len(data), 0)
            except Exception as error:
                raise _undecodable(message_type, error, method) from None

        return decode

    def decode(self, message_type: type[M], data: bytes, method: str | None = None) -> M:
        """Decode a body; anything that does not decode is `INVALID_ARGUMENT`."""
        try:
            if self.json:
                value: Any = json.loads(data) if data else {}
                if not isinstance(value, dict):
                    raise DecodeError("JSON body is not an object")
                decoded: M
                if issubclass(message_type, betterproto2.Message):
                    # fields it does not know are skipped, as before: bodies from peers with a newer schema
                    decoded = message_type.from_dict(value, ignore_unknown_fields=True)
                else:  # code generated for betterproto 2.0.0b7: an instance method
                    decoded = message_type().from_dict(value)
                return decoded
            if type(data) is not bytes:
                data = bytes(data)
            decode = DECODERS.get(message_type)
            if decode is not None:
                message: M = decode(data, 0, len(data), 0)
                return message
            check_framing(data)  # betterproto2's parser accepts lengths past the end
            if issubclass(message_type, betterproto2.Message):
                return message_type.parse(data)  # a classmethod: no instance made only to call it
            parsed: M = message_type().parse(data)  # code generated for 2.0.0b7: a method of an instance
            return parsed
        except Exception as error:  # betterproto2 raises many kinds; all mean a bad body
            raise _undecodable(message_type, error, method) from None


def _undecodable(message_type: type[betterproto2.Message], error: Exception, method: str | None) -> RpcError:
    return RpcError(ErrorCode.INVALID_ARGUMENT, f"cannot decode {message_type.__name__}: {_reason(error)}", method=method)


PROTO = Codec(False)
JSON = Codec(True)
