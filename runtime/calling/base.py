"""`ClientBase`, what generated `<Service>NatsClient` classes call (unary calls from `UnaryClient`,
and the openings of the stream shapes), and the functions API v2's generated code calls."""

from __future__ import annotations

from typing import Any, AsyncIterable, Iterable, Mapping, TypeVar

import betterproto

from ..schema.spec import MethodSpec
from .call import ClientCall
from .opening import open_handshake, open_server_stream
from .unary import UnaryClient
from .views import (
    BidiStream,
    BidiStreamCall,
    ClientStream,
    DownloadCall,
    DownloadStream,
    Pending,
    PendingStream,
    ServerStream,
    ServerStreamCall,
    UploadStream,
)

Req = TypeVar("Req", bound=betterproto.Message)
Resp = TypeVar("Resp", bound=betterproto.Message)


class ClientBase(UnaryClient):
    """Base of generated `<Service>NatsClient` classes: unary calls (`UnaryClient`) and the openings
    of the stream shapes. Internals are `_nats_`-prefixed."""

    def _nats_server_stream(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> ServerStreamCall[Any]:
        method = self._nats_method(py_name)

        async def open_stream() -> ServerStream[Any]:
            call = ClientCall(self, method, timeout)
            await open_server_stream(call, request, headers)
            return DownloadStream(call) if method.chunks is not None else ServerStream(call)

        kind = DownloadCall if method.chunks is not None else ServerStreamCall
        return kind(open_stream, method.py_name)

    def _nats_download(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> DownloadCall[Any]:
        """A `(natsmicro.chunked_io)` server stream: the same call, with blob helpers."""
        call = self._nats_server_stream(py_name, request, timeout=timeout, headers=headers)
        assert isinstance(call, DownloadCall), f"{py_name} is not a chunked download"
        return call

    async def _nats_client_stream(
        self,
        py_name: str | MethodSpec[Any, Any],
        requests: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        call = ClientCall(self, self._nats_method(py_name), timeout)
        ack_headers = await open_handshake(call, headers)
        kind = UploadStream if call.method.chunks is not None else ClientStream
        stream: ClientStream[Any, Any] = kind(call, ack_headers)
        if requests is None:
            return stream
        async with stream:
            await stream.send_all(requests)
            return await stream.close_and_recv()

    def _nats_bidi(
        self,
        py_name: str | MethodSpec[Any, Any],
        requests: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> BidiStreamCall[Any, Any]:
        method = self._nats_method(py_name)

        async def open_stream() -> BidiStream[Any, Any]:
            call = ClientCall(self, method, timeout)
            await open_handshake(call, headers)
            return BidiStream(call)

        return BidiStreamCall(open_stream, requests, method.py_name)


# --- What generated code of API v2 calls: typed by the method's descriptor ------------------------


def unary(
    client: ClientBase,
    method: MethodSpec[Req, Resp],
    request: Req,
    *,
    timeout: float | None,
    headers: Mapping[str, str] | None,
    response_headers: dict[str, str] | None,
    idempotent: bool | None = None,
) -> Pending[Resp]:
    """A unary call, to be awaited; `idempotent` (None: as the proto says) lets the client's
    `RetryPolicy` retry it on more than refusals."""
    if client._nats_retry is None:
        run = lambda: client._nats_unary_once(method, request, timeout, headers, response_headers)  # noqa: E731
    else:
        run = lambda: client._nats_unary_retried(method, request, timeout, headers, response_headers, idempotent)  # noqa: E731
    return Pending(run, method.py_name)


def server_stream(
    client: ClientBase, method: MethodSpec[Req, Resp], request: Req, *, timeout: float | None, headers: Mapping[str, str] | None
) -> ServerStreamCall[Resp]:
    return client._nats_server_stream(method, request, timeout=timeout, headers=headers)


def download(
    client: ClientBase, method: MethodSpec[Req, Resp], request: Req, *, timeout: float | None, headers: Mapping[str, str] | None
) -> DownloadCall[Resp]:
    return client._nats_download(method, request, timeout=timeout, headers=headers)


def client_stream(
    client: ClientBase,
    method: MethodSpec[Req, Resp],
    requests: Iterable[Req] | AsyncIterable[Req] | None,
    *,
    timeout: float | None,
    headers: Mapping[str, str] | None,
) -> Any:
    """With `requests`: the response, to be awaited; without: a `ClientStream` (or `UploadStream`)
    to be awaited or used in `async with`. Generated overloads give the precise types."""
    run = lambda: client._nats_client_stream(method, requests, timeout=timeout, headers=headers)  # noqa: E731
    return Pending(run, method.py_name) if requests is not None else PendingStream(run, method.py_name)


def bidi(
    client: ClientBase,
    method: MethodSpec[Req, Resp],
    requests: Iterable[Req] | AsyncIterable[Req] | None,
    *,
    timeout: float | None,
    headers: Mapping[str, str] | None,
) -> BidiStreamCall[Req, Resp]:
    return client._nats_bidi(method, requests, timeout=timeout, headers=headers)
