"""`ClientBase`, what generated `<Service>NatsClient` classes are: a client's settings (connection,
subject prefix, timeout, heartbeat, inbox prefixes, interceptors, JetStream, loop lag, retries,
refusals), its unary calls (once: the hot path, a request and its answer; under a `RetryPolicy`; with
interceptors around them, a `ClientCall` for the bookkeeping; refusals absorbed) and the openings of
the stream shapes; and the functions API v2's generated code calls."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterable, ClassVar, Iterable, Mapping, Sequence, TypeVar

import betterproto2
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.headers import DEADLINE, check_size, parse_uint, user_headers
from ..core.heartbeats import DEFAULT_HEARTBEAT
from ..core.subjects import InboxPolicy
from ..features.interceptors import CallInfo, Chain, Direction, Interceptor, outcome_of
from ..features.retry import RetryPolicy
from ..features.stores import Stores
from ..health.admission import DEFAULT_MAX_LOOP_LAG
from ..net.transport import NatsTransport, Transport, transport_of
from ..schema.spec import MethodSpec, ServiceSpec
from .call import ClientCall
from .opening import open_handshake, open_server_stream
from .refusals import RetryBudget, absorbed, absorbs
from .requests import nats_request, request_failed, unary_response
from .pending import BidiStreamCall, DownloadCall, Pending, PendingStream, ServerStreamCall
from .views import BidiStream, ClientStream, DownloadStream, ServerStream, UploadStream

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)


class ClientBase:
    """Base of generated `<Service>NatsClient` classes (see the module). Internals are
    `_nats_`-prefixed: generated clients subclass it, and their methods are the users' names."""

    _nats_service: ClassVar[ServiceSpec]

    def __init__(
        self,
        nc: NATS | Transport,
        *,
        subject_prefix: str | None = None,
        timeout: float | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        inbox_prefixes: Sequence[str] = (),
        interceptors: Sequence[Interceptor] = (),
        jetstream_domain: str | None = None,
        jetstream_prefix: str | None = None,
        max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG,
        retry: RetryPolicy | None = None,
        absorb_refusals: bool = True,
    ) -> None:
        self._nats_nc = nc
        self._nats_retry = retry  # unary calls refused (and idempotent ones failed) are retried by it
        # A call refused before it ran is sent again where that is safe (calling/refusals.py).
        self._nats_absorb = absorb_refusals
        self._nats_named: dict[str, tuple[str, str]] = {}  # by endpoint: full name and subject
        self._nats_chain = Chain.of(interceptors)  # run around every call, in the order given
        self._nats_transport = transport_of(nc)
        self._nats_budget = RetryBudget.of(self._nats_transport)  # its calls taken earn retries
        self._nats_subject_prefix = subject_prefix or self._nats_service.subject_prefix
        self._nats_timeout = timeout
        self._nats_heartbeat = heartbeat  # seconds between v2 heartbeats; silence for 3 = peer gone
        # Opening a stream waits while the loop runs this far behind (None: never; admission.OpenGate).
        self._nats_max_loop_lag = max_loop_lag
        # Where a server may name its stream inboxes: `_INBOX.` and these (a service's own prefix).
        self._nats_inboxes = InboxPolicy(inbox_prefixes)
        # Where the helpers of persisted methods read (`(natsmicro.kv_store)`, `object_store`).
        self._nats_jetstream = (jetstream_domain, jetstream_prefix)
        self._nats_store: Stores | None = None

    def _nats_stores(self, method: MethodSpec[Any, Any]) -> Stores:
        """The JetStream stores the persisted-method helpers read (UNAVAILABLE without nats-py)."""
        if self._nats_store is None:
            transport = self._nats_transport
            if not isinstance(transport, NatsTransport):
                raise RpcError(
                    ErrorCode.UNAVAILABLE,
                    "stored responses are read from JetStream, which needs a nats-py connection",
                    method=self._nats_service.full_name(method),
                )
            domain, prefix = self._nats_jetstream
            self._nats_store = Stores(transport.nc, domain, prefix)
        return self._nats_store

    def _nats_method(self, method: str | MethodSpec[Any, Any]) -> MethodSpec[Any, Any]:
        """The descriptor (API v2 passes it; API v1 passes the method's name)."""
        return self._nats_service.method(method) if isinstance(method, str) else method

    def _nats_names(self, method: MethodSpec[Any, Any]) -> tuple[str, str]:
        """The method's full name and subject (made once per method and client)."""
        names = self._nats_named.get(method.endpoint)
        if names is None:
            names = self._nats_named[method.endpoint] = (
                self._nats_service.full_name(method),
                f"{self._nats_subject_prefix}.{method.endpoint}",
            )
        return names

    # --- Unary calls --------------------------------------------------------------------------

    async def _nats_unary(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto2.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        """A unary call: under the client's `RetryPolicy` when it has one."""
        if self._nats_retry is not None:
            return await self._nats_unary_retried(py_name, request, timeout, headers, response_headers, idempotent)
        return await self._nats_unary_once(py_name, request, timeout, headers, response_headers, idempotent)

    async def _nats_unary_once(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto2.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        method = self._nats_method(py_name)
        if self._nats_chain is not None:
            return await self._nats_unary_intercepted(method, request, timeout, headers, response_headers, idempotent)
        name, subject = self._nats_names(method)
        codec = self._nats_service.codec
        out_headers = user_headers(headers) if headers else {}
        body = codec.encode(request)
        nc = self._nats_transport
        if timeout is None:
            timeout = self._nats_timeout if self._nats_timeout is not None else method.timeout
        if timeout is not None:  # the server stops the handler at the same moment
            out_headers[DEADLINE] = str(int((time.time() + timeout) * 1000))
        check_size(len(body), out_headers, nc.max_payload, name)
        try:  # as `nats_request`, one coroutine less on the hot path
            msg = await nc.request(subject, body, timeout=timeout, headers=out_headers or None)
        except nats.errors.Error as error:
            raise request_failed(error, subject, name) from error
        try:
            response = unary_response(msg, method, codec, name, response_headers)
        except Overloaded as refused:  # refused before it ran: sent again where that is safe
            msg = await self._nats_absorbed(method, subject, body, out_headers, msg, refused, idempotent, name)
            return unary_response(msg, method, codec, name, response_headers)
        except RpcError:
            self._nats_budget.taken += 1  # (an answer all the same: the service took the call)
            raise
        self._nats_budget.taken += 1  # the service took it: one more retry earned (refusals.RetryBudget)
        return response

    async def _nats_absorbed(
        self,
        method: MethodSpec[Any, Any],
        subject: str,
        body: bytes,
        headers: dict[str, str],
        refusal: Msg,
        refused: Overloaded,
        idempotent: bool | None,
        name: str,
        info: CallInfo | None = None,
    ) -> Msg:
        """The answer to a refused unary call (`refusals.absorbed`), or `refused` raised."""
        if not absorbs(self._nats_absorb):
            raise refused
        deadline = parse_uint(headers.get(DEADLINE))
        loop = asyncio.get_running_loop()
        give_up = None if deadline is None else loop.time() + deadline / 1000 - time.time()
        return await absorbed(
            self._nats_transport, subject, body, headers, refusal, refused, give_up,
            method.idempotent if idempotent is None else idempotent,
            self._nats_service.in_queue_group(method), name, info,
        )  # fmt: skip

    async def _nats_unary_retried(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto2.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None,
    ) -> Any:
        """A unary call under the client's `RetryPolicy`: tried again while the policy allows (a
        refused call that is not idempotent only where it trusts refusals), each try within what is
        left of the call's deadline, each wait capped by the policy."""
        policy = self._nats_retry
        assert policy is not None
        method = self._nats_method(py_name)
        if idempotent is None:
            idempotent = method.idempotent
        # what the proto says: a service may take each call in one receiver of a queue group
        queue_group = self._nats_service.in_queue_group(method)
        if timeout is None:
            timeout = self._nats_timeout if self._nats_timeout is not None else method.timeout
        loop = asyncio.get_running_loop()
        give_up = None if timeout is None else loop.time() + timeout
        retry = 0
        while True:
            remaining = None if give_up is None else max(0.0, give_up - loop.time())
            try:
                return await self._nats_unary_once(method, request, remaining, headers, response_headers)
            except RpcError as error:
                retry += 1
                if retry >= policy.attempts or not policy.retries(error, idempotent, queue_group):
                    raise
                delay = policy.delay(retry, error.retry_after)
                if give_up is not None and loop.time() + delay >= give_up:
                    raise
            await asyncio.sleep(delay)

    async def _nats_unary_intercepted(
        self,
        method: MethodSpec[Any, Any],
        request: betterproto2.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        """A unary call with interceptors around it (a `ClientCall` for its bookkeeping)."""
        call = ClientCall(self, method, timeout)
        call.released = True  # a unary call holds no inbox or session
        call.drop_owner()
        sent = received = (0, 0)
        failure: BaseException | None = None
        try:
            out_headers = await call.begin(headers)
            if call.deadline is not None:
                out_headers[DEADLINE] = call.deadline.epoch_ms
            body = call.encode(request)
            check_size(len(body), out_headers, call.nc.max_payload, call.name)
            remaining = None if call.deadline is None else call.deadline.remaining()
            sent = (1, len(body))
            msg = await nats_request(call.nc, call.subject, body, out_headers, remaining, call.name)
            try:
                response = unary_response(msg, method, call.codec, call.name, response_headers)
                self._nats_budget.taken += 1
            except Overloaded as refused:  # refused before it ran: sent again where that is safe
                msg = await self._nats_absorbed(method, call.subject, body, out_headers, msg, refused, idempotent, call.name, call.info)
                response = unary_response(msg, method, call.codec, call.name, response_headers)
            received = (1, len(msg.data))
            assert call.chain is not None and call.info is not None
            return call.chain.message(call.info, Direction.RECEIVED, response)
        except BaseException as error:
            failure = error
            raise
        finally:
            if call.info is not None and call.chain is not None:
                await call.chain.end(call.info, outcome_of(call.info, failure, sent, received))

    # --- Stream openings -----------------------------------------------------------------------

    def _nats_server_stream(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto2.Message,
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
        request: betterproto2.Message,
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
