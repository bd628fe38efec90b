"""The client half: `ClientCall`, the one object that owns a call on the client, and the thin stream
views users hold (`ServerStream`, `ClientStream`, `BidiStream`, blob helpers); `ClientBase` is what
generated `<Service>NatsClient` classes call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    ClassVar,
    Coroutine,
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

from .admission import DEFAULT_MAX_LOOP_LAG, OpenGate
from .chunks import BlobReceiving, ChunkCodec, ChunkReceiver, ChunkSender, Progress
from .codec import Codec
from .errors import ErrorCode, RpcError
from .flow import AckPolicy, FlowWindow, SendCredit, Unlimited
from .interceptors import CallInfo, Chain, Direction, Interceptor, Side, outcome_of
from .liveness import DEFAULT_HEARTBEAT
from .negotiation import Window, client_heartbeat, client_offer, confirmed, shared_peer
from .mux import let_go
from .peers import PeerLiveness
from .protocol import (
    DEADLINE,
    REPLY_TO,
    STREAM_INBOX,
    FrameKind,
    caller_headers,
    check_size,
    classify,
    error_from_headers,
    is_control,
    is_no_responders,
    quote,
    user_headers,
)
from .session import StreamSession
from .spec import Cardinality, MethodSpec, ServiceSpec
from .streams import Deadline, FirstHop, Inbox, StreamReader, StreamWriter
from .subjects import InboxPolicy
from .persistence import Stores
from .retry import RetryPolicy
from .transport import NatsTransport, Transport, transport_of

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
        raise _connection_error(error, name) from error


def _connection_error(error: nats.errors.Error, name: str) -> RpcError:
    return RpcError(ErrorCode.UNAVAILABLE, f"NATS connection: {error}", method=name)


async def _request(
    nc: Transport, subject: str, body: bytes, headers: dict[str, str], timeout: float | None, name: str
) -> Msg:
    """A NATS request, its failures as RpcErrors (`_request_failed`)."""
    try:
        return await nc.request(subject, body, timeout=timeout, headers=headers or None)
    except nats.errors.Error as error:
        raise _request_failed(error, subject, name) from error


def _request_failed(error: nats.errors.Error, subject: str, name: str) -> RpcError:
    """No responders is UNAVAILABLE, no answer in time DEADLINE_EXCEEDED, any other nats-py error
    UNAVAILABLE (as `_as_rpc_errors`, without a context manager per call)."""
    if isinstance(error, nats.errors.NoRespondersError):
        return RpcError(ErrorCode.UNAVAILABLE, f"no service is listening on {subject}", method=name)
    if isinstance(error, nats.errors.TimeoutError):
        return RpcError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded", method=name)
    return _connection_error(error, name)


def _unary_response(
    msg: Msg, method: MethodSpec[Any, Any], codec: Codec, name: str, response_headers: dict[str, str] | None
) -> Any:
    """A unary answer: the server's error raised, its response headers kept, the response decoded."""
    error = error_from_headers(msg.headers, name)
    if error is not None:
        raise error
    if response_headers is not None:
        response_headers.update(caller_headers(msg.headers))
    return codec.decode(method.response, msg.data, name)


class CallState(enum.Enum):
    """Where a call is; `ClientCall.move` allows only the transitions in `_NEXT`."""

    __hash__ = object.__hash__  # members are singletons: identity, not Enum's hash of the name (per call)

    OPENING = "opening"  # subscribing, sending the request or waiting for the handshake ack
    OPEN = "open"  # messages flow in the call's directions
    HALF_CLOSED = "half-closed"  # we ended our direction; the server's is still open
    CLOSED = "closed"  # the server ended the call cleanly
    FAILED = "failed"  # ended with an error, by either side, or abandoned by the client


