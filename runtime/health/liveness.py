"""Protocol v2 heartbeats per stream, for peers that do not share them per connection (`Liveness`,
one loop timer per stream, no task); the rules are `core.heartbeats`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Awaitable, Callable

from ..core.heartbeats import overdue, past_stall, silence, silent

if TYPE_CHECKING:
    from ..net.mux import InboxMux


class Liveness:
    """Per-stream heartbeats (a peer that does not share them per connection, `peers.py`).

    Sends a heartbeat when nothing was sent for half the `interval` (so the peer hears from us at
    least once an interval, and a heartbeat that finds the peer's inbox gone comes back as a
    no-responders status within about an interval); calls `on_dead(why, tell)` after
    `MISSED_BEATS` intervals without hearing anything (data, ack or heartbeat) in what we have read
    (`mux.progress`: our own backlog is not the peer's silence), or, with `tell` (the peer is still
    there and should hear why), once `interrupted()` says our connection was lost meanwhile
    (messages in that gap may be gone)."""

    def __init__(
        self,
        interval: float,
        send_heartbeat: Callable[[], Awaitable[None]],
        on_dead: Callable[[str, bool], None],
        mux: InboxMux,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        self.interval = interval
        self._mux = mux
        self._send_heartbeat = send_heartbeat
        self._on_dead = on_dead
        self._interrupted = interrupted
        self._loop = asyncio.get_running_loop()
        self.last_sent = self.last_heard = self._due = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._sending: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        self.last_sent = self.last_heard = self._loop.time()
        self._schedule()

    def heard(self) -> None:
        self.last_heard = self._loop.time()

    def sent(self) -> None:
        self.last_sent = self._loop.time()

    def _tick(self) -> None:
        now = self._loop.time()
        if self._interrupted():
            self._timer = None
            self._on_dead("the NATS connection was interrupted", True)
            return
        self.last_heard = past_stall(self.last_heard, self._due, now, self.interval / 4)
        if overdue(self.last_heard, now, self.interval):  # silent by the clock: catch up, judge
            if self._silent():
                return
            self._mux.catch_up(self._judge)
        if now - self.last_sent >= self.interval / 2 and (self._sending is None or self._sending.done()):
            self.last_sent = now
            self._sending = self._loop.create_task(self._beat(), name="betterproto-nats heartbeat")
        self._schedule()

    def _schedule(self) -> None:
        self._due = self._loop.time() + self.interval / 4
        self._timer = self._loop.call_at(self._due, self._tick)

    def _silent(self) -> bool:
        """Nothing heard for `MISSED_BEATS` intervals of what we have read: the peer is gone (the
        stream ends: True)."""
        if not silent(self.last_heard, self._mux.progress, self.interval):
            return False
        self.stop()
        self._on_dead(silence(self.interval), False)
        return True

    def _judge(self, caught_up: bool) -> None:
        """After catching up: judge again (a round that began before the silence did needs another)."""
        if caught_up and not self._stopped and overdue(self.last_heard, self._loop.time(), self.interval):
            if not self._silent():
                self._mux.catch_up(self._judge)

    async def _beat(self) -> None:
        try:
            await self._send_heartbeat()
        except Exception:
            pass  # a closed connection shows up as silence on the other side

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sending is not None and not self._sending.done():
            self._sending.cancel()
