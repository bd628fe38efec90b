"""A call's single final answer (unary, client streaming): the response with the handler's response
headers, stored first when the method persists it, or the error pair."""

from __future__ import annotations

from typing import Any, Awaitable, Protocol

from ..core.errors import ErrorCode, RpcError
from ..core.headers import RESPONSE_PROTOCOL_HEADERS, check_size, error_headers, user_headers
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo, Direction
from ..net.transport import Transport, publish, publish_now
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


def answer(call: _Answering, subject: str, response: Any, error: RpcError | None) -> Awaitable[None] | None:
    """A call's single final answer (unary, client streaming): the response with the handler's
    response headers, or the error pair; a wrong type, an oversized response or a required write
    that failed becomes the error. `subject`: the request's reply, or a checked `Reply-To`.

    None when it was queued at once (the usual case: no coroutine per answer); else what to await
    to finish it (a stored answer's write first, or a transport that cannot queue it now)."""
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
            except RpcError as too_big:
                error = too_big
            except Exception as unencodable:  # e.g. a field holding a value of the wrong type
                error = call.internal(unencodable)
            else:
                nowait = getattr(nc, "publish_nowait", None)  # (`publish_now`, inlined: once per call)
                if stored is None and nowait is not None and nowait(subject, body, headers):
                    call.answered = (1, len(body))
                    return None
                return _send(call, subject, body, headers, stored)
    return send_error(call.nc, subject, error)


async def _send(call: _Answering, subject: str, body: bytes, headers: dict[str, str] | None, stored: Awaitable[None] | None) -> None:
    """The answer after its required write (a failed one is the error instead), or through `publish`."""
    if stored is not None:
        try:
            await stored
        except RpcError as failed:
            await send_error(call.nc, subject, failed)
            return
        except Exception as unexpected:
            await send_error(call.nc, subject, call.internal(unexpected))
            return
    await publish(call.nc, subject, body, headers)
    call.answered = (1, len(body))


async def send_error(nc: Transport, subject: str, error: RpcError) -> None:
    """A call's error pair (no body), as an answer or a stream's end where nothing else goes with it."""
    headers = error_headers(error.code, error.message)  # capped: always fits
    await nc.publish(subject, b"", headers=headers)
