"""One v2 stream, set up the same way on both sides: `start_v2` ties a call's inbox, reader and
writer to a new `StreamSession`: what we receive is acknowledged within the window we granted and
its inbox held to it, what we send waits for the window the peer granted and is counted in our
heartbeats, and liveness is shared with the peer's connection when it named one. The client calls
it once the server confirmed v2 (`ClientCall.start_v2`), the server once its side of the call is
open (`Responder.start_session`); each starts the session's heartbeats when its confirmation is
out."""

from __future__ import annotations

from typing import Any

from ..core.negotiation import Window
from ..health.peers import PeerLiveness
from ..net.transport import Transport
from .flow import FlowWindow
from .inbox import Inbox
from .reader import StreamReader
from .session import CallEnds, StreamSession
from .writer import StreamWriter

# What an inbox holds beyond the window we granted: the end marker and a stray status.
BEYOND_WINDOW = 2


def start_v2(
    nc: Transport,
    call: CallEnds,
    inbox: Inbox,
    peer_inbox: str,
    heartbeat: float,
    receive: tuple[StreamReader[Any], Window] | None = None,
    send: tuple[StreamWriter, Window] | None = None,
    share: tuple[PeerLiveness, str] | None = None,
) -> StreamSession:
    """The session of a v2 call whose own (control) inbox is `inbox` and whose peer listens on
    `peer_inbox`. `receive`: our reader of the peer's stream (on `inbox`) and the window we granted;
    `send`: our writer and the window the peer granted; `share`: our connection's liveness and the
    peer's liveness subject (checked by the caller)."""
    session = StreamSession(nc, peer_inbox, inbox.subject, heartbeat, call)
    if receive is not None:
        reader, ours = receive
        session.receiving = inbox
        reader.acknowledge(ours, session.send_ack)
        inbox.limit(ours.messages + BEYOND_WINDOW, ours.max_bytes)
    if send is not None:
        writer, granted = send
        writer.rules.limit(granted)
        session.window = window = FlowWindow(writer.rules)
        writer.limit(window)
        writer.on_sent = session.on_sent
        session.sending = writer
    if share is not None:
        session.share(*share)
        inbox.peer = session.group  # the peer's beats keep an idle stream alive
    return session
