"""The server's side of one call, one class per RPC shape, each running in its own task.

A responder opens the call (decode the request or do the handshake), runs the user's handler with
`current_call()` set and the call's deadline applied, then finishes the call on the wire: the response,
the end marker or the error, wherever this shape expects it.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Generic, Mapping, Protocol, TypeVar

import betterproto
from nats.aio.msg import Msg

from .chunks import BlobReceiving, ChunkCodec, ChunkReceiver, split
from .codec import Codec
from .context import CallContext, set_current_call
from .discovery import EndpointRecord
from .errors import ErrorCode, RpcError
from .flow import AckPolicy, FlowWindow
from .interceptors import CallInfo, Chain, Direction, Side, outcome_of
from .logs import RateLimitedLog
from .negotiation import Window, confirmation, request_deadline, server_terms
from .persistence import BlobCopy, Persistence, StoreKeys
from .mux import let_go
from .peers import PeerLiveness
from .protocol import (
    REPLY_TO,
    STREAM_INBOX,
    caller_headers,
    check_size,
    error_headers,
    is_no_responders,
    RESPONSE_PROTOCOL_HEADERS,
    quote,
    user_headers,
)
from .session import StreamSession
from .spec import Cardinality, MethodSpec
from .streams import V1_BUFFER_BYTES, V1_BUFFER_MESSAGES, Deadline, FirstHop, Inbox, StreamReader, StreamWriter
from .subjects import InboxPolicy, first_token_prefix, is_literal
from .transport import Transport, publish

log = logging.getLogger("betterproto_nats.server")

M = TypeVar("M", bound=betterproto.Message)

# A v1 client-streaming client (the Go one) subscribes to its reply inbox only after sending its end
# marker, so the final answer is held until that marker arrives: at most this long without a deadline.
V1_HOLD_LIMIT = 30.0
# Old-style server streams (no Reply-To): how long the first message is retried while the client has
# not yet subscribed to the inbox we named in the ack (it subscribes only once the ack arrived).
OLD_STYLE_SUBSCRIBE_WAIT = 2.0


DEFAULT_STREAM_IDLE_TIMEOUT = 60.0
# Codes of calls that ended because of what the peer sent (logged as junk at WARNING, rate-limited).
_PEER_FAULTS = frozenset({ErrorCode.INVALID_ARGUMENT, ErrorCode.DATA_LOSS, ErrorCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class ServingPolicy:
    """What a server enforces on every call: where it may publish, how long a stream may be idle,
    how much a peer may make it buffer, and whether unexpected errors' texts reach callers."""

    inboxes: InboxPolicy = field(default_factory=InboxPolicy)
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    buffer_messages: int = V1_BUFFER_MESSAGES
    buffer_bytes: int = V1_BUFFER_BYTES
    expose_errors: bool = False
    interceptors: Chain | None = None
    persistence: Persistence | None = None  # where persisted methods' responses go (None: not stored)

    @functools.cached_property
    def idle_message(self) -> str:
        """Why a stream whose client went quiet for `stream_idle_timeout` ends (one text for all)."""
        return f"nothing arrived from the client for {self.stream_idle_timeout:g} s"

    def reply_to_problem(self, msg: Msg) -> str | None:
        """Why the request's `Reply-To` may not be published to, or None: `_INBOX.`, the first token
        of the request's own reply subject, or a configured prefix."""
        return self.inboxes.check((msg.headers or {}).get(REPLY_TO, ""), also=first_token_prefix(msg.reply))


peer_faults = RateLimitedLog(log)  # junk from peers, rate-limited


class ServerState(enum.Enum):
    """Where a served call is; `Responder.move` allows only the transitions in `_NEXT`."""

    __hash__ = object.__hash__  # members are singletons: identity, not Enum's hash of the name (per call)

    OPENING = "opening"  # reading the request, or the handshake
    SERVING = "serving"  # the handler runs
    FINISHING = "finishing"  # the outcome goes on the wire
    CLOSED = "closed"  # ended without an error
    FAILED = "failed"  # ended with an error (ours, the handler's, or the client's doing)


