"""`Responder`: runs a served stream call through its lifecycle: the client's terms negotiated, the
call opened, the handler served under the call's deadline with `current_call()` set and the
interceptors around it, the outcome put on the wire, everything released. The shapes
(`serving.shapes`) say how they open, serve and finish.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable

from ..core.errors import ErrorCode, RpcError
from ..core.negotiation import server_terms
from ..core.states import ServerState
from ..core.subjects import first_token_prefix
from ..net.mux import InboxMux
from ..features.interceptors import CallInfo, Direction, Side, outcome_of
from ..schema.spec import Cardinality
from ..streaming.deadline import Deadline
from ..streaming.reader import StreamReader
from .answer import answer, send_error
from .context import set_current_call
from .lifecycle import ServedCall
from .policy import PEER_FAULTS, log, peer_faults


class NoAnswer(Exception):
    """The request cannot be answered at all (no reply subject): drop it."""


class Responder(ServedCall):
    """Common lifecycle of a served call; subclasses say how to open, serve and finish their shape."""

    __slots__ = ()

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
        """(messages, bytes) this call sent or received (the shapes keep them in different places)."""
        if sent:
            writer = self.writer
            return (writer.sent, writer.bytes_sent) if writer is not None else self.answered
        reader: StreamReader[Any] | None = getattr(self, "reader", None)
        if reader is not None:
            return (reader.received, reader.bytes_received)
        return (1, len(self.msg.data))

    async def open(self) -> None:
        """Read the request or do the handshake; raise RpcError to answer with an error."""

    async def serve(self) -> None:
        """Run the handler."""

    async def finish(self, error: RpcError | None) -> None:
        """Put the outcome on the wire."""

    async def respond_error(self, subject: str, error: RpcError) -> None:
        await send_error(self.nc, subject, error)

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """No stored answers (persisted methods are unary: `UnaryCall.persist`)."""
        return None

    async def answer(self, subject: str, response: Any, error: RpcError | None) -> None:
        """A single final answer (client streaming): see `answer`."""
        sending = answer(self, subject, response, error)
        if sending is not None:
            await sending
