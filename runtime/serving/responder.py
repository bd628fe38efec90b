"""`Responder`: the one object that owns a served stream call: its state, what it holds and what
ends it (its moves; what ends it early, `interrupt`: the client's cancel or silence, an overrun
window, a denied permission, what its session reports; and `release`, the one place it lets go); how
it runs (the client's terms negotiated, the call opened, the handler served under the call's deadline
with `current_call()` set and the interceptors around it, the outcome put on the wire); and what the
stream shapes share (the client's `Reply-To` checked, our inboxes, bounded and idle-checked, the v2
session and its confirmation, the watchers that see what arrives on our inboxes first, our writer to
the client's `R`). Its `Shape` (`serving.shapes`) says how it opens, serves and finishes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Protocol

from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import REPLY_TO, caller_headers, is_no_responders, quote
from ..core.negotiation import Window, confirmation, server_terms
from ..core.states import SERVER_MOVES, InvalidTransition, ServerState
from ..core.subjects import first_token_prefix, is_literal
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo, Direction, Side, outcome_of
from ..features.persistence import BlobCopy
from ..health.peers import PeerLiveness
from ..net.mux import InboxMux, let_go
from ..net.transport import Transport
from ..schema.spec import Cardinality, MethodSpec
from ..streaming.deadline import Deadline
from ..streaming.first_hop import FirstHop
from ..streaming.inbox import Inbox
from ..streaming.reader import StreamReader
from ..streaming.session import StreamSession
from ..streaming.v2 import start_v2
from ..streaming.writer import StreamWriter
from .answer import answer, send_error
from .context import CallContext, set_current_call
from .policy import PEER_FAULTS, ServingPolicy, log, peer_faults


@dataclass(frozen=True)
class Interruption:
    """Why a call must end before its handler is done, and whether the client is to be told."""

    error: RpcError
    tell_client: bool


class NoAnswer(Exception):
    """The request cannot be answered at all (no reply subject): drop it."""


class Shape(Protocol):
    """What a stream shape does in a call's three steps (`serving.shapes`)."""

    async def open(self, call: Responder) -> None:
        """Read the request or do the handshake; raise RpcError to answer with an error."""

    async def serve(self, call: Responder) -> None:
        """Run the handler."""

    async def finish(self, call: Responder, error: RpcError | None) -> None:
        """Put the outcome on the wire."""


