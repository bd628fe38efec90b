"""`CallLifecycle`: a client call's state, what it holds and how it ends: its moves, failures, what
its session reports (`CallEnds`), denied permissions, the task that opened it, and `close`, the one
place the call lets go of everything. `ClientCall` adds the call's traffic.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.negotiation import Window
from ..core.states import CLIENT_MOVES, CallState, InvalidTransition
from ..features.interceptors import CallInfo, outcome_of
from ..health.admission import OpenGate
from ..health.peers import PeerLiveness
from ..net.mux import let_go
from ..net.transport import Transport
from ..schema.spec import Cardinality, MethodSpec
from ..streaming.deadline import Deadline
from ..streaming.flow import SendCredit, Unlimited
from ..streaming.inbox import Inbox
from ..streaming.reader import StreamReader
from ..streaming.session import StreamSession
from ..streaming.writer import StreamWriter
from .refusals import Reopening, absorbs

if TYPE_CHECKING:
    from .base import ClientBase


class Answered(Exception):
    """The server ended the call while we were still sending."""


class CallLifecycle:
    """A client call's state and holdings, and everything that ends it (see the module). Slots, not a
    `__dict__`: thousands may be open."""

    __slots__ = (
        "nc", "method", "name", "subject", "codec", "deadline", "heartbeat", "inboxes", "receives", "sends", "window",
        "state", "inbox", "reader", "writer", "credit", "session", "peers", "answer", "heard", "_heard_waiter",
        "released", "lost", "failure", "chain", "info", "_watched", "_owner", "gate", "max_loop_lag", "absorbs",
        "queue_group", "reopening",
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
        self.absorbs = absorbs(client._nats_absorb)  # a refusal of the open is sent again (calling/refusals.py)
        self.queue_group = not (method.queue_group_disabled or spec.queue_group_disabled)
        self.reopening: Reopening | None = None  # a server stream refused at open, sent again
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