_NEXT: dict[CallState, frozenset[CallState]] = {
    CallState.OPENING: frozenset({CallState.OPEN, CallState.FAILED}),
    CallState.OPEN: frozenset({CallState.HALF_CLOSED, CallState.CLOSED, CallState.FAILED}),
    CallState.HALF_CLOSED: frozenset({CallState.CLOSED, CallState.FAILED}),
    CallState.CLOSED: frozenset(),
    CallState.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A call was asked to move where its state machine does not go: a bug in the runtime."""


class _Answered(Exception):
    """The server ended the call while we were still sending."""


class ClientCall:
    """The client's side of one call: its subjects and inbox `R`, reader, writer, v2 session,
    deadline and state. Messages on `R` are seen first by `on_message`; `close` is the one place
    that ends the call and releases what it holds. Slots, not a `__dict__`: thousands may be open."""

    __slots__ = (
        "nc", "method", "name", "subject", "codec", "deadline", "heartbeat", "inboxes", "receives", "sends", "window",
        "state", "inbox", "reader", "writer", "credit", "session", "peers", "answer", "heard", "_heard_waiter",
        "released", "lost", "failure", "chain", "info", "_watched", "_owner", "gate", "max_loop_lag",
    )

    def __init__(self, client: ClientBase, method: MethodSpec[Any, Any], timeout: float | None) -> None:
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
        self.inboxes = client._nats_inboxes
        self.receives = method.cardinality.server_streams
        self.sends = method.cardinality in (Cardinality.CLIENT_STREAM, Cardinality.BIDI)
        self.window = Window.for_method(method.max_inflight)  # what we grant for what we receive
        self.state = CallState.OPENING
        self.inbox: Inbox | None = None
        self.reader: StreamReader[Any] | None = None
        self.writer: StreamWriter | None = None
        self.credit: SendCredit = Unlimited()
        self.session: StreamSession | None = None
        self.peers: PeerLiveness | None = None  # our connection's shared liveness, named in the offer
        self.answer: Msg | None = None  # the server's final message, once it arrived (sending shapes)
        self.heard = False  # something arrived on R
        self._heard_waiter: asyncio.Future[None] | None = None  # `close` waits for that
        self.released = False
        self.lost = False  # the server's heartbeats said our messages were lost in transit
        self.failure: RpcError | None = None  # why the call failed, once it did
        self.chain = client._nats_chain
        self.max_loop_lag = client._nats_max_loop_lag
        self.gate: OpenGate | None = None  # our place among the connection's open streams
        self.info: CallInfo | None = None  # what interceptors see, when there are any
        self._watched: list[str] = []
        # If the task that opened the call is cancelled while the call is open, the call is
        # abandoned: an abandoned `async for` is not closed by Python until garbage collection.
        self._owner = asyncio.current_task()
        if self._owner is not None:
            self._owner.add_done_callback(self._owner_done)

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.name)

    def move(self, state: CallState) -> None:
        if state not in _NEXT[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state

    @property
    def ended(self) -> bool:
        return self.state in (CallState.CLOSED, CallState.FAILED)

    def end(self, error: RpcError | None) -> None:
        """The call is over: cleanly or with `error` (the transition, not the release)."""
        if not self.ended:
            self.failure = error
            self.move(CallState.FAILED if error is not None else CallState.CLOSED)

    async def begin(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """The caller's headers, checked; interceptors start here, before anything is sent (they may
        change the headers, or reject the call)."""
        out = user_headers(headers)
        if self.chain is not None:
            spec = self.method
            self.info = CallInfo(Side.CLIENT, self.name.rsplit("/", 1)[0], spec.name, spec.cardinality, self.subject, out, spec)
            await self.chain.start(self.info)
            out = user_headers(self.info.headers)
        return out

    def encode(self, message: betterproto.Message) -> bytes:
        """A message to send, through the interceptors when there are any."""
        if self.info is not None and self.chain is not None:
            message = self.chain.message(self.info, Direction.SENT, message)
        return self.codec.encode(message)

    # --- Opening ---------------------------------------------------------------------------------

    async def _enter_gate(self) -> None:
        """Wait, within the deadline, while this connection has more streams than its loop carries
        (`admission.OpenGate`); Overloaded when the deadline passes first (nothing was sent)."""
        if self.max_loop_lag is None:
            return
        gate = OpenGate.of(self.nc, self.max_loop_lag)
        await gate.enter(None if self.deadline is None else self.deadline.remaining(), self.name)
        self.gate = gate

    async def _open_inbox(self) -> Inbox:
        inbox = self.inbox = Inbox(self.nc, self.name)
        inbox.watcher = self.on_message
        self._watch_permissions(inbox.subject)  # before subscribing: the denial may come at once
        with _as_rpc_errors(self.name):
            await inbox.open()
        if self.receives:
            self.reader = StreamReader(inbox, self.codec, self.method.response, self.name, self.deadline)
        return inbox

    async def _opening_headers(self, headers: Mapping[str, str] | None, reply_to: str) -> dict[str, str]:
        """Caller headers (after the interceptors), `Reply-To`, and our v2 offer (a v1 server ignores
        it), which names our connection's liveness subject (heartbeats shared per peer connection)."""
        caller = await self.begin(headers)
        deadline = None if self.deadline is None else self.deadline.epoch_ms
        with _as_rpc_errors(self.name):
            self.peers = await PeerLiveness.acquire(self.nc)
        offer = client_offer(self.heartbeat, deadline, self.window if self.receives else None, self.peers.subject)
        return {**caller, REPLY_TO: reply_to, **offer}

    async def open_server_stream(self, request: betterproto.Message, headers: Mapping[str, str] | None) -> None:
        """Subscribe `R`, then publish the request with `Reply-To: R` (and R as its reply subject:
        with nobody serving, the NATS server answers R with a 503 status at once)."""
        try:
            await self._enter_gate()
            inbox = await self._open_inbox()  # subscribed before the request can cause anything
            out_headers = await self._opening_headers(headers, inbox.subject)
            body = self.encode(request)
            check_size(len(body), out_headers, self.nc.max_payload, self.name)
            with _as_rpc_errors(self.name):
                await self.nc.publish(self.subject, body, reply=inbox.subject, headers=out_headers)
        except BaseException as error:
            await self._failed_opening(error)
            raise
        self.move(CallState.OPEN)

    async def _failed_opening(self, error: BaseException) -> None:
        self.end(error if isinstance(error, RpcError) else self.error(ErrorCode.CANCELLED, "opening interrupted"))
        await self.close()

    async def open_handshake(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """Client-stream/bidi opening: subscribe R, request with `Reply-To: R`, take `S` from the ack.
        Returns the caller headers of the ack."""
        try:
            await self._enter_gate()
            inbox = await self._open_inbox()
            out_headers = await self._opening_headers(headers, inbox.subject)
            check_size(0, out_headers, self.nc.max_payload, self.name)
            wait = HANDSHAKE_TIMEOUT
            if self.deadline is not None and self.deadline.remaining() < wait:
                wait = self.deadline.remaining()
            try:
                ack = await _request(self.nc, self.subject, b"", out_headers, wait, self.name)
            except RpcError as failed:
                if failed.code == ErrorCode.DEADLINE_EXCEEDED and wait == HANDSHAKE_TIMEOUT:
                    raise self.error(ErrorCode.UNAVAILABLE, f"no handshake ack from {self.subject}") from None
                raise
            refused = error_from_headers(ack.headers, self.name)
            if refused is not None:
                raise refused
            server_inbox = self._server_inbox(ack.headers)
            self._watch_permissions(server_inbox)
            self.writer = StreamWriter(self.nc, server_inbox, self.codec, self.name, self.credit)
            self.writer.first_hop = FirstHop(self.nc, inbox.subject, self.name)  # S is new: make sure it is known
            if confirmed(ack.headers):
                self._start_v2(ack.headers, peer_inbox=server_inbox)
        except BaseException as error:
            await self._failed_opening(error)
            raise
        self.move(CallState.OPEN)
        return caller_headers(ack.headers)

    def _server_inbox(self, headers: Mapping[str, str] | None) -> str:
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

    def _start_v2(self, confirmation: Mapping[str, str] | None, peer_inbox: str) -> None:
        """The server confirmed v2: its window bounds what we send, ours what we receive; heartbeats
        both ways at the interval the server said, shared with its connection when it named its
        liveness subject."""
        inbox = self.inbox
        assert inbox is not None
        peer_subject = self._checked_peer(confirmation)
        self._watch_permissions(peer_inbox)
        writer, reader = self.writer, self.reader
        window = FlowWindow(Window.granted(confirmation)) if writer is not None else None
        heartbeat = client_heartbeat(confirmation, self.heartbeat)
        session = self.session = StreamSession(self.nc, peer_inbox, inbox.subject, heartbeat, self, window)
        if reader is not None:
            session.receiving = inbox
            reader.acks = AckPolicy(self.window, session.send_ack)
            inbox.limit(self.window.messages + 2, self.window.max_bytes)  # + the end marker and a status
        if writer is not None and window is not None:
            session.sending = writer
            if self.answer is not None:  # the server ended the call during the handshake
                window.fail(_Answered())
            self.credit = writer.credit = window
            writer.on_sent = session.on_sent
        if peer_subject is not None and self.peers is not None:
            session.share(self.peers, peer_subject)
            inbox.peer = session.group
        session.start()

    def _checked_peer(self, confirmation: Mapping[str, str] | None) -> str | None:
        """The server's liveness subject, checked like its inboxes (INTERNAL when it fails)."""
        subject = shared_peer(confirmation)
        if subject is not None:
            why = self.inboxes.check(subject)
            if why is not None:
                raise self.error(ErrorCode.INTERNAL, f"the server named a liveness subject {quote(subject)}, which is {why}")
        return subject

    def _watch_permissions(self, subject: str) -> None:
        """Publishing to or subscribing on `subject` denied: the call fails with PERMISSION_DENIED
        at once (nats-py only tells the connection's error callback; the message is dropped)."""
        self.nc.watch_permissions(subject, self._denied)
        self._watched.append(subject)

    def _denied(self, text: str) -> None:
        self.fail(self.error(ErrorCode.PERMISSION_DENIED, text), at_once=True)

    # --- What arrives on R (in the subscription callback) -----------------------------------------

    def on_message(self, msg: Msg) -> bool:
        """See every message on R first: v2 control goes to the session (or confirms v2 on a server
        stream); a message that ends the call wakes a sender. True: not for the reader's queue."""
        writer = self.writer
        if writer is not None and writer.first_hop is not None and writer.first_hop.saw(msg):
            return True
        self.heard = True
        waiter = self._heard_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        session = self.session
        if session is not None and session.watch(msg):
            return True
        headers = msg.headers
        if session is None and self.reader is not None and self.reader.received == 0 and is_no_responders(headers):
            # The request itself found nobody (our reply subject is R): say where nobody listens.
            self.fail(self.error(ErrorCode.UNAVAILABLE, f"no service is listening on {self.subject}"), at_once=True)
            return True
        if is_control(headers):
            if session is None and not self.sends and confirmed(headers) and not self.ended:
                self._confirm_server_stream(headers)
            return True
        if self.sends and self._ends_call(msg):  # also while the handshake is still being read
            self.answer = msg
            self.credit.fail(_Answered())
        return False

    def _confirm_server_stream(self, headers: Mapping[str, str] | None) -> None:
        """A server stream's open message confirmed v2 and named the server's control inbox."""
        try:
            self._start_v2(headers, peer_inbox=self._server_inbox(headers))
        except RpcError as refused:  # nothing is ever sent to a subject that fails the checks
            self.fail(refused, at_once=True)

    def _ends_call(self, msg: Msg) -> bool:
        """Client streaming: any answer is the final one (a v2 server may answer before we finish);
        bidi: data keeps coming until the end marker or an error."""
        if not self.receives:
            return True
        return classify(msg.headers).kind in (FrameKind.END, FrameKind.ERROR)

    # --- How the session ends the call (`CallEnds`) ------------------------------------------------

    def peer_unreachable(self, why: str, tell: bool) -> None:
        self.fail(self.error(ErrorCode.UNAVAILABLE, f"the server is unreachable: {why}"))

    def peer_cancelled(self, reason: str, code: str) -> None:
        """A server does not cancel (nothing is sent to us that would)."""

    def messages_lost(self, why: str) -> None:
        """Frames the server sent did not arrive (its count says so): the call fails with DATA_LOSS,
        and the cancel at close tells the server why."""
        self.lost = True
        self.fail(self.error(ErrorCode.DATA_LOSS, why))

    def peer_released(self, missing: str | None) -> None:
        """The server let go of the call (its heartbeats say so): when its last message did not
        arrive, the call fails with DATA_LOSS instead of waiting for it forever."""
        if missing is None and (self.receives or self.answer is not None):
            return  # everything arrived: the reader takes it from the queue
        self.fail(self.error(ErrorCode.DATA_LOSS, f"the server ended the call, but {missing or 'its answer'} did not arrive"))

    def fail(self, error: RpcError, at_once: bool = False) -> None:
        """End the call with `error`: a waiting reader (after what is queued, unless `at_once`) and a
        sender blocked on credit both see it."""
        if self.inbox is not None:
            if at_once:
                self.inbox.abort(error)
            else:
                self.inbox.fail(error)
        self.credit.fail(error)

    # --- Sending ----------------------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Encode and send one message (see `send_body`); after a full batch left, the loop runs once
        (`StreamWriter.turn_due`)."""
        body = self.encode(message)
        if not self.send_nowait(body):
            await self.send_body(body)
        elif self.writer is not None and self.writer.turn_due:
            await self.writer.take_turn()

    def send_nowait(self, body: bytes) -> bool:
        """Put a message into the writer's batch when nothing needs waiting for (the hot path of a
        stream); False: `send_body` it."""
        writer = self.writer
        return self.answer is None and writer is not None and writer.queue_nowait(body)

    async def send_body(self, body: bytes) -> None:
        """Send one message. After the server has ended the call, its error is raised here; after a
        successful early answer, further messages are no-ops."""
        writer = self.writer
        assert writer is not None
        if self.answer is not None:
            return self._raise_early_error()
        if writer.queue_nowait(body):
            return
        try:
            await writer.send_body(body)
        except _Answered:
            self._raise_early_error()
        except nats.errors.Error as error:  # as _as_rpc_errors, without a context manager per message
            raise _connection_error(error, self.name) from error

    def _raise_early_error(self) -> None:
        error = error_from_headers(self.answer.headers if self.answer is not None else None, self.name)
        if error is not None:
            raise error

    async def end_send(self) -> None:
        """End our direction (unless the server already ended the call)."""
        assert self.writer is not None
        if self.answer is None and not self.writer.ended:
            with _as_rpc_errors(self.name):
                await self.writer.end()
            if self.state is CallState.OPEN:
                self.move(CallState.HALF_CLOSED)

    # --- Receiving --------------------------------------------------------------------------------

    async def recv(self) -> Any:
        """The next message of the server's stream; StopAsyncIteration at its end."""
        assert self.reader is not None
        try:
            try:
                message = await self.reader.recv()
            except nats.errors.Error as error:  # as _as_rpc_errors, without a context manager per message
                raise _connection_error(error, self.name) from error
            if self.info is not None and self.chain is not None:
                message = self.chain.message(self.info, Direction.RECEIVED, message)
            return message
        except StopAsyncIteration:
            self.end(None)
            await self.close()
            raise
        except BaseException as error:
            self.end(error if isinstance(error, RpcError) else self.error(ErrorCode.CANCELLED, "receive interrupted"))
            await self.close()
            raise

    async def final_answer(self) -> Msg:
        """Client streaming: end our direction, then the server's single answer (its error raised)."""
        assert self.inbox is not None
        try:
            await self.end_send()
            msg = await self.inbox.get(self.deadline, self.name)
            error = error_from_headers(msg.headers, self.name)
            if error is not None:
                raise error
            self.answer = msg
            self.end(None)
            return msg
        except RpcError as error:
            self.end(error)
            raise
        finally:
            await self.close()

    # --- Ending: the one place -------------------------------------------------------------------

    def _server_done(self) -> bool:
        """Whether the server has ended the call by itself (no cancel needed)."""
        if self.answer is not None:
            return True
        reader = self.reader
        if reader is None:
            return False
        error = reader.error
        # A deadline the server knows too (v2 sends it): it stops by itself.
        return reader.saw_end or (error is not None and error.code == ErrorCode.DEADLINE_EXCEEDED)

    async def close(self) -> None:
        """Abandon or finish the call: tell a v2 server that is still going to stop, then release the
        subscription, the session and the permission watches. Idempotent."""
        if self.released:
            return
        self.released = True
        self.drop_owner()
        inbox = self.inbox
        server_done = self._server_done()
        try:
            if not self.sends and self.session is None and inbox is not None and inbox.is_open and not server_done:
                await self._await_confirmation(inbox)  # a server stream's: client streams confirm on the handshake
            if self.session is not None and not server_done:
                await self.session.send_cancel("closed by the client", data_loss=self.lost)
        finally:  # cancelled or not, the call lets go of everything it holds
            if self.session is not None:
                self.session.close(released=not server_done)  # shared heartbeats repeat the cancel
            steps: list[Callable[[], Awaitable[None]]] = [] if inbox is None else [inbox.close]
            peers, self.peers = self.peers, None
            if peers is not None:
                steps.append(peers.release)
            gate, self.gate = self.gate, None
            if gate is not None:
                gate.leave()
            for subject in self._watched:
                self.nc.forget_permissions(subject)
            self._watched.clear()
            try:
                await let_go(steps)
            finally:
                if not self.ended:
                    reader = self.reader
                    clean = reader is not None and reader.saw_end and reader.error is None  # a blob read to its end
                    self.end(None if clean else self.error(ErrorCode.CANCELLED, "closed by the client before the end"))
                    self.credit.fail(self.error(ErrorCode.CANCELLED, "the call was closed"))
        if self.info is not None and self.chain is not None:
            writer, reader = self.writer, self.reader
            sent = (writer.sent, writer.bytes_sent) if writer is not None else (1, 0)
            if reader is not None:
                received = (reader.received, reader.bytes_received)
            else:
                received = (1, len(self.answer.data)) if self.answer is not None and self.failure is None else (0, 0)
            await self.chain.end(self.info, outcome_of(self.info, self.failure, sent, received))

    async def _await_confirmation(self, inbox: Inbox) -> None:
        """A server stream closed before anything arrived: a v2 server's open message (naming where
        to send the cancel) may still be on its way. Wait for it briefly; a v1 server never sends
        one, and nothing arrives on an inbox we were denied."""
        if not self.heard and not inbox.denied:
            waiter = self._heard_waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, min(1.0, self.heartbeat))
            except TimeoutError:
                pass
            finally:
                self._heard_waiter = None

    def drop_owner(self) -> None:
        """Stop watching the task that opened the call."""
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.remove_done_callback(self._owner_done)

    def _owner_done(self, task: asyncio.Task[Any]) -> None:
        self._owner = None  # done either way: nothing more to watch (and nothing to keep alive)
        if task.cancelled() and not self.released:
            asyncio.get_running_loop().create_task(self.close(), name="betterproto-nats close")


