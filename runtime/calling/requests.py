"""A client's NATS requests and their failures as `RpcError`s (nats-py's own errors never reach
callers), and a unary answer read: the server's error raised, response headers kept, body decoded."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import nats.errors
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import caller_headers, error_from_headers
from ..encoding.codec import Codec
from ..net.transport import Transport
from ..schema.spec import MethodSpec


@contextlib.contextmanager
def as_rpc_errors(name: str) -> Iterator[None]:
    """nats-py's own errors (connection closed, draining, buffer full) reach callers as UNAVAILABLE:
    everything the client raises is an RpcError."""
    try:
        yield
    except nats.errors.Error as error:
        raise connection_error(error, name) from error


def connection_error(error: nats.errors.Error, name: str) -> RpcError:
    return RpcError(ErrorCode.UNAVAILABLE, f"NATS connection: {error}", method=name)


async def nats_request(
    nc: Transport, subject: str, body: bytes, headers: dict[str, str], timeout: float | None, name: str
) -> Msg:
    """A NATS request, its failures as RpcErrors (`request_failed`)."""
    try:
        return await nc.request(subject, body, timeout=timeout, headers=headers or None)
    except nats.errors.Error as error:
        raise request_failed(error, subject, name) from error


def request_failed(error: nats.errors.Error, subject: str, name: str) -> RpcError:
    """No responders is UNAVAILABLE, no answer in time DEADLINE_EXCEEDED, any other nats-py error
    UNAVAILABLE (as `as_rpc_errors`, without a context manager per call)."""
    if isinstance(error, nats.errors.NoRespondersError):
        return RpcError(ErrorCode.UNAVAILABLE, f"no service is listening on {subject}", method=name)
    if isinstance(error, nats.errors.TimeoutError):
        return RpcError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded", method=name)
    return connection_error(error, name)


def unary_response(
    msg: Msg, method: MethodSpec[Any, Any], codec: Codec, name: str, response_headers: dict[str, str] | None
) -> Any:
    """A unary answer: the server's error raised, its response headers kept, the response decoded."""
    error = error_from_headers(msg.headers, name)
    if error is not None:
        raise error
    if response_headers is not None:
        response_headers.update(caller_headers(msg.headers))
    return codec.decode(method.response, msg.data, name)
