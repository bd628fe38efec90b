"""Protocol v2 liveness per peer connection: the streams between two connections share their heartbeats.

Each `Transport` (connection) has at most one `PeerLiveness` while it has v2 streams: one liveness
subject (an inbox of the connection's `InboxMux`, no subscription of its own) and one loop timer for
all of them. The subject is named in the v2 offer and confirmation (`Nats-Stream-Peer`); when both
sides named one, the stream joins the `PeerGroup` of the peer's subject and heartbeat interval, and
the group, not the stream, sends and expects heartbeats: one beat per half interval to each peer,
whatever the number of streams.

A beat's body names only the streams that need something (see docs/PROTOCOL.md, "Heartbeats"):
`<inbox> s<n>`: we handed n frames of the stream the receiver owns as `<inbox>` to NATS before this
beat (in the `REPEAT` beats after it went quiet); a receiver with fewer knows the rest were lost (a
stream that keeps sending needs no count: a lost message shows as a gap in the next one);
`<inbox> e[<n>]`: we let go of the stream after sending n frames (in the next `REPEAT` beats).
So 10,000 idle streams cost one beat per half interval, and a beat's body grows only with the streams
that sent something lately. The counts are exact because a beat follows the data it counts from the
same connection to the same subscription (the receiver's `InboxMux`): NATS delivers it after them.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Protocol

from nats.aio.msg import Msg

from ..core.headers import is_no_responders
from ..core.heartbeats import (
    BEAT_BODY_LIMIT,
    RELEASED,
    BeatLedger,
    beat_bodies,
    beat_headers,
    beat_sender,
    overdue,
    past_stall,
    read_beat,
    silence,
    silent,
)
from ..net.mux import InboxMux
from ..net.transport import Transport, publish_now


class Member(Protocol):
    """What a group needs of a stream's session (`StreamSession`)."""

    own_inbox: str  # the peer names the stream by it
    peer_inbox: str  # we name the stream by it

    def sent_count(self) -> int | None:
        """Frames we handed to NATS on the stream (None: we send none)."""
        ...

    def peer_sent(self, sent: int) -> None: ...

    def peer_released(self, final: int | None) -> None: ...

    def peer_unreachable(self, why: str, tell: bool) -> None: ...


def _count(member: Member) -> tuple[str, int | None]:
    """A stream as a beat counts it: the peer's name for it, and the frames we handed to NATS."""
    return member.peer_inbox, member.sent_count()


class PeerGroup:
    """Our streams with one peer connection at one heartbeat interval: they live and die together."""

    __slots__ = ("manager", "subject", "ms", "interval", "reply", "heard", "beaten", "streams", "ledger", "dead")

    def __init__(self, manager: PeerLiveness, subject: str, ms: int) -> None:
        self.manager = manager
        self.subject = subject  # the peer's liveness subject: where our beats go
        self.ms = ms
        self.interval = ms / 1000
        # Our beats' reply subject, unguessable: a no-responders status on it says the peer is gone.
        self.reply = manager.mux.reserve()
        self.heard = self.beaten = manager.loop.time()
        self.streams: dict[str, Member] = {}  # by our inbox for the stream (how the peer names it)
        self.ledger: BeatLedger[Member] = BeatLedger()  # what our next beats say (core/heartbeats.py)
        self.dead = False

    def beat(self, outgoing: list[tuple[str, bytes, dict[str, str], str]]) -> None:
        """One beat to the peer (more when the entries exceed a body), queued at once where the
        transport can, else added to `outgoing`; what was said is forgotten (`entries`)."""
        manager = self.manager
        headers = beat_headers(self.ms, manager.subject)
        for data in beat_bodies(self.ledger.lines(_count), manager.body_limit):
            if not publish_now(manager.nc, self.subject, data, headers, self.reply):
                outgoing.append((self.subject, data, headers, self.reply))

    def read(self, data: bytes) -> None:
        """The peer's beat: a count beyond what arrived is loss; a release ends what still waits for
        the peer. Unknown streams and malformed entries are ignored."""
        streams = self.streams
        for inbox, kind, number in read_beat(data):
            member = streams.get(inbox)
            if member is None:
                continue
            if kind == RELEASED:
                member.peer_released(number)
            elif number is not None:
                member.peer_sent(number)


