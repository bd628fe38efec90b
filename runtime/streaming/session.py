"""The protocol v2 side of one call on one side: control messages to and from the peer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from nats.aio.msg import Msg

from ..core.frames import ack_headers, cancel_headers, heartbeat_headers, read_control
from ..core.headers import (
    is_no_responders,
)
from ..core.heartbeats import SENDING
from ..core.loss import lost_in_transit, missing_at_release
from ..health.liveness import Liveness
from ..net.mux import InboxMux
from ..net.transport import Transport, publish
from .flow import FlowWindow

if TYPE_CHECKING:
    from ..health.peers import PeerGroup, PeerLiveness
    from .inbox import Inbox
    from .writer import StreamWriter


class CallEnds(Protocol):
    """How a session ends its call early: `ClientCall` and `Responder` implement it."""

    def peer_unreachable(self, why: str, tell: bool) -> None:
        """The peer is gone (no responders, silence) or our connection was interrupted. `tell`: the
        peer may still be there (its connection went quiet, or ours reconnected), so a server tells
        the client, per stream, how the call ended."""

    def peer_cancelled(self, reason: str, code: str) -> None:
        """The client cancelled (a server's session only)."""

    def messages_lost(self, why: str) -> None:
        """Frames the peer sent did not arrive (its count says so)."""

    def peer_released(self, missing: str | None) -> None:
        """Shared liveness: the peer let go of the call; `missing` says what of its stream did not
        arrive here (None: all of it did)."""


class _Ended:
    """The call of a closed session: what arrives after the close ends nothing (the call is over),
    and the session no longer holds the call (no reference cycle outlives the call)."""

    def peer_unreachable(self, why: str, tell: bool) -> None:
        pass

    def peer_cancelled(self, reason: str, code: str) -> None:
        pass

    def messages_lost(self, why: str) -> None:
        pass

    def peer_released(self, missing: str | None) -> None:
        pass


ENDED: CallEnds = _Ended()


class StreamSession:
    """Sends acks, heartbeats and cancels to the peer's inbox; handles the ones that arrive.

    `watch` sees every message on the call's own inbox first (anything counts as a sign of life) and
    takes the control messages out of the data path; acks feed `window`, the credit of what we send.

    Acks and heartbeats carry our inbox as their reply subject: once the peer's connection is gone
    (its process died), the NATS server answers one of them with a no-responders status at once, so a
    dead peer is noticed within a heartbeat rather than after three silent ones.

    Liveness is shared with every stream between the same two connections (`share`: a `PeerGroup`
    sends and expects the heartbeats) or, with a peer that does not share, this stream's own
    (`Liveness`, per-stream heartbeats). Either way a side that sends a stream says in its heartbeats
    how many frames it handed to NATS before them (`Nats-Stream-Sent` per stream; a count line in a
    shared heartbeat), and the heartbeat follows that data from the same connection to the same
    subscription, so NATS delivers it after the data: a receiver that has fewer frames than the count
    knows the rest were lost in transit, at once and without guessing from timing, and the call ends
    (DATA_LOSS) instead of both sides waiting, heartbeats flowing, for messages that never come.
    """

    __slots__ = (
        "nc", "peer_inbox", "own_inbox", "heartbeat", "call", "window", "receiving", "sending", "closed",
        "liveness", "group",
    )

    def __init__(
        self, nc: Transport, peer_inbox: str, own_inbox: str, heartbeat: float, call: CallEnds, window: FlowWindow | None = None
    ) -> None:
        self.nc = nc
        self.peer_inbox = peer_inbox
        self.own_inbox = own_inbox
        self.heartbeat = heartbeat
        self.call = call
        self.window = window
        self.receiving: Inbox | None = None  # where the peer's stream arrives, when we receive one
        self.sending: StreamWriter | None = None  # our stream to the peer, when we send one
        self.closed = False
        self.liveness: Liveness | None = None  # per-stream heartbeats (a peer that does not share)
        self.group: PeerGroup | None = None  # shared heartbeats with the peer's connection

    def share(self, manager: PeerLiveness, peer_subject: str) -> None:
        """Both sides named their connection's liveness subject: this stream's heartbeats are its
        peer group's from now on (no timer of its own)."""
        self.group = manager.join(self, peer_subject, round(self.heartbeat * 1000))
        if self.group is None:
            self.peer_unreachable("the NATS connection was interrupted", False)

    def start(self) -> None:
        """Per-stream heartbeats, unless shared. A reconnect means data, acks or the peer's cancel
        may have been lost in the gap: a stream that lived through one cannot be trusted to be
        complete or to make progress, so it ends."""
        if self.group is not None or self.closed:
            return
        nc, reconnects = self.nc, self.nc.reconnects
        self.liveness = Liveness(
            self.heartbeat,
            self.send_heartbeat,
            self.peer_unreachable,
            InboxMux.of(nc),  # the stream's inbox holds it: how far this connection has read
            interrupted=lambda: nc.reconnects != reconnects,
        )
        self.liveness.start()

    # --- Positions (data messages, and the end marker as one more) --------------------------------

    def sent_count(self) -> int | None:
        """Frames of ours handed to NATS, for a heartbeat (None: we send no stream)."""
        return None if self.sending is None else self.sending.handed_over

    def arrived(self) -> int | None:
        """Frames of the peer's stream that arrived (None: we receive none, or our side failed)."""
        return None if self.receiving is None else self.receiving.arrived_unless_failed()

    def on_sent(self) -> None:
        """Our writer sent a frame: per-stream, a heartbeat can wait; shared, count it in the next ones."""
        group = self.group
        if group is not None:
            group.ledger.counting[self] = SENDING
        elif self.liveness is not None:
            self.liveness.sent()

    # --- What arrives -----------------------------------------------------------------------------

    def watch(self, msg: Msg) -> bool:
        """Record a sign of life; handle a control message and return True, else False."""
        headers = msg.headers
        if is_no_responders(headers):
            self.peer_unreachable("the peer's inbox is gone (no responders)", False)
            return True
        group = self.group
        if group is not None:
            group.heard = group.manager.loop.time()
        elif self.liveness is not None:
            self.liveness.heard()
        control = read_control(headers)
        if control is None:
            return False
        if control.ack is not None and self.window is not None:
            self.window.on_ack(control.ack)
        if control.sent is not None:
            self.peer_sent(control.sent)
        if control.cancel is not None and not self.closed:
            self.call.peer_cancelled(control.cancel, control.code)
        return True

    def peer_sent(self, sent: int) -> None:
        """The peer's count of frames it sent before its heartbeat: all of them should be here."""
        why = lost_in_transit(sent, self.arrived())
        if why is not None and not self.closed:
            self.call.messages_lost(why)

    def peer_released(self, final: int | None) -> None:
        """Shared liveness: the peer let go of the stream after sending `final` frames."""
        if self.closed:
            return
        self.call.peer_released(missing_at_release(final, self.arrived()))

    def peer_unreachable(self, why: str, tell: bool) -> None:
        if not self.closed:
            self.call.peer_unreachable(why, tell)

    # --- What we send -----------------------------------------------------------------------------

    async def _send(self, headers: dict[str, str]) -> None:
        if self.closed:
            return
        await publish(self.nc, self.peer_inbox, b"", headers, self.own_inbox)
        if self.liveness is not None:
            self.liveness.sent()

    async def send_ack(self, seq: int) -> None:
        try:
            await self._send(ack_headers(seq))
        except Exception:
            pass  # the connection is gone: liveness ends the stream (silence or a reconnect)

    async def send_heartbeat(self) -> None:
        await self._send(heartbeat_headers(int(self.heartbeat * 1000), self.sent_count()))

    async def send_cancel(self, reason: str, data_loss: bool = False) -> None:
        """Tell the server to stop; `data_loss`: because messages of the call were lost."""
        try:
            await self._send(cancel_headers(reason, data_loss))
        except Exception:
            pass  # the connection is gone: the peer will notice the silence instead

    def close(self, released: bool = False) -> None:
        """Send nothing more and stop liveness. `released`: we told the peer the call is over (an
        end marker, an answer, a cancel); shared liveness repeats it in the next beats."""
        self.closed = True
        if self.liveness is not None:
            self.liveness.stop()
        group, self.group = self.group, None
        if group is not None:
            group.manager.leave(self, group, released)
        if self.window is not None:
            self.window.fail(ConnectionError("stream closed"))
        # What held the call and the session in reference cycles lets go: they are freed as soon as
        # the last reference goes, not at the garbage collector's next full pass.
        self.call = ENDED
        if self.sending is not None:
            self.sending.on_sent = None