# --- The views users hold -------------------------------------------------------------------------


class _View:
    """A stream object: a typed view of its `ClientCall`; `close()` and `async with` end the call."""

    def __init__(self, call: ClientCall) -> None:
        self.call = call

    async def close(self) -> None:
        """Abandon the call (a v2 server is told to stop) and release it. Idempotent."""
        await self.call.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Receives(_View, Generic[Resp]):
    """The server's stream: `recv()`, `async for`, and the headers of its first message."""

    @property
    def headers(self) -> dict[str, str]:
        """Headers the server set on its first message (`current_call().set_response_headers`)."""
        assert self.call.reader is not None
        return self.call.reader.headers

    async def recv(self) -> Resp:
        """The next message; StopAsyncIteration at the end, RpcError on error."""
        message: Resp = await self.call.recv()
        return message

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self

    async def __anext__(self) -> Resp:
        call = self.call
        if call.info is None:  # no interceptors: the rest of a batch is taken without more coroutines
            reader = call.reader
            message: Resp | None = reader.take_nowait() if reader is not None else None
            if message is not None:
                return message
        received: Resp = await call.recv()
        return received


class ServerStream(_Receives[Resp]):
    """The client's end of a server-streaming call."""


class DownloadStream(ServerStream[Resp], BlobReceiving):
    """A chunked download (`(natsmicro.chunked_io)` server stream): the blob as bytes, a file or pieces."""

    def __init__(self, call: ClientCall) -> None:
        super().__init__(call)
        assert call.method.chunks is not None and call.reader is not None
        chunks = ChunkCodec(call.method.response, call.method.chunks, call.codec)
        self._blob = ChunkReceiver(call.reader, chunks, call.close)  # released at the blob's end