class PeerLiveness:
    """The heartbeats of one connection's v2 streams, shared per peer connection (see the module)."""

    _managers: ClassVar[dict[int, PeerLiveness]] = {}  # by id() of the transport, while open

    def __init__(self, nc: Transport) -> None:
        self.nc = nc
        self.loop = asyncio.get_running_loop()
        self.mux = InboxMux.of(nc)
        self.subject = self.mux.reserve()  # what peers beat to: our `Nats-Stream-Peer`
        self.reconnects = nc.reconnects
        self.members = 0  # streams that named our subject and have not been released
        self.groups: dict[tuple[str, int], PeerGroup] = {}
        self._opening: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._period = 0.0  # seconds between ticks: a quarter of the shortest interval
        self._due = 0.0  # when the timer is due to run
        self._sending: asyncio.Task[None] | None = None
        self.body_limit = max(1024, min(BEAT_BODY_LIMIT, nc.max_payload // 2))
        self.closed = False

    # --- Membership -------------------------------------------------------------------------------

    @classmethod
    async def acquire(cls, nc: Transport) -> PeerLiveness:
        """The connection's manager (created and subscribed on first use), with one more member:
        `release()` it when the stream ends, whether it joined a group or not."""
        manager = cls._managers.get(id(nc))
        if manager is not None and manager.nc.reconnects != manager.reconnects:
            manager.interrupted()  # its streams end; new ones get a new subject
        if manager is None or manager.closed or manager.nc is not nc or manager.loop is not asyncio.get_running_loop():
            manager = cls._managers[id(nc)] = cls(nc)
            manager._opening = manager.loop.create_task(manager._open(), name="betterproto-nats peer liveness")
        manager.members += 1
        try:
            assert manager._opening is not None
            await asyncio.shield(manager._opening)
        except BaseException:
            await manager.release()
            raise
        return manager

    async def _open(self) -> None:
        try:
            await self.mux.open(self.subject, self._on_beat)
        except BaseException:
            self._shut()
            await self.mux.release(self.subject)
            raise

    async def release(self) -> None:
        """A member is done; the last one closes the manager (no subscription or timer is left)."""
        self.members -= 1
        if self.members <= 0:
            await self.close()

    def join(self, member: Member, peer_subject: str, ms: int) -> PeerGroup | None:
        """`member`'s liveness is now its peer's group (None: the manager was interrupted meanwhile).
        The peer's subject is never one of our own inboxes (`InboxMux.owns`: refused at open)."""
        if self.closed:
            return None
        key = (peer_subject, ms)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = PeerGroup(self, peer_subject, ms)
            self.mux.add(group.reply, self._on_reply)
            self._schedule()
        group.streams[member.own_inbox] = member
        return group

    def leave(self, member: Member, group: PeerGroup, released: bool) -> None:
        """`member` no longer needs liveness; `released`: name it in the next beats, so that a peer
        whose last message from us was lost does not wait for the stream forever."""
        if group.streams.get(member.own_inbox) is member:
            del group.streams[member.own_inbox]
        if group.dead:
            group.ledger.counting.pop(member, None)
            return
        if released:
            group.ledger.release(member, member.peer_inbox, member.sent_count())
        else:
            group.ledger.counting.pop(member, None)
            if not group.streams and group.ledger.empty:
                self._drop(group)

    # --- The timer --------------------------------------------------------------------------------

    def _schedule(self) -> None:
        """The next tick, a quarter of the shortest interval away (sooner, not later, when a group
        with a shorter one joins: new groups never hold the beats of the others back)."""
        if self.closed or not self.groups:
            return
        period = min(group.interval for group in self.groups.values()) / 4
        if self._timer is not None:
            if period >= self._period:
                return
            self._timer.cancel()
        self._period = period
        self._due = self.loop.time() + period
        self._timer = self.loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self.nc.reconnects != self.reconnects:
            self.interrupted()
            return
        now = self.loop.time()
        outgoing: list[tuple[str, bytes, dict[str, str], str]] = []
        suspects = False
        for group in list(self.groups.values()):
            group.heard = past_stall(group.heard, self._due, now, self._period)
            if overdue(group.heard, now, group.interval) and not self._silent(group):
                suspects = True  # silent by the clock: first read what may wait for us, then judge
            if group.dead:
                continue
            if now - group.beaten >= group.interval / 2 and (self._sending is None or self._sending.done()):
                group.beaten = now
                group.beat(outgoing)
                if not group.streams and group.ledger.empty:
                    self._drop(group)  # nothing left to say, nobody left to say it for
        if outgoing:
            self._sending = self.loop.create_task(self._publish(outgoing), name="betterproto-nats heartbeat")
        if suspects:
            self.mux.catch_up(self._judge)
        self._schedule()

    def _silent(self, group: PeerGroup) -> bool:
        """The peer said nothing for `MISSED_BEATS` intervals of what we have read (`mux.progress`:
        a busy loop or a backlog on our socket is not the peer's silence); then its streams end."""
        if not silent(group.heard, self.mux.progress, group.interval):
            return False
        self._kill(group, silence(group.interval), tell=True)
        return True

    def _judge(self, caught_up: bool) -> None:
        """After catching up on what arrived: the silent groups end; a group still silent by the clock
        but heard before the round began needs a later round (a failed round: the next tick asks)."""
        if self.closed or not caught_up:
            return
        now = self.loop.time()
        again = False
        for group in list(self.groups.values()):
            if overdue(group.heard, now, group.interval) and not self._silent(group):
                again = True
        if again:
            self.mux.catch_up(self._judge)

    async def _publish(self, outgoing: list[tuple[str, bytes, dict[str, str], str]]) -> None:
        for subject, data, headers, reply in outgoing:
            try:
                await self.nc.publish(subject, data, reply=reply, headers=headers)
            except Exception:
                return  # a closed connection shows up as silence on the other side

    # --- What arrives -----------------------------------------------------------------------------

    def _on_beat(self, msg: Msg) -> None:
        """A peer's beat: its group heard from it; the entries are read."""
        if self.closed:
            return
        if self.nc.reconnects != self.reconnects:
            self.interrupted()
            return
        sender = beat_sender(msg.headers)
        if sender is None:
            return
        if sender[0] == self.subject:  # our own beat (a peer that named our subject as its own): no word from anyone
            return
        group = self.groups.get(sender)
        if group is not None:
            group.heard = self.loop.time()
            group.read(msg.data)

    def _on_reply(self, msg: Msg) -> None:
        """On a group's reply subject: a no-responders status says the peer's connection is gone."""
        if self.closed or not is_no_responders(msg.headers):
            return
        for group in list(self.groups.values()):
            if group.reply == msg.subject:
                self._kill(group, "the peer's connection is gone (no responders)", tell=False)

    # --- Ending -----------------------------------------------------------------------------------

    def _kill(self, group: PeerGroup, why: str, tell: bool) -> None:
        """The peer is gone (`tell`: or seems to be; per stream it is told, should it hear it): all
        its streams end."""
        group.dead = True
        self._drop(group)
        for member in list(group.streams.values()):
            member.peer_unreachable(why, tell)

    def _drop(self, group: PeerGroup) -> None:
        if self.groups.get((group.subject, group.ms)) is group:
            del self.groups[(group.subject, group.ms)]
            self.mux.discard(group.reply)

    def interrupted(self) -> None:
        """Our connection reconnected: anything may have been lost in the gap, so every shared stream
        ends (and the peer is told, per stream: it hears nothing more from this subject)."""
        if self.closed:
            return
        groups = list(self.groups.values())
        self._shut()
        for group in groups:
            self._kill(group, "the NATS connection was interrupted", tell=True)
        self.loop.create_task(self._let_go(), name="betterproto-nats peer liveness close")

    def _shut(self) -> None:
        """No more beats, groups or new members (a new stream gets a new manager)."""
        self.closed = True
        if self._managers.get(id(self.nc)) is self:
            del self._managers[id(self.nc)]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for group in self.groups.values():
            self.mux.discard(group.reply)
        self.groups.clear()
        sending, self._sending = self._sending, None
        if sending is not None and not sending.done():
            sending.cancel()

    async def _let_go(self) -> None:
        if self._opening is not None and not self._opening.done():
            await asyncio.gather(self._opening, return_exceptions=True)
        await self.mux.release(self.subject)

    async def close(self) -> None:
        """Stop the timer and let go of our subjects (idempotent)."""
        if not self.closed:
            self._shut()
            await self._let_go()
