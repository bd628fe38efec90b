"""The protocol v2 side of one call on one side: control messages to and from the peer."""

from __future__ import annotations

from typing import Callable

from nats.aio.msg import Msg

from .flow import FlowWindow
from .errors import ErrorCode
from .liveness import Liveness
from .protocol import (
    ERROR_CODE,
    STREAM_ACK,
    STREAM_CANCEL,
    STREAM_HEARTBEAT,
    STREAM_SENT,
    clip,
    is_control,
    is_no_responders,
    parse_uint,
    sanitize,
)
from .transport import Transport, publish


class StreamSession:
    """Sends acks, heartbeats and cancels to the peer's inbox; handles the ones that arrive.

    `watch` sees every message on the call's own inbox first (anything counts as a sign of life) and
    takes the control messages out of the data path; acks feed `window`, the credit of what we send.

    Acks and heartbeats carry our inbox as their reply subject: once the peer's inbox is gone (its
    process died), the NATS server answers one of them with a no-responders status at once, so a
    dead peer is noticed within a heartbeat rather than after three silent ones.

    Heartbeats of a side that sends a stream also say how many of its frames went out before them
    (`Nats-Stream-Sent`). They travel on the subject the data took, from the same connection, so NATS
    delivers them after that data: a receiver that has fewer frames than the count knows the rest
    were lost in transit, at once and without guessing from timing; `on_loss` ends the call
    (DATA_LOSS) instead of both sides waiting, heartbeats flowing, for messages that never come.
    """

    def __init__(
        self,
        nc: Transport,
        peer_inbox: str,
        own_inbox: str,
        heartbeat: float,
        on_dead: Callable[[str], None],
        on_cancel: Callable[[str, str], None] | None = None,
        window: FlowWindow | None = None,
        on_loss: Callable[[str], None] | None = None,
    ) -> None:
        self.nc = nc
        self.peer_inbox = peer_inbox
        self.own_inbox = own_inbox
        self._on_dead = on_dead
        self.window = window
        self.on_cancel = on_cancel
        self.heartbeat = heartbeat
        self._heartbeat_ms = str(int(heartbeat * 1000))
        # A reconnect means data, acks or the peer's cancel may have been lost in the gap: a stream
        # that lived through one cannot be trusted to be complete or to make progress, so it ends.
        reconnects = nc.reconnects
        self.liveness = Liveness(heartbeat, self.send_heartbeat, on_dead, interrupted=lambda: nc.reconnects != reconnects)
        self.closed = False
        # Stream positions (data messages, and the end marker as one more): what arrived of the
        # peer's stream, when we receive one; what we handed to NATS, when we send one.
        self.received: Callable[[], int | None] | None = None  # None once our side failed: nothing to check
        self.sent: Callable[[], int] | None = None
        self.on_loss = on_loss

    def start(self) -> None:
        self.liveness.start()

    def watch(self, msg: Msg) -> bool:
        """Record a sign of life; handle a control message and return True, else False."""
        headers = msg.headers
        if is_no_responders(headers):
            if not self.closed:
                self._on_dead("the peer's inbox is gone (no responders)")
            return True
        self.liveness.heard()
        if not is_control(headers):
            return False
        assert headers is not None
        ack = parse_uint(headers.get(STREAM_ACK))
        if ack is not None and self.window is not None:
            self.window.on_ack(ack)
        sent = parse_uint(headers.get(STREAM_SENT))
        if sent is not None and self.received is not None:
            self._check_arrived(sent, self.received())
        reason = headers.get(STREAM_CANCEL)
        if reason is not None and self.on_cancel is not None:
            code = ErrorCode.DATA_LOSS if headers.get(ERROR_CODE) == ErrorCode.DATA_LOSS else ErrorCode.CANCELLED
            self.on_cancel(clip(reason, 256), code)
        return True

    def _check_arrived(self, sent: int, arrived: int | None) -> None:
        """The peer's count of frames it sent before this heartbeat: all of them should be here."""
        if arrived is not None and arrived < sent and self.on_loss is not None and not self.closed:
            self.on_loss(f"the peer sent {sent} messages before its heartbeat, {arrived} arrived: the rest were lost in transit")

    async def _send(self, headers: dict[str, str]) -> None:
        if self.closed:
            return
        await publish(self.nc, self.peer_inbox, b"", headers, self.own_inbox)
        self.liveness.sent()

    async def send_ack(self, seq: int) -> None:
        try:
            await self._send({STREAM_ACK: str(seq)})
        except Exception:
            pass  # the connection is gone: liveness ends the stream (silence or a reconnect)

    async def send_heartbeat(self) -> None:
        headers = {STREAM_HEARTBEAT: self._heartbeat_ms}
        if self.sent is not None:
            headers[STREAM_SENT] = str(self.sent())
        await self._send(headers)

    async def send_cancel(self, reason: str, data_loss: bool = False) -> None:
        """Tell the server to stop; `data_loss`: because our messages did not reach it."""
        headers = {STREAM_CANCEL: sanitize(clip(reason, 256))}
        if data_loss:
            headers[ERROR_CODE] = ErrorCode.DATA_LOSS
        try:
            await self._send(headers)
        except Exception:
            pass  # the connection is gone: the peer will notice the silence instead

    def close(self) -> None:
        self.closed = True
        self.liveness.stop()
        if self.window is not None:
            self.window.fail(ConnectionError("stream closed"))
