"""The client half: what generated `<Service>NatsClient` classes call, and the stream objects users hold."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    ClassVar,
    Generator,
    Generic,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
    TypeVar,
)

import betterproto
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from .chunks import BlobReceiving, ChunkCodec, ChunkReceiver, ChunkSender, Progress
from .errors import ErrorCode, RpcError
from .flow import DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES
from .liveness import DEFAULT_HEARTBEAT, MAX_HEARTBEAT, MIN_HEARTBEAT
from .protocol import (
    DEADLINE,
    REPLY_TO,
    STREAM_HEARTBEAT,
    STREAM_INBOX,
    STREAM_VERSION,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
    VERSION_2,
    FrameKind,
    caller_headers,
    check_size,
    classify,
    error_from_headers,
    is_control,
    parse_uint,
    quote,
    user_headers,
)
from .session import StreamSession
from .spec import MethodSpec, ServiceSpec
from .streams import Deadline, Inbox, StreamReader, StreamWriter
from .subjects import InboxPolicy
from .transport import Transport, transport_of

Req = TypeVar("Req", bound=betterproto.Message)
Resp = TypeVar("Resp", bound=betterproto.Message)
T = TypeVar("T")

# How long a client-stream or bidi call waits for the server's handshake ack when the call itself
# has no shorter deadline; no ack means nobody is serving (UNAVAILABLE).
HANDSHAKE_TIMEOUT = 5.0

@contextlib.contextmanager
def _as_rpc_errors(name: str) -> Iterator[None]:
    """nats-py's own errors (connection closed, draining, buffer full) reach callers as UNAVAILABLE:
    everything the client raises is an RpcError."""
    try:
        yield
    except nats.errors.Error as error:
        raise RpcError(ErrorCode.UNAVAILABLE, f"NATS connection: {error}", method=name) from error


async def _iterate(requests: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(requests, AsyncIterable):
        async for item in requests:
            yield item
    else:
        for item in requests:
            yield item


class _Call:
    """What every client call knows: connection, method, subject, body codec and deadline."""

    def __init__(self, client: ClientBase, method: MethodSpec, timeout: float | None) -> None:
        spec = client._nats_service
        self.nc: Transport = client._nats_transport
        self.method = method
        self.name = spec.full_name(method)
        self.subject = f"{client._nats_subject_prefix}.{method.endpoint}"
        self.codec = spec.codec
        if timeout is None:
            timeout = client._nats_timeout if client._nats_timeout is not None else method.timeout
        self.deadline = Deadline.after(timeout)
        self.heartbeat = client._nats_heartbeat
        self.window = method.max_inflight or DEFAULT_WINDOW
        self.window_bytes = DEFAULT_WINDOW_BYTES
        self.inboxes = client._nats_inboxes
        self.watched: list[str] = []  # subjects whose permission errors fail this call

    async def open_inbox(self) -> Inbox:
        """The call's inbox `R`, subscribed; a permission violation on it fails the call."""
        inbox = Inbox(self.nc, self.name)
        self.watch_permissions(inbox.subject, inbox)  # before subscribing: the denial may come at once
        with _as_rpc_errors(self.name):
            return await inbox.open()

    def watch_permissions(self, subject: str, inbox: Inbox) -> None:
        """Publishing to or subscribing on `subject` denied: the call fails with PERMISSION_DENIED
        at once (nats-py only tells the connection's error callback; the message is dropped)."""

        def denied(text: str) -> None:
            error = self.error(ErrorCode.PERMISSION_DENIED, text)
            self.fail(inbox, error, at_once=True)

        self.nc.watch_permissions(subject, denied)
        self.watched.append(subject)

    active_session: StreamSession | None = None  # v2 control, once the server confirmed v2

    def fail(self, inbox: Inbox, error: RpcError, at_once: bool = False) -> None:
        """End the call with `error`: a waiting reader (after what is queued, unless `at_once`) and a
        sender blocked on credit both see it."""
        if at_once:
            inbox.abort(error)
        else:
            inbox.fail(error)
        session = self.active_session
        if session is not None and session.window is not None:
            session.window.fail(error)

    def release(self) -> None:
        for subject in self.watched:
            self.nc.forget_permissions(subject)
        self.watched.clear()

    def server_inbox(self, headers: Mapping[str, str] | None) -> str:
        """The `Nats-Stream-Inbox` the server named, checked before anything is sent there."""
        subject = (headers or {}).get(STREAM_INBOX, "")
        if not subject:
            raise self.error(ErrorCode.UNAVAILABLE, f"the server's answer has no {STREAM_INBOX}")
        why = self.inboxes.check(subject)
        if why is not None:
            raise self.error(
                ErrorCode.INTERNAL,
                f"the server named {STREAM_INBOX} {quote(subject)}, which is {why}; "
                "pass inbox_prefixes=[...] to the client to allow a service's own prefix",
            )
        return subject

    def adopt_heartbeat(self, headers: Mapping[str, str] | None) -> None:
        """A v2 server says which heartbeat interval it uses (within its idle timeout): use it too."""
        millis = parse_uint((headers or {}).get(STREAM_HEARTBEAT))
        if millis:
            self.heartbeat = min(max(millis / 1000, MIN_HEARTBEAT), MAX_HEARTBEAT)

    def opening_headers(self, headers: Mapping[str, str] | None, reply_to: str, receives: bool) -> dict[str, str]:
        """Caller headers, `Reply-To`, and our v2 offer (a v1 server ignores it)."""
        out = {**user_headers(headers), REPLY_TO: reply_to, STREAM_VERSION: VERSION_2}
        out[STREAM_HEARTBEAT] = str(int(self.heartbeat * 1000))
        if receives:
            out[STREAM_WINDOW] = str(self.window)
            out[STREAM_WINDOW_BYTES] = str(self.window_bytes)
        if self.deadline is not None:
            out[DEADLINE] = self.deadline.epoch_ms
        return out

    def session(self, inbox: Inbox, peer_inbox: str, confirmed: Mapping[str, str] | None) -> StreamSession:
        """Start v2 control for this call: the peer is gone when a heartbeat finds its inbox gone,
        or after three silent heartbeat intervals."""
        self.adopt_heartbeat(confirmed)
        self.watch_permissions(peer_inbox, inbox)

        def peer_gone(why: str) -> None:
            self.fail(inbox, self.error(ErrorCode.UNAVAILABLE, f"the server is unreachable: {why}"))

        session = self.active_session = StreamSession(
            self.nc, peer_inbox, inbox.subject, self.heartbeat, on_dead=peer_gone
        )
        return session

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.name)

    def encode(self, message: betterproto.Message, headers: Mapping[str, str] | None) -> bytes:
        body = self.codec.encode(message)
        check_size(len(body), headers, self.nc.max_payload, self.name)
        return body

    async def request(self, body: bytes, headers: dict[str, str], timeout: float | None) -> Any:
        """A NATS request; no responders is UNAVAILABLE, a timeout DEADLINE_EXCEEDED."""
        try:
            return await self.nc.request(self.subject, body, timeout=timeout, headers=headers or None)
        except nats.errors.NoRespondersError:
            raise self.error(ErrorCode.UNAVAILABLE, f"no service is listening on {self.subject}") from None
        except nats.errors.TimeoutError:
            raise self.error(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded") from None


class _StreamBase:
    """Shared by the stream objects: the inbox `R` the server answers on, closing, `async with`."""

    def __init__(self, call: _Call, inbox: Inbox) -> None:
        self._call = call
        self._inbox = inbox
        self._session: StreamSession | None = None  # set once the server confirmed protocol v2
        # If the task that opened the stream is cancelled while it is open, cancel the call: an
        # abandoned `async for` is not closed by Python until its generator is garbage collected.
        self._owner = asyncio.current_task()
        if self._owner is not None:
            self._owner.add_done_callback(self._owner_done)

    def _owner_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() and self._inbox.is_open:
            asyncio.get_running_loop().create_task(self.close(), name="betterproto-nats close")

    def _finished(self) -> bool:
        """Whether the server has ended the call (nothing to cancel)."""
        return False

    async def _await_confirmation(self) -> None:
        """Closing before we know whether the server speaks v2: see `ServerStream`."""

    async def close(self) -> None:
        """Abandon the call: tell a v2 server to stop, then release the subscription. Idempotent."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.remove_done_callback(self._owner_done)
        if self._session is None and self._inbox.is_open and not self._finished():
            await self._await_confirmation()
        session, self._session = self._session, None
        if session is not None:
            if not self._finished():
                await session.send_cancel("closed by the client")
            session.close()
        await self._inbox.close()
        self._call.release()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Receiving(_StreamBase, Generic[Resp]):
    """A stream the server sends on: `recv()`, `async for`, response `headers`."""

    def __init__(self, call: _Call, inbox: Inbox, response_type: type[Resp]) -> None:
        _StreamBase.__init__(self, call, inbox)
        self._reader: StreamReader[Resp] = StreamReader(inbox, call.codec, response_type, call.name, call.deadline)

    @property
    def headers(self) -> dict[str, str]:
        """Headers the server set on its first message (`current_call().set_response_headers`)."""
        return self._reader.headers

    def _finished(self) -> bool:
        error = self._reader.error
        # A deadline the server knows too (v2 sends it): no cancel needed; it stops by itself.
        return self._reader.saw_end or (error is not None and error.code == ErrorCode.DEADLINE_EXCEEDED)

    async def recv(self) -> Resp:
        """The next message; StopAsyncIteration at the end, RpcError on error."""
        try:
            with _as_rpc_errors(self._call.name):
                return await self._reader.recv()
        except BaseException:
            await self.close()
            raise

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self

    async def __anext__(self) -> Resp:
        return await self.recv()


class ServerStream(_Receiving[Resp]):
    """The client's end of a server-streaming call."""

    def __init__(self, call: _Call, inbox: Inbox, response_type: type[Resp]) -> None:
        super().__init__(call, inbox, response_type)
        inbox.watcher = self._watch
        self._heard = asyncio.Event()  # anything arrived: v2's open message always comes first

    async def _await_confirmation(self) -> None:
        """Closing before anything arrived: a v2 server's open message (naming where to send the
        cancel) may still be on its way. Wait for it briefly; a v1 server never sends one, and
        nothing arrives on an inbox we were denied."""
        if not self._heard.is_set() and not self._inbox.denied:
            try:
                await asyncio.wait_for(self._heard.wait(), min(1.0, self._call.heartbeat))
            except TimeoutError:
                pass

    def _watch(self, msg: Msg) -> bool:
        """Before v2 is confirmed, only the server's open message is ours; after, the session's."""
        self._heard.set()
        if self._session is not None:
            return self._session.watch(msg)
        if not is_control(msg.headers):
            return False
        headers = msg.headers or {}
        if headers.get(STREAM_VERSION) == VERSION_2 and self._inbox.is_open:
            call = self._call
            try:
                control_inbox = call.server_inbox(headers)
            except RpcError as refused:  # nothing is ever sent to an inbox that fails the checks
                call.fail(self._inbox, refused, at_once=True)
                return True
            session = self._session = call.session(self._inbox, control_inbox, headers)
            session.acknowledge(self._reader, call.window, call.window_bytes)
            session.start()
        return True


class DownloadStream(ServerStream[Resp], BlobReceiving):
    """A chunked download (`(natsmicro.chunked_io)` server stream): the blob as bytes, a file or pieces."""

    def __init__(self, call: _Call, inbox: Inbox, response_type: type[Resp]) -> None:
        super().__init__(call, inbox, response_type)
        assert call.method.chunks is not None
        chunks = ChunkCodec(response_type, call.method.chunks, call.codec)
        self._blob = ChunkReceiver(self._reader, chunks, self.close)  # the stream is released at the end


class _Sending(_StreamBase, Generic[Req]):
    """A stream the client sends on, after the handshake gave the server's inbox `S`."""

    def __init__(self, call: _Call, inbox: Inbox, server_inbox: str) -> None:
        _StreamBase.__init__(self, call, inbox)
        self._writer = StreamWriter(call.nc, server_inbox, call.codec, call.name)
        inbox.watcher = self._watch

    def _watch(self, msg: Msg) -> bool:
        """v2 control goes to the session; a message that ends the call wakes a blocked sender."""
        if self._session is not None and self._session.watch(msg):
            return True
        if is_control(msg.headers):
            return True
        if self._ends_call(msg):
            self._server_ended(msg)
        return False

    def _ends_call(self, msg: Msg) -> bool:
        """Client streaming: any answer is the final one (a v2 server may answer before we finish)."""
        return True

    def _start_v2(self, ack_headers: Mapping[str, str] | None, receiving: StreamReader[Any] | None) -> None:
        """The ack confirmed v2: the server's window bounds what we send; heartbeats both ways."""
        call = self._call
        session = self._session = call.session(self._inbox, self._writer.subject, ack_headers)
        session.drive(self._writer, ack_headers)
        if receiving is not None:
            session.acknowledge(receiving, call.window, call.window_bytes)
        session.start()

    _ended_by_server: Msg | None = None  # the server's final answer or end marker, once it arrived

    def _server_ended(self, msg: Msg) -> None:
        """The server ended the call while we may still be sending: wake a sender blocked on credit."""
        self._ended_by_server = msg
        if self._writer.window is not None:
            self._writer.window.fail(_Answered())

    def _raise_early_error(self) -> None:
        final = self._ended_by_server
        error = error_from_headers(final.headers if final is not None else None, self._call.name)
        if error is not None:
            raise error

    async def send(self, message: Req) -> None:
        """Send one message. After the server has ended the call, its error is raised here; after a
        successful early answer, further messages are no-ops."""
        await self._send_body(self._call.codec.encode(message))

    async def _send_body(self, body: bytes) -> None:
        if self._ended_by_server is not None:
            return self._raise_early_error()
        try:
            with _as_rpc_errors(self._call.name):
                await self._writer.send_body(body)
        except _Answered:
            self._raise_early_error()

    async def send_all(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        async for message in _iterate(messages):
            await self.send(message)


class ClientStream(_Sending[Req], Generic[Req, Resp]):
    """The client's end of a client-streaming call: `send` many, then `close_and_recv` one."""

    def __init__(self, call: _Call, inbox: Inbox, server_inbox: str, response_type: type[Resp], headers: dict[str, str]) -> None:
        super().__init__(call, inbox, server_inbox)
        self._response_type = response_type
        self.headers = headers  # from the handshake ack, then the final response

    def _finished(self) -> bool:
        return self._ended_by_server is not None

    async def close_and_recv(self) -> Resp:
        """End our direction and wait for the server's single response."""
        call = self._call
        try:
            with _as_rpc_errors(call.name):
                if self._ended_by_server is None:
                    await self._writer.end()
            msg = await self._inbox.get(call.deadline, call.name)
            error = error_from_headers(msg.headers, call.name)
            if error is not None:
                raise error
            self.headers.update(caller_headers(msg.headers))
            return call.codec.decode(self._response_type, msg.data, call.name)
        finally:
            await self.close()


class UploadStream(ClientStream[Req, Resp]):
    """A chunked upload (`(natsmicro.chunked_io)` client stream): send bytes, a file or a reader."""

    def __init__(self, call: _Call, inbox: Inbox, server_inbox: str, response_type: type[Resp], headers: dict[str, str]) -> None:
        super().__init__(call, inbox, server_inbox, response_type, headers)
        assert call.method.chunks is not None
        chunks = ChunkCodec(call.method.request, call.method.chunks, call.codec)
        self._blob = ChunkSender(self._writer, chunks, self._send_body)

    async def send_bytes(self, data: bytes | bytearray | memoryview, progress: Progress | None = None) -> None:
        """Send `data` split into the method's chunk size."""
        await self._blob.send_bytes(data, 0, progress)

    async def send_file(self, path: str | os.PathLike[str], chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send a file (0 = the method's default_chunk_size)."""
        await self._blob.send_file(path, chunk_size, progress)

    async def send_reader(self, reader: Any, chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send what a file-like object (sync or async `read`) or an (async) iterable of bytes gives."""
        await self._blob.send_reader(reader, chunk_size, progress)


class BidiStream(_Sending[Req], _Receiving[Resp], Generic[Req, Resp]):
    """The client's end of a bidirectional call: `send`/`recv` freely, `close_send` ends our side."""

    def __init__(self, call: _Call, inbox: Inbox, server_inbox: str, response_type: type[Resp]) -> None:
        _Sending.__init__(self, call, inbox, server_inbox)
        _Receiving.__init__(self, call, inbox, response_type)

    def _ends_call(self, msg: Msg) -> bool:
        # Data keeps coming until the server's end marker (queued for recv() after the data before it).
        return classify(msg.headers).kind in (FrameKind.END, FrameKind.ERROR)

    async def close_send(self) -> None:
        """Tell the server we will send nothing more; keep receiving."""
        with _as_rpc_errors(self._call.name):
            await self._writer.end()

    async def _send_all_and_close(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        try:
            await self.send_all(messages)
            await self.close_send()
        except BaseException as error:
            failure = error if isinstance(error, RpcError) else self._call.error(
                ErrorCode.CANCELLED, f"sending requests failed: {error!r}"
            )
            self._inbox.fail(failure)
            raise


class _Answered(Exception):
    """The server answered a client stream before we finished sending."""


class ServerStreamCall(Generic[Resp]):
    """`await` it for a `ServerStream`, or `async for` over it directly."""

    def __init__(self, open_stream: Callable[[], Awaitable[ServerStream[Resp]]]) -> None:
        self._open = open_stream

    def __await__(self) -> Generator[Any, None, ServerStream[Resp]]:
        return self._open().__await__()

    async def __aiter__(self) -> AsyncIterator[Resp]:
        stream = await self._open()
        try:
            async for message in stream:
                yield message
        finally:
            await stream.close()


class DownloadCall(ServerStreamCall[Resp]):
    """`await` it for a `DownloadStream` (blob helpers), or `async for` over the chunk messages."""

    def __await__(self) -> Generator[Any, None, DownloadStream[Resp]]:
        return self._open().__await__()  # type: ignore[return-value]


class BidiStreamCall(Generic[Req, Resp]):
    """`await` it for a `BidiStream`, or `async for` over the responses to the given requests."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[BidiStream[Req, Resp]]],
        requests: Iterable[Req] | AsyncIterable[Req] | None,
    ) -> None:
        self._open = open_stream
        self._requests = requests

    def __await__(self) -> Generator[Any, None, BidiStream[Req, Resp]]:
        return self._open().__await__()

    async def __aiter__(self) -> AsyncIterator[Resp]:
        if self._requests is None:
            raise TypeError("pass the requests to iterate over the responses, or await the call for a stream")
        stream = await self._open()
        sender = asyncio.create_task(stream._send_all_and_close(self._requests))
        try:
            async for message in stream:
                yield message
            await sender
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await stream.close()


class ClientBase:
    """Base of generated `<Service>NatsClient` classes. Internals are `_nats_`-prefixed."""

    _nats_service: ClassVar[ServiceSpec]

    def __init__(
        self,
        nc: NATS | Transport,
        *,
        subject_prefix: str | None = None,
        timeout: float | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        inbox_prefixes: Sequence[str] = (),
    ) -> None:
        self._nats_nc = nc
        self._nats_transport = transport_of(nc)
        self._nats_subject_prefix = subject_prefix or self._nats_service.subject_prefix
        self._nats_timeout = timeout
        self._nats_heartbeat = heartbeat  # seconds between v2 heartbeats; silence for 3 = peer gone
        # Where a server may name its stream inboxes: `_INBOX.` and these (a service's own prefix).
        self._nats_inboxes = InboxPolicy(inbox_prefixes)

    async def _nats_unary(
        self,
        py_name: str,
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
    ) -> Any:
        call = _Call(self, self._nats_service.method(py_name), timeout)
        out_headers = user_headers(headers)
        body = call.encode(request, out_headers)
        with _as_rpc_errors(call.name):
            msg = await call.request(body, out_headers, None if call.deadline is None else call.deadline.remaining())
        error = error_from_headers(msg.headers, call.name)
        if error is not None:
            raise error
        if response_headers is not None:
            response_headers.update(caller_headers(msg.headers))
        return call.codec.decode(call.method.response, msg.data, call.name)

    def _nats_server_stream(
        self,
        py_name: str,
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> ServerStreamCall[Any]:
        method = self._nats_service.method(py_name)

        async def open_stream() -> ServerStream[Any]:
            call = _Call(self, method, timeout)
            inbox = await call.open_inbox()  # subscribed before the request can cause anything
            kind = DownloadStream if method.chunks is not None else ServerStream
            stream = kind(call, inbox, method.response)  # watching R before anything is sent
            try:
                out_headers = call.opening_headers(headers, inbox.subject, receives=True)
                body = call.encode(request, out_headers)
                # Our reply subject is R too: with nobody listening the NATS server answers R with a
                # 503 status at once (UNAVAILABLE); servers that see Reply-To ignore the reply subject.
                with _as_rpc_errors(call.name):
                    await call.nc.publish(call.subject, body, reply=inbox.subject, headers=out_headers)
            except BaseException:
                await inbox.close()
                call.release()
                raise
            return stream

        return DownloadCall(open_stream) if method.chunks is not None else ServerStreamCall(open_stream)

    def _nats_download(
        self,
        py_name: str,
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> DownloadCall[Any]:
        """A `(natsmicro.chunked_io)` server stream: the same call, with blob helpers."""
        call = self._nats_server_stream(py_name, request, timeout=timeout, headers=headers)
        assert isinstance(call, DownloadCall), f"{py_name} is not a chunked download"
        return call

    async def _nats_handshake(
        self, py_name: str, timeout: float | None, headers: Mapping[str, str] | None
    ) -> tuple[_Call, Inbox, str, Mapping[str, str]]:
        """Client-stream/bidi opening: subscribe R, request with `Reply-To: R`, get `S` from the ack."""
        call = _Call(self, self._nats_service.method(py_name), timeout)
        inbox = await call.open_inbox()
        inbox.watcher = lambda msg: is_control(msg.headers)  # no v2 control is data
        try:
            bidi = call.method.cardinality.server_streams
            out_headers = call.opening_headers(headers, inbox.subject, receives=bidi)
            check_size(0, out_headers, call.nc.max_payload, call.name)
            wait = HANDSHAKE_TIMEOUT
            if call.deadline is not None and call.deadline.remaining() < wait:
                wait = call.deadline.remaining()
            try:
                with _as_rpc_errors(call.name):
                    ack = await call.request(b"", out_headers, wait)
            except RpcError as failed:
                if failed.code == ErrorCode.DEADLINE_EXCEEDED and wait == HANDSHAKE_TIMEOUT:
                    raise call.error(ErrorCode.UNAVAILABLE, f"no handshake ack from {call.subject}") from None
                raise
            refused = error_from_headers(ack.headers, call.name)
            if refused is not None:
                raise refused
            server_inbox = call.server_inbox(ack.headers)
            call.watch_permissions(server_inbox, inbox)
        except BaseException:
            await inbox.close()
            call.release()
            raise
        return call, inbox, server_inbox, ack.headers or {}

    async def _nats_client_stream(
        self,
        py_name: str,
        requests: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> Any:
        call, inbox, server_inbox, ack_headers = await self._nats_handshake(py_name, timeout, headers)
        kind = UploadStream if call.method.chunks is not None else ClientStream
        stream: ClientStream[Any, Any] = kind(call, inbox, server_inbox, call.method.response, caller_headers(ack_headers))
        if ack_headers.get(STREAM_VERSION) == VERSION_2:
            stream._start_v2(ack_headers, None)
        if requests is None:
            return stream
        async with stream:
            await stream.send_all(requests)
            return await stream.close_and_recv()

    def _nats_bidi(
        self,
        py_name: str,
        requests: Iterable[Any] | AsyncIterable[Any] | None,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
    ) -> BidiStreamCall[Any, Any]:
        async def open_stream() -> BidiStream[Any, Any]:
            call, inbox, server_inbox, ack_headers = await self._nats_handshake(py_name, timeout, headers)
            stream: BidiStream[Any, Any] = BidiStream(call, inbox, server_inbox, call.method.response)
            if ack_headers.get(STREAM_VERSION) == VERSION_2:
                stream._start_v2(ack_headers, stream._reader)
            return stream

        return BidiStreamCall(open_stream, requests)