class Responder:
    """A served stream call (see the module). Slots, not a `__dict__`: thousands of streams each
    hold one for as long as they last."""

    __slots__ = (
        "nc", "impl", "method", "name", "codec", "msg", "policy", "state", "v2", "heartbeat", "deadline", "session",
        "peer_subject", "peers", "task", "interruption", "stopping", "inboxes", "info", "exception", "watched",
        "context", "writer", "answered", "reply", "request", "response", "blob", "shape", "inbox", "reader", "reply_to",
        "old_style",
    )

    def __init__(
        self,
        nc: Transport,
        impl: Any,
        method: MethodSpec[Any, Any],
        name: str,
        codec: Codec,
        msg: Msg,
        policy: ServingPolicy,
        shape: Shape,
    ) -> None:
        self.shape = shape
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
        self.interruption: Interruption | None = None
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
        self.inbox: Inbox | None = None  # our `S`, where the client's stream arrives (client streams, bidi)
        self.reader: StreamReader[Any] | None = None  # the client's stream
        self.reply_to = ""  # the client's `R`, checked (handshaking shapes)
        self.old_style = False  # a server stream without `Reply-To` (we name `R` in an ack)
        self.context = CallContext(
            method=name,
            subject=msg.subject,
            headers=caller_headers(msg.headers),
            deadline=None,
        )

    def move(self, state: ServerState) -> None:
        if state not in SERVER_MOVES[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.name)

    @property
    def handler(self) -> Any:
        return getattr(self.impl, self.method.py_name)

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
        self.interruption = Interruption(error, tell_client)
        if not tell_client and self.session is not None:
            self.session.close()  # send nothing more
        if self.state is ServerState.SERVING and self.task is not None:
            self.task.cancel()

    def end_idle(self, quiet: float) -> None:
        """The service is stopping: streams that wait for a client which sent nothing for `quiet`
        seconds end now instead of holding `stop()` for its grace period."""
        for inbox in self.inboxes:
            inbox.end_when_quiet(quiet, ErrorCode.UNAVAILABLE, "the service is stopping")

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

    async def release(self) -> None:
        """The one place a call lets go of what it holds: session, permission watches, inboxes (and
        a download's blob copy that never finished: no object is left behind)."""
        if self.blob is not None:
            self.blob.finish(False)
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

    # --- Running the call -----------------------------------------------------------------------

    def negotiate(self) -> None:
        """The terms of the client's opening headers (v2, heartbeat, deadline); a malformed
        deadline is INVALID_ARGUMENT."""
        streaming = self.method.cardinality is not Cardinality.UNARY
        try:
            terms = server_terms(self.msg.headers, streaming, self.policy.stream_idle_timeout)
        except RpcError as malformed:
            raise self.error(malformed.code, malformed.message) from None
        self.v2, self.heartbeat = terms.v2, terms.heartbeat
        peer = terms.peer
        if peer is not None and self.policy.inboxes.check(peer, also=first_token_prefix(self.msg.reply)) is None and not InboxMux.owns(self.nc, peer):
            self.peer_subject = peer  # else: per-stream heartbeats, as with a client that names none (or names us)
        if terms.deadline_epoch is not None:
            self.deadline = Deadline.at_epoch(terms.deadline_epoch).earliest(self.deadline)
        if self.deadline is not None:
            self.context.deadline = self.deadline.epoch

    async def run(self) -> str | None:
        """Serve the call to its end; returns the error code it ended with, if any (for stats)."""
        error: RpcError | None = None
        self.task = asyncio.current_task()
        try:
            try:
                self.negotiate()
                await self.open()
            except NoAnswer:
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
        if error is not None and error.code in PEER_FAULTS:
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
        """(messages, bytes) this call sent or received."""
        if sent:
            writer = self.writer
            return (writer.sent, writer.bytes_sent) if writer is not None else self.answered
        reader = self.reader
        if reader is not None:
            return (reader.received, reader.bytes_received)
        return (1, len(self.msg.data))

    async def open(self) -> None:
        await self.shape.open(self)

    async def serve(self) -> None:
        await self.shape.serve(self)

    async def finish(self, error: RpcError | None) -> None:
        await self.shape.finish(self, error)

    async def respond_error(self, subject: str, error: RpcError) -> None:
        await send_error(self.nc, subject, error)

    @property
    def encode(self) -> Callable[[Any], bytes]:
        """The response's encoder (a client stream's single answer: once per call)."""
        return self.codec.encoder(self.method.response)

    @property
    def keys(self) -> None:
        """No stored answers (persisted methods are unary: `UnaryCall.persist`)."""
        return None

    def persist(self, body: bytes) -> Awaitable[None] | None:
        return None

    async def answer(self, subject: str, response: Any, error: RpcError | None) -> None:
        """A single final answer (client streaming): see `answer`."""
        sending = answer(self, self, subject, response, error)
        if sending is not None:
            await sending

    # --- What the stream shapes share -----------------------------------------------------------

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

    async def start_session(
        self, peer_inbox: str, inbox: Inbox, receive: tuple[StreamReader[Any], Window] | None = None, send: StreamWriter | None = None
    ) -> StreamSession:
        """v2 for this call (`streaming.v2.start_v2`, as the client's): the client's acks, heartbeats
        and cancel arrive on `inbox`; `receive`: the client's stream arrives there too, within our
        window; `send`: our stream to it, within the window it granted. Heartbeats are shared with the
        client's connection when it named its liveness subject."""
        share = None
        if self.peer_subject is not None:
            self.peers = await PeerLiveness.acquire(self.nc)
            share = (self.peers, self.peer_subject)
        granted = None if send is None else (send, Window.granted(self.msg.headers))
        session = self.session = start_v2(self.nc, self, inbox, peer_inbox, self.heartbeat, receive, granted, share)
        inbox.watcher = self.watch
        return session

    def confirmation(self, inbox: Inbox, window: Window | None) -> dict[str, str]:
        """Our v2 confirmation (the open message or the handshake ack)."""
        return confirmation(inbox.subject, self.heartbeat, window, None if self.peers is None else self.peers.subject)

    # --- How the session ends the call (`CallEnds`) ------------------------------------------------

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
        """Our stream to the client's `R` (in v2, `start_session` holds it to the client's window); the
        handler's response headers go with its first message; when `R` is not the request's own
        reply subject (which NATS routes back in any topology) and we have an inbox for the answer,
        its first message makes sure `R` is known (`FirstHop`)."""
        writer = StreamWriter(self.nc, subject, self.codec, self.name)
        writer.first_headers = self.context.response_headers
        if own_inbox is not None and subject != self.msg.reply:
            writer.first_hop = FirstHop(self.nc, own_inbox, self.name)
        return writer
