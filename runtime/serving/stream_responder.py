"""`StreamResponder`: what the stream shapes share: the client's `Reply-To` checked, our inboxes
(bounded, idle-checked), the v2 session and its confirmation, the watchers that see what arrives on
our inboxes first, and our writer to the client's `R`.
"""

from __future__ import annotations

from nats.aio.msg import Msg

from ..core.errors import ErrorCode
from ..core.headers import REPLY_TO, is_no_responders, quote
from ..core.negotiation import Window, confirmation
from ..health.peers import PeerLiveness
from ..streaming.first_hop import FirstHop
from ..streaming.flow import FlowWindow
from ..streaming.inbox import Inbox
from ..streaming.session import StreamSession
from ..streaming.writer import StreamWriter
from .responder import Responder


class StreamResponder(Responder):
    """A stream shape's plumbing (see the module)."""

    __slots__ = ()

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