_NEXT: dict[ServerState, frozenset[ServerState]] = {
    ServerState.OPENING: frozenset({ServerState.SERVING, ServerState.FINISHING}),
    ServerState.SERVING: frozenset({ServerState.FINISHING}),
    ServerState.FINISHING: frozenset({ServerState.CLOSED, ServerState.FAILED}),
    ServerState.CLOSED: frozenset(),
    ServerState.FAILED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A call was asked to move where its state machine does not go: a bug in the runtime."""


@dataclass(frozen=True)
class _Interruption:
    """Why a call must end before its handler is done, and whether the client is to be told."""

    error: RpcError
    tell_client: bool


class _NoAnswer(Exception):
    """The request cannot be answered at all (no reply subject): drop it."""


class RequestStream(Generic[M]):
    """What a client-streaming or bidi handler iterates: the client's messages, in order, once."""

    def __init__(self, reader: StreamReader[M], intercept: Callable[[M], M] | None = None) -> None:
        self._reader = reader
        self._intercept = intercept

    def __aiter__(self) -> AsyncIterator[M]:
        return self

    async def __anext__(self) -> M:
        if self._intercept is None:  # the rest of a batch without more coroutines
            message = self._reader.take_nowait()
            if message is not None:
                return message
        return await self.recv()

    async def recv(self) -> M:
        """The next message; StopAsyncIteration when the client has ended its side."""
        message = await self._reader.recv()
        return message if self._intercept is None else self._intercept(message)


class UploadRequests(RequestStream[M], BlobReceiving):
    """A chunked upload's requests: the messages, or the blob as bytes, a file or pieces."""

    def __init__(self, reader: StreamReader[M], chunks: ChunkCodec) -> None:
        super().__init__(reader)
        self._blob = ChunkReceiver(reader, chunks, _nothing)  # the responder releases the stream


async def _nothing() -> None:
    pass


class Responder:
    """Common lifecycle of a served call; subclasses say how to open, serve and finish their shape.

    Slots, not a `__dict__`: thousands of streams each hold one for as long as they last."""

    __slots__ = (
        "nc", "impl", "method", "name", "codec", "msg", "policy", "state", "v2", "heartbeat", "deadline", "session",
        "peer_subject", "peers", "task", "interruption", "stopping", "inboxes", "info", "exception", "watched",
        "context", "writer", "answered", "reply", "request", "response", "blob",
    )

    def __init__(
        self, nc: Transport, impl: Any, method: MethodSpec[Any, Any], name: str, codec: Codec, msg: Msg, policy: ServingPolicy
    ) -> None:
        self.nc = nc
        self.impl = impl
        self.method = method
        self.name = name
        self.codec = codec
        self.msg = msg
        self.policy = policy
        self.state = ServerState.OPENING
        self.v2 = False  # negotiated in `run`, inside the call's error handling
        self.heartbeat = 0.0
        self.deadline = Deadline.after(method.timeout)
        self.session: StreamSession | None = None
        self.peer_subject: str | None = None  # the client's liveness subject, checked (shared heartbeats)
        self.peers: PeerLiveness | None = None  # our connection's, when heartbeats are shared
        self.task: asyncio.Task[Any] | None = None
        self.interruption: _Interruption | None = None
        self.stopping = False  # the service is stopping: answer now, hold nothing back
        self.inboxes: list[Inbox] = []  # what this call subscribed to (released at its end)
        self.info: CallInfo | None = None  # what interceptors see, when there are any
        self.exception: BaseException | None = None  # a handler's unexpected exception
        self.watched: list[str] = []  # subjects whose permission errors end this call
        self.writer: StreamWriter | None = None  # the stream to the client's `R`, for shapes that send one
        self.answered = (0, 0)  # a single final answer sent: (1, its size)
        # The request's NATS reply subject, or "" when it has none we may publish to.
        self.reply = msg.reply if msg.reply and is_literal(msg.reply) else ""
        self.request: Any = None  # the decoded request (unary and server streams)
        self.response: Any = None  # the handler's single response (unary and client streams)
        self.blob: BlobCopy | None = None  # a chunked download's blob on its way to the object store
        self.context = CallContext(
            method=name,
            subject=msg.subject,
            headers=caller_headers(msg.headers),
            deadline=None,
        )

    def move(self, state: ServerState) -> None:
        if state not in _NEXT[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state

    def negotiate(self) -> None:
        """The terms of the client's opening headers (v2, heartbeat, deadline); a malformed
        deadline is INVALID_ARGUMENT."""
        streaming = self.method.cardinality is not Cardinality.UNARY
        try:
            terms = server_terms(self.msg.headers, streaming, self.policy.stream_idle_timeout)
        except RpcError as malformed:
            raise self.error(malformed.code, malformed.message) from None
        self.v2, self.heartbeat = terms.v2, terms.heartbeat
        if terms.peer is not None and self.policy.inboxes.check(terms.peer, also=first_token_prefix(self.msg.reply)) is None:
            self.peer_subject = terms.peer  # else: per-stream heartbeats, as with a client that names none
        if terms.deadline_epoch is not None:
            self.deadline = Deadline.at_epoch(terms.deadline_epoch).earliest(self.deadline)
        if self.deadline is not None:
            self.context.deadline = self.deadline.epoch

    def peer_inbox(self) -> str:
        """The client's `Reply-To`, checked before anything is published there (INVALID_ARGUMENT)."""
        reply_to = (self.msg.headers or {}).get(REPLY_TO, "")
        why = self.policy.reply_to_problem(self.msg)
        if why is not None:
            raise self.error(ErrorCode.INVALID_ARGUMENT, f"{REPLY_TO} {quote(reply_to)} is {why}")
        self.watch_permissions(reply_to)
        return reply_to

    async def open_inbox(self) -> Inbox:
        """An inbox of this call's, bounded and idle-checked per the policy, released at its end."""
        inbox = Inbox(self.nc, self.name, on_overflow=self.overflowed)
        inbox.limit(self.policy.buffer_messages, self.policy.buffer_bytes)
        inbox.end_when_idle(self.policy.stream_idle_timeout, ErrorCode.DEADLINE_EXCEEDED, self.policy.idle_message)
        self.inboxes.append(inbox)
        self.watch_permissions(inbox.subject)
        return await inbox.open()

    def watch_permissions(self, subject: str) -> None:
        """A permission violation on `subject` (our publish or subscription) ends the call at once."""
        self.nc.watch_permissions(subject, self.denied)
        self.watched.append(subject)

    def denied(self, text: str) -> None:
        self.interrupt(self.error(ErrorCode.PERMISSION_DENIED, text), tell_client=True)

    def overflowed(self, error: RpcError) -> None:
        """The client sent more than its window or our buffers allow."""
        self.interrupt(error, tell_client=True)

    def interrupt(self, error: RpcError, tell_client: bool) -> None:
        """End the call now with `error`: the handler is cancelled. The client is told when
        `tell_client` (it overran its window, a permission was denied), not when it cancelled or is
        gone. The first reason counts."""
        if self.interruption is not None:
            return
        self.interruption = _Interruption(error, tell_client)
        if not tell_client and self.session is not None:
            self.session.close()  # send nothing more
        if self.state is ServerState.SERVING and self.task is not None:
            self.task.cancel()

    def end_idle(self, quiet: float) -> None:
        """The service is stopping: streams that wait for a client which sent nothing for `quiet`
        seconds end now instead of holding `stop()` for its grace period."""
        for inbox in self.inboxes:
            inbox.end_when_quiet(quiet, ErrorCode.UNAVAILABLE, "the service is stopping")

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.name)

    @property
    def handler(self) -> Any:
        return getattr(self.impl, self.method.py_name)

    async def start_session(self, peer_inbox: str, inbox: Inbox, sends: bool) -> StreamSession:
        """v2 control for this call: the client's acks, heartbeats and cancel arrive on `inbox`;
        when we `sends` a stream, the client's acks open the window it granted. Heartbeats are shared
        with the client's connection when it named its liveness subject."""
        window = FlowWindow(Window.granted(self.msg.headers)) if sends else None
        session = self.session = StreamSession(self.nc, peer_inbox, inbox.subject, self.heartbeat, self, window)
        inbox.watcher = self.watch
        if self.peer_subject is not None:
            self.peers = await PeerLiveness.acquire(self.nc)
            session.share(self.peers, self.peer_subject)
            inbox.peer = session.group  # the client's heartbeats keep an idle stream alive
        return session

    def confirmation(self, inbox: Inbox, window: Window | None) -> dict[str, str]:
        """Our v2 confirmation (the open message or the handshake ack)."""
        return confirmation(inbox.subject, self.heartbeat, window, None if self.peers is None else self.peers.subject)

    # --- How the session ends the call (`CallEnds`) ------------------------------------------------

    def peer_unreachable(self, why: str, tell: bool) -> None:
        """The client is gone, or our connection was interrupted; with `tell` it is told at once (no
        first-hop probing): it may only have gone silent (shared heartbeats), or still be there."""
        if tell and self.writer is not None:
            self.writer.first_hop = None
        self.interrupt(self.error(ErrorCode.UNAVAILABLE, f"the client is unreachable: {why}"), tell_client=tell)

    def peer_cancelled(self, reason: str, code: str) -> None:
        self.interrupt(self.error(code, reason or "cancelled"), tell_client=False)

    def messages_lost(self, why: str) -> None:
        self.interrupt(self.error(ErrorCode.DATA_LOSS, why), tell_client=True)

    def peer_released(self, missing: str | None) -> None:
        """The client let go of the call but its cancel did not arrive (or what it sent did not)."""
        if missing is not None:
            error = self.error(ErrorCode.DATA_LOSS, f"the client ended the call, but {missing} did not arrive")
        else:
            error = self.error(ErrorCode.CANCELLED, "the client ended the call (its cancel did not arrive)")
        self.interrupt(error, tell_client=False)

    def watch(self, msg: Msg) -> bool:
        """Our inbox's watcher: the first hop's probe statuses, then v2 control (or v1's gone client)."""
        writer = self.writer
        if writer is not None and writer.first_hop is not None and writer.first_hop.saw(msg):
            return True
        if self.session is not None:
            return self.session.watch(msg)
        return self.watch_v1(msg)

    def watch_control(self, msg: Msg) -> bool:
        """A control-only inbox's watcher: whatever arrives is not data."""
        self.watch(msg)
        return True

    def watch_v1(self, msg: Msg) -> bool:
        """A v1 client's `S`: a no-responders answer to our ack means the client is gone."""
        if is_no_responders(msg.headers):
            gone = self.error(ErrorCode.UNAVAILABLE, "the client is gone (nobody received the handshake ack)")
            self.interrupt(gone, tell_client=False)
            return True
        return False

    def new_writer(self, subject: str, own_inbox: str | None) -> StreamWriter:
        """Our stream to the client's `R`: within the client's window in v2; the handler's response
        headers go with its first message; when `R` is not the request's own reply subject (which
        NATS routes back in any topology) and we have an inbox for the answer, its first message
        makes sure `R` is known (`FirstHop`)."""
        session = self.session
        if session is not None and session.window is not None:
            writer = StreamWriter(self.nc, subject, self.codec, self.name, session.window, session.on_sent)
        else:
            writer = StreamWriter(self.nc, subject, self.codec, self.name)
        writer.first_headers = self.context.response_headers
        if session is not None:
            session.sending = writer
        if own_inbox is not None and subject != self.msg.reply:
            writer.first_hop = FirstHop(self.nc, own_inbox, self.name)
        return writer

    async def run(self) -> str | None:
        """Serve the call to its end; returns the error code it ended with, if any (for stats)."""
        error: RpcError | None = None
        self.task = asyncio.current_task()
        try:
            try:
                self.negotiate()
                await self.open()
            except _NoAnswer:
                return None
            self.msg.headers = None  # read: a long stream need not keep them (caller headers were copied)
            set_current_call(self.context)
            chain = self.policy.interceptors
            if chain is not None:
                self.info = self.call_info()
                await chain.start(self.info)  # may reject the call: the handler never runs
            if self.interruption is None:
                self.move(ServerState.SERVING)
                if self.deadline is None:
                    await self.serve()
                else:
                    async with asyncio.timeout_at(self.deadline.at):
                        await self.serve()
        except RpcError as raised:
            error = raised
        except TimeoutError as raised:
            if self.deadline is not None and self.deadline.remaining() <= 0:
                error = self.error(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
            else:
                error = self.internal(raised)
        except asyncio.CancelledError:
            if self.task is not None:
                self.task.uncancel()  # handled here: the call ends, the task does not
            if self.interruption is None:
                error = self.error(ErrorCode.UNAVAILABLE, "the service stopped before the call finished")
                self.stopping = True
        except Exception as raised:
            error = self.internal(raised)
        interruption = self.interruption
        if interruption is not None:
            error = interruption.error
        if error is not None and error.code in _PEER_FAULTS:
            peer_faults.warning("call to %s on %s ended with %s", self.name, self.msg.subject, error)
        self.move(ServerState.FINISHING)
        if self.stopping and self.writer is not None:
            self.writer.first_hop = None  # the service is stopping: say how the call ended once, at once
        try:
            if interruption is None or interruption.tell_client:
                await self.finish(error)
        except Exception:
            log.exception("could not finish %s", self.name)
        finally:
            await self.release()
        self.move(ServerState.FAILED if error is not None else ServerState.CLOSED)
        if self.info is not None and self.policy.interceptors is not None:
            outcome = outcome_of(self.info, error, self.traffic(sent=True), self.traffic(sent=False), self.exception)
            await self.policy.interceptors.end(self.info, outcome)
        return None if error is None else error.code

    def call_info(self) -> CallInfo:
        spec = self.method
        service = self.name.rsplit("/", 1)[0]
        return CallInfo(Side.SERVER, service, spec.name, spec.cardinality, self.msg.subject, self.context.headers, spec)

    def intercept(self, direction: Direction, message: Any) -> Any:
        """A message through the interceptors (when there are any)."""
        chain = self.policy.interceptors
        if chain is None or self.info is None:
            return message
        return chain.message(self.info, direction, message)

    def traffic(self, sent: bool) -> tuple[int, int]:
        """(messages, bytes) this call sent or received (the shapes keep them in different places)."""
        if sent:
            writer = self.writer
            return (writer.sent, writer.bytes_sent) if writer is not None else self.answered
        reader: StreamReader[Any] | None = getattr(self, "reader", None)
        if reader is not None:
            return (reader.received, reader.bytes_received)
        return (1, len(self.msg.data))

    async def release(self) -> None:
        """The one place a call lets go of what it holds: session, permission watches, inboxes."""
        if self.session is not None:  # released: the client was sent how the call ended
            self.session.close(released=self.interruption is None or self.interruption.tell_client)
        for subject in self.watched:
            self.nc.forget_permissions(subject)
        steps: list[Callable[[], Awaitable[None]]] = [inbox.close for inbox in self.inboxes]
        peers, self.peers = self.peers, None
        if peers is not None:
            steps.append(peers.release)
        await let_go(steps)

    def internal(self, raised: BaseException) -> RpcError:
        """A handler's unexpected exception: logged with its traceback here; the caller gets
        INTERNAL with a generic text unless the service exposes errors (for development)."""
        log.error("handler %s failed", self.name, exc_info=raised)
        self.exception = raised
        text = str(raised) or type(raised).__name__
        return self.error(ErrorCode.INTERNAL, text if self.policy.expose_errors else "internal error")

    async def open(self) -> None:
        """Read the request or do the handshake; raise RpcError to answer with an error."""

    async def serve(self) -> None:
        """Run the handler."""

    async def finish(self, error: RpcError | None) -> None:
        """Put the outcome on the wire."""

    async def respond_error(self, subject: str, error: RpcError) -> None:
        headers = error_headers(error.code, error.message)  # capped: always fits
        await self.nc.publish(subject, b"", headers=headers)

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """No stored answers (persisted methods are unary: `UnaryCall.persist`)."""
        return None

    async def answer(self, subject: str, response: Any, error: RpcError | None) -> None:
        """A single final answer (client streaming): see `answer`."""
        await answer(self, subject, response, error)


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
            try:
                response_headers = call.context.response_headers
                # checked again: the dict is the handler's (blob size aside, ours)
                headers = user_headers(response_headers, allow=RESPONSE_PROTOCOL_HEADERS) if response_headers else None
                body = call.codec.encode(response)
                check_size(len(body), headers, call.nc.max_payload, call.name)
                stored = call.persist(body)
                if stored is not None:
                    await stored
            except RpcError as too_big:  # or a required write that failed
                error = too_big
            except Exception as unencodable:  # e.g. a field holding a value of the wrong type
                error = call.internal(unencodable)
            else:
                await publish(call.nc, subject, body, headers or None)
                call.answered = (1, len(body))
                return
    headers = error_headers(error.code, error.message)  # capped: always fits
    await call.nc.publish(subject, b"", headers=headers)


@dataclass(frozen=True, slots=True)
class ServedMethod:
    """What every call of one endpoint shares (built once when serving starts)."""

    nc: Transport
    method: MethodSpec[Any, Any]
    name: str  # "package.Service/Method"
    handler: Callable[..., Any]
    codec: Codec
    policy: ServingPolicy
    task_name: str
    record: EndpointRecord  # what `$SRV` STATS report: each call's time and error code
    done: Callable[[asyncio.Task[None]], None]  # a call's task ends (its endpoint lets go of it)


class UnaryCall:
    """The server's side of one unary call, run in a task of its own: the request decoded, the
    handler run with `current_call()` set and the call's deadline applied, the response (or the
    error) published to the request's reply subject. One small object per call (no inbox, session
    or stream state); states as a `Responder`'s: OPENING -> SERVING -> FINISHING -> CLOSED | FAILED."""

    __slots__ = ("served", "msg", "state", "context", "info", "keys", "deadline", "exception", "answered", "task", "expired")

    def __init__(self, served: ServedMethod, msg: Msg) -> None:
        self.served = served
        self.msg = msg
        self.state = ServerState.OPENING
        self.info: CallInfo | None = None  # what interceptors see, when there are any
        self.keys: StoreKeys | None = None  # a persisted method's storage keys
        self.deadline: Deadline | None = None
        self.exception: BaseException | None = None  # a handler's unexpected exception
        self.answered = (0, 0)
        self.task: asyncio.Task[None] | None = None  # what runs it (the endpoint sets it)
        self.expired = False  # the deadline passed while the handler ran: it was cancelled

    # What `answer` needs (and interceptors), read from what the endpoint's calls share.
    nc = property(lambda self: self.served.nc)
    method = property(lambda self: self.served.method)
    name = property(lambda self: self.served.name)
    codec = property(lambda self: self.served.codec)

    def move(self, state: ServerState) -> None:
        if state not in _NEXT[self.state]:
            raise InvalidTransition(f"{self.served.name}: {self.state.value} -> {state.value}")
        self.state = state

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.served.name)

    def intercept(self, direction: Direction, message: Any) -> Any:
        chain = self.served.policy.interceptors
        return message if chain is None or self.info is None else chain.message(self.info, direction, message)

    def internal(self, raised: BaseException) -> RpcError:
        """A handler's unexpected exception: logged here with its traceback; the caller gets INTERNAL
        with a generic text unless the service exposes errors."""
        log.error("handler %s failed", self.served.name, exc_info=raised)
        self.exception = raised
        text = str(raised) or type(raised).__name__
        return self.error(ErrorCode.INTERNAL, text if self.served.policy.expose_errors else "internal error")

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """Store the encoded answer before it is sent, where the method's options say."""
        persistence = self.served.policy.persistence
        if self.keys is None or persistence is None:
            return None
        return persistence.store(self.served.method, self.keys, body, self.deadline, self.served.name)

    async def run(self) -> None:
        """Serve the call to its end, count it in the endpoint's STATS and let the endpoint know (at
        the end of its task, without a done-callback per call)."""
        started = time.perf_counter_ns()
        served, msg = self.served, self.msg
        reply = msg.reply
        if not reply or not is_literal(reply):
            served.record.record(time.perf_counter_ns() - started, None)
            self.done()
            return  # nobody to answer: dropped
        policy = served.policy
        method = served.method
        error: RpcError | None = None
        response: Any = None
        try:
            deadline = self.deadline = _unary_deadline(method, msg.headers)
            request = served.codec.decode(method.request, msg.data, served.name)
            context = self.context = CallContext(
                served.name, msg.subject, caller_headers(msg.headers), None if deadline is None else deadline.epoch
            )
            set_current_call(context)
            chain = policy.interceptors
            if chain is not None:
                self.info = info = CallInfo(
                    Side.SERVER, served.name.rsplit("/", 1)[0], method.name, method.cardinality, msg.subject, context.headers, method
                )
                await chain.start(info)  # may reject the call: the handler never runs
                request = chain.message(info, Direction.RECEIVED, request)
            persistence = policy.persistence
            if persistence is not None and method.persists:  # a request without a valid key fails here
                self.keys = persistence.keys(method, request, served.name)
            self.move(ServerState.SERVING)
            if deadline is None:
                response = await served.handler(request)
            else:  # a timer that cancels the task (cheaper than asyncio.timeout's context manager per call)
                expiry = asyncio.get_running_loop().call_at(deadline.at, self._expire)
                try:
                    response = await served.handler(request)
                finally:
                    expiry.cancel()
        except RpcError as raised:
            error = raised
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled here: the call ends, the task does not
            if self.expired:
                error = self.error(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
            else:
                error = self.error(ErrorCode.UNAVAILABLE, "the service stopped before the call finished")
        except Exception as raised:
            error = self.internal(raised)
        if error is not None and error.code in _PEER_FAULTS:
            peer_faults.warning("call to %s on %s ended with %s", served.name, msg.subject, error)
        self.move(ServerState.FINISHING)
        try:
            await answer(self, reply, response, error)  # (an error before `context` was set needs none)
        except Exception:
            log.exception("could not finish %s", served.name)
        self.move(ServerState.FAILED if error is not None else ServerState.CLOSED)
        try:
            if self.info is not None and policy.interceptors is not None:
                outcome = outcome_of(self.info, error, self.answered, (1, len(msg.data)), self.exception)
                await policy.interceptors.end(self.info, outcome)
        finally:
            served.record.record(time.perf_counter_ns() - started, None if error is None else error.code)
            self.done()

    def _expire(self) -> None:
        """The call's deadline passed while its handler runs: it is cancelled (DEADLINE_EXCEEDED)."""
        if self.task is not None and not self.task.done():
            self.expired = True
            self.task.cancel()

    def done(self) -> None:
        if self.task is not None:
            self.served.done(self.task)


def _unary_deadline(method: MethodSpec[Any, Any], headers: Mapping[str, str] | None) -> Deadline | None:
    """The earlier of the method's `timeout` option and the caller's `Nats-Deadline` (malformed:
    INVALID_ARGUMENT)."""
    if not headers and method.timeout is None:
        return None
    deadline = Deadline.after(method.timeout)
    epoch = request_deadline(headers)
    return deadline if epoch is None else Deadline.at_epoch(epoch).earliest(deadline)


class _SendsStream(Responder):
    """A shape whose server direction is a stream to the client's inbox `R`."""

    __slots__ = ()

    async def send_all(self, responses: Any) -> None:
        if not hasattr(responses, "__aiter__"):
            if asyncio.iscoroutine(responses):
                responses.close()
            raise self.error(ErrorCode.INTERNAL, f"{self.method.py_name} must be an async generator (use yield)")
        assert self.writer is not None
        chunks = None
        if self.method.chunks is not None:
            chunks = ChunkCodec(self.method.response, self.method.chunks, self.codec)
            chunks.check_fits(chunks.chunk_size, self.nc.max_payload, self.name)
        try:
            async for response in responses:
                if chunks is not None:
                    if isinstance(response, (bytes, bytearray, memoryview)):
                        for piece in split(response, chunks.chunk_size):  # raw bytes of any size
                            if self.blob is not None:
                                self.blob.feed(piece)
                            await self.writer.send_body(chunks.encode(piece))
                        continue
                    if self.blob is not None and isinstance(response, self.method.response):
                        self.blob.feed(getattr(response, chunks.field))
                    body = chunks.encode_message(response)
                    if body is not None:  # a chunk message, on the fast path too
                        await self.writer.send_body(body)
                        continue
                if not isinstance(response, self.method.response):
                    raise self.error(
                        ErrorCode.INTERNAL,
                        f"handler yielded {type(response).__name__}, not {self.method.response.__name__}",
                    )
                if self.info is not None:
                    response = self.intercept(Direction.SENT, response)
                body = self.codec.encode(response)
                if not self.writer.queue_nowait(body):
                    await self.writer.send_body(body)
                elif self.writer.turn_due:
                    await self.writer.take_turn()
        except asyncio.CancelledError:
            # The handler is suspended at a `yield` while we send: it must see the cancellation too.
            if hasattr(responses, "athrow"):
                try:
                    await responses.athrow(asyncio.CancelledError())
                except BaseException:
                    pass
            raise
        finally:
            if hasattr(responses, "aclose"):
                await responses.aclose()  # run the handler's cleanup now, not at garbage collection

    async def finish(self, error: RpcError | None) -> None:
        if self.blob is not None:
            self.blob.finish(error is None)
        if self.writer is not None:
            await self.writer.end(error)
        elif error is not None and self.reply:
            await self.respond_error(self.reply, error)

    async def release(self) -> None:
        if self.blob is not None:
            self.blob.finish(False)  # a call that never finished (cancelled) leaves no object behind
        await super().release()


class ServerStreamResponder(_SendsStream):
    """Request in; data to `R` numbered from 1, then the end marker (with the error pair on failure)."""

    __slots__ = ("old_style",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.old_style = False

    async def open(self) -> None:
        if REPLY_TO not in (self.msg.headers or {}):
            if not self.reply:
                raise _NoAnswer
            # Old style: we name R in an ack on the reply subject; the client subscribes to it only
            # then, so the first message waits until R is known (`FirstHop`, answers on `probe`).
            reply_to = self.nc.new_inbox()
            self.old_style = True
            # Undecodable: answer on the reply subject, since nobody knows R yet.
            self.request = self.codec.decode(self.method.request, self.msg.data, self.name)
        else:
            reply_to = self.peer_inbox()  # invalid: refused on the reply subject, nothing sent to it
        own_inbox: Inbox | None = None
        if self.v2:
            own_inbox = await self.open_inbox()
            await self.start_session(reply_to, own_inbox, sends=True)
        elif self.old_style:
            own_inbox = await self.open_inbox()
        if own_inbox is not None:
            own_inbox.watcher = self.watch_control  # only control and statuses belong here
        self.writer = self.new_writer(reply_to, None if own_inbox is None else own_inbox.subject)
        if self.old_style and self.writer.first_hop is not None:
            self.writer.first_hop.wait = OLD_STYLE_SUBSCRIBE_WAIT
        if not self.old_style:  # undecodable: the error ends the stream on R
            self.request = self.codec.decode(self.method.request, self.msg.data, self.name)
        else:
            await self.nc.publish(self.reply, b"", headers={STREAM_INBOX: reply_to})
        if self.session is not None and own_inbox is not None:
            # Confirm v2 with an empty open message naming our control inbox, before any data.
            await self.nc.publish(reply_to, b"", headers=self.confirmation(own_inbox, None))
            self.session.start()

    async def serve(self) -> None:
        request = self.intercept(Direction.RECEIVED, self.request) if self.info is not None else self.request
        persistence = self.policy.persistence
        if persistence is not None and self.method.persists:  # a chunked download kept in the object store
            self.blob = persistence.copy_blob(self.method, persistence.keys(self.method, request, self.name), self.name)
        await self.send_all(self.handler(request))


class _Handshaking(Responder):
    """Client-streaming and bidi opening: subscribe `S`, ack with `Nats-Stream-Inbox: S`."""

    __slots__ = ("inbox", "reader", "reply_to")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.inbox: Inbox | None = None
        self.reader: StreamReader[Any]
        self.reply_to = ""

    async def open(self) -> None:
        if not self.reply:
            raise _NoAnswer
        if REPLY_TO not in (self.msg.headers or {}):
            raise self.error(ErrorCode.INVALID_ARGUMENT, f"streaming request without {REPLY_TO} header")
        self.reply_to = reply_to = self.peer_inbox()
        inbox = self.inbox = await self.open_inbox()  # subscribed before the ack names it
        self.reader = StreamReader(inbox, self.codec, self.method.request, self.name, self.deadline)
        if self.v2:
            session = await self.start_session(reply_to, inbox, sends=self.method.cardinality is Cardinality.BIDI)
            session.receiving = inbox
            window = Window.for_method(self.method.max_inflight)
            self.reader.acks = AckPolicy(window, session.send_ack)
            inbox.limit(window.messages + 2, window.max_bytes)  # + the end marker and a stray status
            ack = self.confirmation(inbox, window)
        else:
            ack = {STREAM_INBOX: inbox.subject}
            inbox.watcher = self.watch
        self.before_ack()
        # The ack names S as its reply subject: if the requester is already gone, the NATS server
        # answers S with no-responders and the call ends at once instead of idling out.
        await self.nc.publish(self.reply, b"", reply=inbox.subject, headers=ack)
        if self.session is not None:
            self.session.start()

    def before_ack(self) -> None:
        """Set up what must exist before the client learns `S`."""

    def requests(self) -> RequestStream[Any]:
        if self.method.chunks is not None:
            return UploadRequests(self.reader, ChunkCodec(self.method.request, self.method.chunks, self.codec))
        if self.info is not None:
            return RequestStream(self.reader, lambda message: self.intercept(Direction.RECEIVED, message))
        return RequestStream(self.reader)


class ClientStreamResponder(_Handshaking):
    """Messages in on `S`; one response (or error) out on `R` once the client's end marker is in."""

    __slots__ = ()

    async def serve(self) -> None:
        self.response = await self.handler(self.requests())

    async def finish(self, error: RpcError | None) -> None:
        if self.inbox is None:  # failed before the handshake: answer the request itself
            if error is not None and self.reply:
                await self.respond_error(self.reply, error)
            return
        if not self.v2 and not self.stopping:  # a v1 (Go) client listens on R only after its end marker
            await self.reader.drain_to_end(self.deadline or Deadline(V1_HOLD_LIMIT))
        await self.answer(self.reply_to, self.response, error)


class BidiResponder(_Handshaking, _SendsStream):
    """Messages in on `S` and out on `R`, each direction numbered and ended on its own."""

    __slots__ = ()

    def before_ack(self) -> None:
        assert self.inbox is not None
        self.writer = self.new_writer(self.reply_to, self.inbox.subject)

    async def serve(self) -> None:
        await self.send_all(self.handler(self.requests()))


RESPONDERS: dict[Cardinality, type[Responder]] = {
    Cardinality.SERVER_STREAM: ServerStreamResponder,
    Cardinality.CLIENT_STREAM: ClientStreamResponder,
    Cardinality.BIDI: BidiResponder,
}
