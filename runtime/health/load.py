"""How far behind the event loop runs: `LoopLag`, the signal admission control refuses new calls on.

A message that arrives waits for the loop to come round to it; how long is what a caller feels and
what a busy service adds to every call it already accepted. A timer due every `PERIOD` seconds
measures it: how late it fires. The estimate (`seconds`) is the lesser of the last `SAMPLES`
samples, or how long the sample now due is overdue when that is more: one long loop turn that is
over (a handler that computed for a while) does not read as overload, since the loop is free again;
lag that the recent samples agree on does, and so does a loop turn that is still running long (a
burst of calls let in within it would all wait for it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, ClassVar

PERIOD = 0.025  # seconds between samples: 40 cheap callbacks a second while anyone listens
SAMPLES = 2  # the estimate: the least of this many recent samples


class LoopLag:
    """The running loop's lag in seconds (`seconds`), sampled while it has users (`acquire`,
    `release`): one per event loop, shared by every service and client on it."""

    _monitors: ClassVar[dict[asyncio.AbstractEventLoop, LoopLag]] = {}

    __slots__ = ("loop", "clock", "users", "recent", "due", "listeners", "_samples", "_next", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # `loop.time()` without its Python frame where it is `time.monotonic()` (asyncio's own loops):
        # admission control reads the clock for every new call
        self.clock: Callable[[], float] = time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        self.users = 0
        self.recent = 0.0  # how late the recent samples fired, at the least
        self._samples = [0.0] * SAMPLES
        self._next = 0  # the slot of `_recent` the next sample goes to
        self.listeners: list[Callable[[], None]] = []  # called after every sample (callers add and remove)
        self.due = loop.time() + PERIOD  # when the next sample is due (later: the loop is behind by the difference)
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def acquire(cls) -> LoopLag:
        """The running loop's monitor, sampling until the matching `release()`."""
        loop = asyncio.get_running_loop()
        monitor = cls._monitors.get(loop)
        if monitor is None:
            monitor = cls._monitors[loop] = cls(loop)
        monitor.users += 1
        if monitor._timer is None:
            monitor.due = loop.time() + PERIOD
            monitor._timer = loop.call_at(monitor.due, monitor._sample)
        return monitor

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.recent = 0.0
            self._samples = [0.0] * SAMPLES
            if self._monitors.get(self.loop) is self:
                del self._monitors[self.loop]

    @property
    def seconds(self) -> float:
        """How far behind the loop runs now (see the module)."""
        overdue = self.clock() - self.due
        return overdue if overdue > self.recent else self.recent

    def _sample(self) -> None:
        now = self.loop.time()
        self._samples[self._next] = now - self.due
        self._next = (self._next + 1) % SAMPLES
        self.recent = min(self._samples)
        self.due = now + PERIOD
        self._timer = self.loop.call_at(self.due, self._sample)
        for listener in list(self.listeners):
            listener()
