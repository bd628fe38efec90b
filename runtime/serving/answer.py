"""A call's single final answer (unary, client streaming): the response with the handler's response
headers, stored first when the method persists it, or the error pair."""

from __future__ import annotations

from typing import Any, Awaitable, Protocol

from ..core.errors import ErrorCode, RpcError
from ..core.headers import RESPONSE_PROTOCOL_HEADERS, check_size, error_headers, user_headers
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo, Direction
from ..net.transport import Transport, publish_now
from ..schema.spec import MethodSpec
from .context import CallContext


class _Answering(Protocol):
    """What a single final answer needs of its call (`UnaryCall`, a client stream's `Responder`)."""

    nc: Transport
    method: MethodSpec[Any, Any]
    name: str
    codec: Codec
    context: CallContext
    info: CallInfo | None
    answered: tuple[int, int]

    def intercept(self, direction: Direction, message: Any) -> Any: ...

    def error(self, code: str, message: str) -> RpcError: ...

    def internal(self, raised: BaseException) -> RpcError: ...

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """The write of an encoded answer to await before it is sent, when the method stores them."""


async def answer(call: _Answering, subject: str, response: Any, error: RpcError | None) -> None:
    """A call's single final answer (unary, client streaming): the response with the handler's
    response headers, or the error pair; a wrong type, an oversized response or a required write
    that failed becomes the error. `subject`: the request's reply, or a checked `Reply-To`."""
    if error is None:
        if call.info is not None:
            response = call.intercept(Direction.SENT, response)
        method = call.method
        if not isinstance(response, method.response):
            error = call.error(ErrorCode.INTERNAL, f"handler returned {type(response).__name__}, not {method.response.__name__}")
        else:
            nc = call.nc
            try:
                response_headers = call.context.response_headers
                # checked again: the dict is the handler's (blob size aside, ours)
                headers = user_headers(response_headers, allow=RESPONSE_PROTOCOL_HEADERS) if response_headers else None
                body = call.codec.encode(response)
                check_size(len(body), headers, nc.max_payload, call.name)
                stored = call.persist(body)
                if stored is not None:
                    await stored
            except RpcError as too_big:  # or a required write that failed
                error = too_big
            except Exception as unencodable:  # e.g. a field holding a value of the wrong type
                error = call.internal(unencodable)
            else:
                if not publish_now(nc, subject, body, headers or None):  # (`publish`, one coroutine less)
                    await nc.publish(subject, body, headers=headers or None)
                call.answered = (1, len(body))
                return
    headers = error_headers(error.code, error.message)  # capped: always fits
    await call.nc.publish(subject, b"", headers=headers)
