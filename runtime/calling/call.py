"""`ClientCall`, the one object that owns a call on the client: its traffic on top of its lifecycle
(`CallLifecycle`): what arrives on its inbox `R` (seen first by `on_message`), sending, receiving.
How it opens is `calling.opening`; `close` (in `CallLifecycle`) is the one place it ends.
"""

from __future__ import annotations

from typing import Any, Mapping

import betterproto
import nats.errors
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.frames import FrameKind, classify, is_control
from ..core.headers import error_from_headers, is_no_responders, user_headers
from ..core.negotiation import confirmed
from ..core.states import CallState
from ..features.interceptors import CallInfo, Direction, Side
from .lifecycle import Answered, CallLifecycle
from .opening import server_inbox, start_v2
from .refusals import RetryBudget
from .requests import as_rpc_errors, connection_error


class ClientCall(CallLifecycle):
    """The client's side of one call (see the module): its lifecycle, and its messages in and out."""

    __slots__ = ()

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
        reopening = self.reopening
        if reopening is not None:  # a server stream that nothing but refusals has answered yet
            refusal = error_from_headers(headers, self.name) if headers else None
            if isinstance(refusal, Overloaded):
                if reopening.refused(refusal):
                    return True  # refused before it started: the request goes again (`refusals.Reopening`)
            else:
                reopening.cancel()  # the service took the call: nothing more is sent again
                RetryBudget.of(self.nc).taken += 1
            self.reopening = None
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
            self.credit.fail(Answered())
        return False

    def gave_up(self, error: RpcError) -> None:
        """A refused server stream may not be sent again (`refusals.Reopening`): it ends with `error`."""
        self.fail(error, at_once=True)

    def _confirm_server_stream(self, headers: Mapping[str, str] | None) -> None:
        """A server stream's open message confirmed v2 and named the server's control inbox."""
        try:
            start_v2(self, headers, peer_inbox=server_inbox(self, headers))
        except RpcError as refused:  # nothing is ever sent to a subject that fails the checks
            self.fail(refused, at_once=True)

    def _ends_call(self, msg: Msg) -> bool:
        """Client streaming: any answer is the final one (a v2 server may answer before we finish);
        bidi: data keeps coming until the end marker or an error."""
        if not self.receives:
            return True
        return classify(msg.headers).kind in (FrameKind.END, FrameKind.ERROR)

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
