"""A call's single final answer (unary, client streaming): the response with the handler's response
headers, stored first when the method persists it, or the error pair."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Protocol

from ..core.errors import ErrorCode, RpcError
from ..core.headers import RESPONSE_PROTOCOL_HEADERS, check_size, error_headers, user_headers
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo, Direction
from ..features.persistence import StoreKeys
from ..net.transport import Transport, publish
from ..schema.spec import MethodSpec
from .context import CallContext


class Answerer(Protocol):
    """What the calls of one endpoint share that an answer needs (a unary endpoint's `ServedMethod`,
    a client stream's `Responder`)."""

    @property
    def nc(self) -> Transport: ...

    @property
    def method(self) -> MethodSpec[Any, Any]: ...

    @property
    def name(self) -> str: ...

    @property
    def codec(self) -> Codec: ...

    @property
    def encode(self) -> Callable[[Any], bytes]:
        """The response type's encoder (`Codec.encoder`)."""


class _Answering(Protocol):
    """What a single final answer needs of its call (`UnaryCall`, a client stream's `Responder`)."""

    info: CallInfo | None
    answered: tuple[int, int]

    @property
    def context(self) -> CallContext | None:
        """None: nothing asked for it, so no response headers were set."""

    @property
    def keys(self) -> StoreKeys | None:
        """A persisted method's storage keys (None: nothing to store, `persist` is not asked)."""

    def intercept(self, direction: Direction, message: Any) -> Any: ...

    def error(self, code: str, message: str) -> RpcError: ...

    def internal(self, raised: BaseException) -> RpcError: ...

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """The write of an encoded answer to await before it is sent, when the method stores them."""


def answer(call: _Answering, endpoint: Answerer, subject: str, response: Any, error: RpcError | None) -> Awaitable[None] | None:
    """A call's single final answer (unary, client streaming): the response with the handler's
    response headers, or the error pair; a wrong type, an oversized response or a required write
    that failed becomes the error. `subject`: the request's reply, or a checked `Reply-To`.

    None when it was queued at once (the usual case: no coroutine per answer); else what to await
    to finish it (a stored answer's write first, or a transport that cannot queue it now)."""
    if error is None:
        if call.info is not None:
            response = call.intercept(Direction.SENT, response)
        method = endpoint.method
        if type(response) is method.response:
            encode = endpoint.encode  # the response type's own encoder, looked up once
        elif isinstance(response, method.response):
            encode = endpoint.codec.encode  # a subclass's instance: its own fields too
        else:
            encode = None
            error = call.error(ErrorCode.INTERNAL, f"handler returned {type(response).__name__}, not {method.response.__name__}")
        if encode is not None:
            nc = endpoint.nc
            try:
                context = call.context
                response_headers = None if context is None else context.response_headers
                # checked again: the dict is the handler's (blob size aside, ours)
                headers = user_headers(response_headers, allow=RESPONSE_PROTOCOL_HEADERS) if response_headers else None
                body = encode(response)
                stored = None
                if headers is not None or call.keys is not None:  # (a body alone is checked where it is queued)
                    check_size(len(body), headers, nc.max_payload, endpoint.name)
                    stored = call.persist(body)
            except RpcError as too_big:
                error = too_big
            except Exception as unencodable:  # e.g. a field holding a value of the wrong type
                error = call.internal(unencodable)
            else:
                nowait = getattr(nc, "publish_nowait", None)  # (`net.transport.publish_now`, inlined: once per call)
                if stored is None and nowait is not None and nowait(subject, body, headers):
                    call.answered = (1, len(body))
                    return None
                return _send(call, endpoint, subject, body, headers, stored)
    assert error is not None  # (the answer could not be sent: its error is)
    return send_error(endpoint.nc, subject, error)


async def _send(
    call: _Answering, endpoint: Answerer, subject: str, body: bytes, headers: dict[str, str] | None, stored: Awaitable[None] | None
) -> None:
    """The answer after its required write (a failed one is the error instead), or through `publish`
    (a body too big for the server's `max_payload` is the error instead: RESOURCE_EXHAUSTED)."""
    nc = endpoint.nc
    if stored is not None:
        try:
            await stored
        except RpcError as failed:
            await send_error(nc, subject, failed)
            return
        except Exception as unexpected:
            await send_error(nc, subject, call.internal(unexpected))
            return
    elif headers is None:
        try:
            check_size(len(body), None, nc.max_payload, endpoint.name)
        except RpcError as too_big:
            await send_error(nc, subject, too_big)
            return
    await publish(nc, subject, body, headers)
    call.answered = (1, len(body))


async def send_error(nc: Transport, subject: str, error: RpcError) -> None:
    """A call's error pair (no body), as an answer or a stream's end where nothing else goes with it."""
    headers = error_headers(error.code, error.message)  # capped: always fits
    await nc.publish(subject, b"", headers=headers)