async def _send_all(call: ClientCall, messages: Iterable[Any] | AsyncIterable[Any]) -> None:
    if isinstance(messages, AsyncIterable):
        async for message in messages:
            await call.send(message)
        return
    writer = call.writer
    assert writer is not None
    for message in messages:  # no coroutine per message while the batch takes them (as `call.send`)
        body = call.encode(message)
        if not call.send_nowait(body):
            await call.send_body(body)
        elif writer.turn_due:
            await writer.take_turn()


class ClientStream(_View, Generic[Req, Resp]):
    """The client's end of a client-streaming call: `send` many, then `close_and_recv` one."""

    def __init__(self, call: ClientCall, headers: dict[str, str]) -> None:
        super().__init__(call)
        self.headers = headers  # from the handshake ack, then the final response

    async def send(self, message: Req) -> None:
        """Send one message. After the server has ended the call, its error is raised here; after a
        successful early answer, further messages are no-ops."""
        await self.call.send(message)

    async def send_all(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        await _send_all(self.call, messages)

    async def close_and_recv(self) -> Resp:
        """End our direction and wait for the server's single response."""
        call = self.call
        msg = await call.final_answer()
        self.headers.update(caller_headers(msg.headers))
        response: Resp = call.codec.decode(call.method.response, msg.data, call.name)
        if call.info is not None and call.chain is not None:
            response = call.chain.message(call.info, Direction.RECEIVED, response)
        return response


class UploadStream(ClientStream[Req, Resp]):
    """A chunked upload (`(natsmicro.chunked_io)` client stream): send bytes, a file or a reader."""

    def __init__(self, call: ClientCall, headers: dict[str, str]) -> None:
        super().__init__(call, headers)
        assert call.method.chunks is not None and call.writer is not None
        chunks = ChunkCodec(call.method.request, call.method.chunks, call.codec)
        self._blob = ChunkSender(call.writer, chunks, call.send_body)

    async def send_bytes(self, data: bytes | bytearray | memoryview, progress: Progress | None = None) -> None:
        """Send `data` split into the method's chunk size."""
        await self._blob.send_bytes(data, 0, progress)

    async def send_file(self, path: str | os.PathLike[str], chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send a file (0 = the method's default_chunk_size)."""
        await self._blob.send_file(path, chunk_size, progress)

    async def send_reader(self, reader: Any, chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send what a file-like object (sync or async `read`) or an (async) iterable of bytes gives."""
        await self._blob.send_reader(reader, chunk_size, progress)


class BidiStream(_Receives[Resp], Generic[Req, Resp]):
    """The client's end of a bidirectional call: `send`/`recv` freely, `close_send` ends our side."""

    async def send(self, message: Req) -> None:
        """Send one message; after the server ended the call, its error is raised here."""
        await self.call.send(message)

    async def send_all(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        await _send_all(self.call, messages)

    async def close_send(self) -> None:
        """Tell the server we will send nothing more; keep receiving."""
        await self.call.end_send()

    async def _send_all_and_close(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        try:
            await self.send_all(messages)
            await self.close_send()
        except BaseException as error:
            failure = error if isinstance(error, RpcError) else self.call.error(
                ErrorCode.CANCELLED, f"sending requests failed: {error!r}"
            )
            self.call.fail(failure)
            raise


# --- What generated methods return ----------------------------------------------------------------


class _Awaitable:
    """A call's result before it is awaited. Using it as if it were the result (a forgotten `await`)
    is a TypeError that says so, instead of Python's puzzling errors about coroutines."""

    _what = "this call"

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("_", "cr_", "gi_")):  # Python's and asyncio's own probes
            raise AttributeError(name)
        raise TypeError(
            f"{self._what} returns an awaitable, not its result: write `await client.{self._what}(...)` "
            f"(`.{name}` is on what it gives)"
        )


class _Deferred(_Awaitable, Generic[T]):
    """A call made when it is awaited (`run` makes it)."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, T]], what: str) -> None:
        self._run = run
        self._what = what

    def __await__(self) -> Generator[Any, None, T]:
        return self._run().__await__()


class Pending(_Deferred[T], Coroutine[Any, Any, T]):
    """A unary or client-streaming call: `await` it, or hand it to `asyncio.create_task` (it is a
    coroutine; the call starts when it is first awaited or run, never otherwise)."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, T]], what: str) -> None:
        super().__init__(run, what)
        self._coroutine: Coroutine[Any, Any, T] | None = None

    def _started(self) -> Coroutine[Any, Any, T]:
        if self._coroutine is None:
            self._coroutine = coroutine = self._run()
            # A task drives this object from now on: its later steps go straight to the coroutine.
            self.send = coroutine.send  # type: ignore[method-assign,assignment]
            self.throw = coroutine.throw  # type: ignore[method-assign,assignment]
        return self._coroutine

    def __await__(self) -> Generator[Any, None, T]:
        return self._started().__await__()

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._started().throw(typ)
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()


S = TypeVar("S", bound=_View)


class PendingStream(_Deferred[S]):
    """A stream to be opened: `stream = await ...`, or `async with ... as stream:` (closed at the end).
    Not a coroutine: a stream has `send` and `close` of its own, and a forgotten `await` must say so."""

    _stream: S | None = None

    async def __aenter__(self) -> S:
        self._stream = await self._run()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class ServerStreamCall(_Awaitable, Generic[Resp]):
    """`await` it for a `ServerStream`, `async with` it (closed at the end), or `async for` over it."""

    def __init__(self, open_stream: Callable[[], Awaitable[ServerStream[Resp]]], what: str = "this call") -> None:
        self._open = open_stream
        self._what = what
        self._stream: ServerStream[Resp] | None = None

    def __await__(self) -> Generator[Any, None, ServerStream[Resp]]:
        return self._open().__await__()

    async def __aenter__(self) -> ServerStream[Resp]:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()

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

    async def __aenter__(self) -> DownloadStream[Resp]:
        return await super().__aenter__()  # type: ignore[return-value]


class BidiStreamCall(_Awaitable, Generic[Req, Resp]):
    """`await` it for a `BidiStream`, `async with` it (closed at the end), or `async for` over the
    responses to the given requests."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[BidiStream[Req, Resp]]],
        requests: Iterable[Req] | AsyncIterable[Req] | None,
        what: str = "this call",
    ) -> None:
        self._open = open_stream
        self._requests = requests
        self._what = what
        self._stream: BidiStream[Req, Resp] | None = None

    def __await__(self) -> Generator[Any, None, BidiStream[Req, Resp]]:
        return self._open().__await__()

    async def __aenter__(self) -> BidiStream[Req, Resp]:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()

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
        interceptors: Sequence[Interceptor] = (),
        jetstream_domain: str | None = None,
        jetstream_prefix: str | None = None,
        max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._nats_nc = nc
        self._nats_retry = retry  # unary calls refused (and idempotent ones failed) are retried by it
        self._nats_named: dict[str, tuple[str, str]] = {}  # by endpoint: full name and subject
        self._nats_chain = Chain.of(interceptors)  # run around every call, in the order given
        self._nats_transport = transport_of(nc)
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

    async def _nats_unary(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        *,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None = None,
    ) -> Any:
        """A unary call: under the client's `RetryPolicy` when it has one."""
        if self._nats_retry is not None:
            return await self._nats_unary_retried(py_name, request, timeout, headers, response_headers, idempotent)
        return await self._nats_unary_once(py_name, request, timeout, headers, response_headers)

    async def _nats_unary_once(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
    ) -> Any:
        method = self._nats_method(py_name)
        if self._nats_chain is not None:
            return await self._nats_unary_intercepted(method, request, timeout, headers, response_headers)
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
        try:  # as `_request`, one coroutine less on the hot path
            msg = await nc.request(subject, body, timeout=timeout, headers=out_headers or None)
        except nats.errors.Error as error:
            raise _request_failed(error, subject, name) from error
        return _unary_response(msg, method, codec, name, response_headers)

    def _nats_names(self, method: MethodSpec[Any, Any]) -> tuple[str, str]:
        """The method's full name and subject (made once per method and client)."""
        names = self._nats_named.get(method.endpoint)
        if names is None:
            names = self._nats_named[method.endpoint] = (
                self._nats_service.full_name(method),
                f"{self._nats_subject_prefix}.{method.endpoint}",
            )
        return names

    async def _nats_unary_retried(
        self,
        py_name: str | MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
        idempotent: bool | None,
    ) -> Any:
        """A unary call under the client's `RetryPolicy`: tried again while the policy allows, each
        try within what is left of the call's deadline."""
        policy = self._nats_retry
        assert policy is not None
        method = self._nats_method(py_name)
        if idempotent is None:
            idempotent = method.idempotent
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
                if retry >= policy.attempts or not policy.retries(error, idempotent):
                    raise
                delay = policy.delay(retry, error.retry_after)
                if give_up is not None and loop.time() + delay >= give_up:
                    raise
            await asyncio.sleep(delay)

    async def _nats_unary_intercepted(
        self,
        method: MethodSpec[Any, Any],
        request: betterproto.Message,
        timeout: float | None,
        headers: Mapping[str, str] | None,
        response_headers: dict[str, str] | None,
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
            msg = await _request(call.nc, call.subject, body, out_headers, remaining, call.name)
            received = (1, len(msg.data))
            response = _unary_response(msg, method, call.codec, call.name, response_headers)
            assert call.chain is not None and call.info is not None
            return call.chain.message(call.info, Direction.RECEIVED, response)
        except BaseException as error:
            failure = error
            raise
        finally:
            if call.info is not None and call.chain is not None:
                await call.chain.end(call.info, outcome_of(call.info, failure, sent, received))

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
            await call.open_server_stream(request, headers)
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
        ack_headers = await call.open_handshake(headers)
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
            await call.open_handshake(headers)
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

