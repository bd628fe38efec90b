"""`ClientCall`, the one object that owns a call on the client: its state, what it holds and how it
ends (its moves, failures, what its session reports (`CallEnds`), denied permissions, the task that
opened it, and `close`, the one place the call lets go of everything), and its traffic: what arrives
on its inbox `R` (seen first by `on_message`), sending, receiving. How it opens is `calling.opening`.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterable, Awaitable, Callable, Iterable, Mapping, Protocol

import betterproto2
import nats.errors
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.frames import ends_stream, is_control
from ..core.headers import RETRY_AFTER, STREAM_INBOX, error_from_headers, is_no_responders, quote, user_headers
from ..core.negotiation import Window, client_heartbeat, confirmed, named_inbox, shared_peer
from ..core.states import CLIENT_MOVES, CallState, InvalidTransition
from ..core.subjects import InboxPolicy
from ..features.interceptors import CallInfo, Chain, Direction, Side, outcome_of
from ..health.admission import OpenGate, OpenWindow
from ..health.peers import PeerLiveness
from ..net.mux import InboxMux, let_go
from ..net.transport import Transport
from ..schema.spec import Cardinality, MethodSpec, ServiceSpec
from ..streaming.deadline import Deadline
from ..streaming.flow import SendCredit, Unlimited
from ..streaming.inbox import Inbox
from ..streaming.reader import StreamReader
from ..streaming.session import StreamSession
from ..streaming.v2 import start_v2
from ..streaming.writer import StreamWriter
from .refusals import Reopening, RetryBudget, absorbs
from .requests import as_rpc_errors, connection_error

class CallSettings(Protocol):
    """What a call reads of the client that makes it (`ClientBase`)."""

    @property
    def _nats_service(self) -> ServiceSpec: ...

    _nats_transport: Transport
    _nats_subject_prefix: str
    _nats_timeout: float | None
    _nats_heartbeat: float
    _nats_inboxes: InboxPolicy
    _nats_chain: Chain | None
    _nats_max_loop_lag: float | None
    _nats_absorb: bool


class Answered(Exception):
    """The server ended the call while we were still sending."""


class ClientCall:
    """The client's side of one call (see the module). Slots, not a `__dict__`: thousands may be open."""

    __slots__ = (
        "nc", "method", "name", "subject", "codec", "deadline", "heartbeat", "inboxes", "receives", "sends", "window",
        "state", "inbox", "reader", "writer", "credit", "session", "peers", "answer", "heard", "_heard_waiter",
        "released", "lost", "failure", "chain", "info", "_watched", "_owner", "gate", "open_window", "max_loop_lag", "absorbs",
        "queue_group", "reopening", "taken",
    )

    def __init__(self, client: CallSettings, method: MethodSpec[Any, Any], timeout: float | None) -> None:
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
        self.absorbs = absorbs(client._nats_absorb)  # a refusal of the open is sent again (calling/refusals.py)
        self.queue_group = spec.in_queue_group(method)
        self.reopening: Reopening | None = None  # a server stream refused at open, sent again
        self.taken = False  # something other than a refusal arrived on R: a service took the call
        self.gate: OpenGate | None = None  # our place among the connection's open streams
        self.open_window: OpenWindow | None = None  # our place among the unanswered opens to our subject
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
        if state not in CLIENT_MOVES[self.state]:
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

    def watch_permissions(self, subject: str) -> None:
        """Publishing to or subscribing on `subject` denied: the call fails with PERMISSION_DENIED
        at once (nats-py only tells the connection's error callback; the message is dropped)."""
        self.nc.watch_permissions(subject, self._denied)
        self._watched.append(subject)

    def _denied(self, text: str) -> None:
        self.fail(self.error(ErrorCode.PERMISSION_DENIED, text), at_once=True)

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

    # --- Ending: the one place -------------------------------------------------------------------

    def _server_done(self) -> bool:
        """Whether the server has ended the call by itself (no cancel needed)."""
        if self.answer is not None:
            return True
        return self.reader is not None and self.reader.rules.peer_stops

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
            self.answered()
            if self.reopening is not None:
                self.reopening.cancel()
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

    # --- What arrives, what is sent -----------------------------------------------------------

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

    def encode(self, message: betterproto2.Message) -> bytes:
        """A message to send, through the interceptors when there are any."""
        if self.info is not None and self.chain is not None:
            message = self.chain.message(self.info, Direction.SENT, message)
        return self.codec.encode(message)

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
        error = error_from_headers(headers, self.name) if headers and RETRY_AFTER in headers else None
        refusal = error if isinstance(error, Overloaded) else None  # (only a refusal carries a retry hint)
        reopening = self.reopening
        if reopening is not None:  # a server stream that nothing but refusals has answered yet
            if refusal is not None:
                if reopening.refused(refusal):
                    return True  # refused before it started: the request goes again (`refusals.Reopening`)
            else:
                reopening.cancel()  # the service took the call: nothing more is sent again
                RetryBudget.of(self.nc).taken += 1
            self.reopening = None
        elif refusal is not None and self.taken:
            # Another receiver's refusal after a service took the call (a forger's, or a second
            # instance's without a queue group): a service never refuses a call it runs.
            return True
        if refusal is None:
            self.taken = True
        if self.open_window is not None:
            self.answered()
        if session is None and self.reader is not None and self.reader.received == 0 and is_no_responders(headers):
            # The request itself found nobody (our reply subject is R): say where nobody listens.
            self.fail(self.error(ErrorCode.UNAVAILABLE, f"no service is listening on {self.subject}"), at_once=True)
            return True
        if session is None and is_control(headers):  # (with a session, `watch` took control messages)
            if not self.sends and confirmed(headers) and not self.ended:
                self._confirm_server_stream(headers)
            return True
        if self.sends and self._ends_call(msg):  # also while the handshake is still being read
            self.answer = msg
            self.credit.fail(Answered())
        return False

    def answered(self) -> None:
        """The service answered our open (or the call ended): it leaves the subject's `OpenWindow`."""
        window, self.open_window = self.open_window, None
        if window is not None:
            window.answered(self)

    def gave_up(self, error: RpcError) -> None:
        """A refused server stream may not be sent again (`refusals.Reopening`): it ends with `error`."""
        self.fail(error, at_once=True)

    def _confirm_server_stream(self, headers: Mapping[str, str] | None) -> None:
        """A server stream's open message confirmed v2 and named the server's control inbox."""
        try:
            self.start_v2(headers, peer_inbox=self.server_inbox(headers))
        except RpcError as refused:  # nothing is ever sent to a subject that fails the checks
            self.fail(refused, at_once=True)

    def _ends_call(self, msg: Msg) -> bool:
        """Client streaming: any answer is the final one (a v2 server may answer before we finish);
        bidi: data keeps coming until the end marker or an error."""
        if not self.receives:
            return True
        return ends_stream(msg.headers)

    # --- Sending ----------------------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Encode and send one message (see `send_body`); after a full batch left, the loop runs once
        (`StreamWriter.turn_due`)."""
        body = self.encode(message)
        if not self.send_nowait(body):
            await self.send_body(body)
        elif self.writer is not None and self.writer.turn_due:
            await self.writer.take_turn()

    async def send_all(self, messages: Iterable[Any] | AsyncIterable[Any]) -> None:
        """Send every message, in order: the client's one send loop (no coroutine per message while
        the writer's batch takes them)."""
        if isinstance(messages, AsyncIterable):
            async for message in messages:
                await self.send(message)
            return
        writer = self.writer
        assert writer is not None
        for message in messages:
            body = self.encode(message)
            if not self.send_nowait(body):
                await self.send_body(body)
            elif writer.turn_due:
                await writer.take_turn()

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
        except Answered:
            self._raise_early_error()
        except nats.errors.Error as error:  # as as_rpc_errors, without a context manager per message
            raise connection_error(error, self.name) from error

    def _raise_early_error(self) -> None:
        error = error_from_headers(self.answer.headers if self.answer is not None else None, self.name)
        if error is not None:
            raise error

    async def end_send(self) -> None:
        """End our direction (unless the server already ended the call)."""
        assert self.writer is not None
        if self.answer is None and not self.writer.ended:
            with as_rpc_errors(self.name):
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
            except nats.errors.Error as error:  # as as_rpc_errors, without a context manager per message
                raise connection_error(error, self.name) from error
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

    # --- v2, once the server confirms it ------------------------------------------------------

    def server_inbox(self, headers: Mapping[str, str] | None) -> str:
        """The `Nats-Stream-Inbox` the server named, checked before anything is sent there."""
        subject = named_inbox(headers)
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


    def start_v2(self, confirmation: Mapping[str, str] | None, peer_inbox: str) -> None:
        """The server confirmed v2: its window bounds what we send, ours what we receive; heartbeats
        both ways at the interval the server said, shared with its connection when it named its
        liveness subject."""
        inbox = self.inbox
        assert inbox is not None
        peer_subject = self._checked_peer(confirmation)
        self.watch_permissions(peer_inbox)
        writer, reader = self.writer, self.reader
        session = self.session = start_v2(
            self.nc, self, inbox, peer_inbox, client_heartbeat(confirmation, self.heartbeat),
            receive=None if reader is None else (reader, self.window),
            send=None if writer is None else (writer, Window.granted(confirmation)),
            share=None if peer_subject is None or self.peers is None else (self.peers, peer_subject),
        )  # fmt: skip
        if session.window is not None:
            if self.answer is not None:  # the server ended the call during the handshake
                session.window.fail(Answered())
            self.credit = session.window
        session.start()

    def _checked_peer(self, confirmation: Mapping[str, str] | None) -> str | None:
        """The server's liveness subject, checked like its inboxes (INTERNAL when it fails)."""
        subject = shared_peer(confirmation)
        if subject is not None:
            why = self.inboxes.check(subject)
            if why is None and InboxMux.owns(self.nc, subject):
                why = "one of this connection's own inboxes"
            if why is not None:
                raise self.error(ErrorCode.INTERNAL, f"the server named a liveness subject {quote(subject)}, which is {why}")
        return subject
