"""Admission control: whether a service takes a new call now, and when a refused caller may retry.

A service refuses a new call only when taking it would hurt the calls it already serves, at once
(RESOURCE_EXHAUSTED with a retry hint, `Nats-Retry-After`); calls it accepted are never ended for
load. That is when any of:
- its calls of that kind in progress reach a ceiling the user configured (`max_concurrent_streams` /
  `max_concurrent_unary`);
- its event loop runs more than `max_loop_lag` behind (`load.LoopLag`): every message already waits
  that long, and a new call would add to it. Then the heaviest callers are refused first (`Callers`:
  callers told apart by their reply subject's prefix, one per connection), so one client's flood
  does not make the service refuse everybody else; past twice `max_loop_lag` everybody is refused;
- its connection's outgoing buffer holds more than `max_outbound_bytes` while the socket takes no
  more (the NATS server or the network does not keep up; by default half of what the connection
  buffers, nats-py's `pending_size`). A buffer that one loop turn filled and the next will write is
  not a backlog: a fast download fills it every turn.
Counts of calls in progress are no measure of load (10,000 idle streams cost the loop nothing, 200
calls that answer at once cost it a few milliseconds), so nothing adapts to them: what calls cost
shows in the loop's lag, and a burst of unary calls read in one loop turn is cut while it runs, once
it has kept the loop for `max_loop_lag` (`serving/unary_batch.py`). The defaults come from
measurements (docs/PERFORMANCE.md, "Overload").
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar

from ..core.errors import Overloaded
from ..net.transport import Transport, outbound_backlog
from .load import PERIOD, LoopLag

DEFAULT_MAX_LOOP_LAG = 0.05  # seconds
# Calls of each kind in progress at most, by default: a bound on memory, not on load (10,000 open
# streams hold about 100 MB: docs/PERFORMANCE.md, "Overload").
DEFAULT_MAX_CONCURRENT = 10_000
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 0.05, 5.0  # seconds: the hint a refusal carries
OPEN_BURST = 1000  # a client's streams opened per lag sample at most (then it waits for the next)
# A client's stream opens to one subject that its service has not answered yet, at most: what the
# service has queued from us stays under `DEFAULT_MAX_LOOP_LAG` of its work (an open costs it about
# 0.3 ms), so a burst of opens is paced by the service's answers instead of refused for lag.
MAX_OPENING = 32
# An open unanswered this long stops counting (a v1 server stream confirms nothing; its handler may
# send its first item much later): the window then moves on at this pace at least.
OPENING_PATIENCE = 0.25  # seconds
MAX_CALLERS = 4096  # callers told apart while the service sheds load (more: each new one counts as heavy)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is not taken now, and how long the caller should wait before trying again."""

    reason: str  # "loop_lag", "concurrency" or "outbound": what ran out (STATS, metrics)
    message: str
    retry_after: float


def retry_hint(seconds: float) -> float:
    """A refusal's hint: `seconds`, within [MIN_RETRY_AFTER, MAX_RETRY_AFTER]."""
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, seconds))


def caller_of(reply: str) -> str:
    """Who sent a request, as far as a service can tell: its reply subject without the last token
    (`_INBOX.<connection>.` for nats-py's requests and ours)."""
    return reply.rpartition(".")[0]


class Callers:
    """Requests per caller while the service sheds load (empty otherwise: nothing is counted while
    the loop keeps up). A caller that sent at least its share (the mean over the callers seen) is
    heavy and refused; a lighter one still gets in. Bounded: past `MAX_CALLERS` callers (a peer that
    makes up reply subjects) every new one counts as heavy."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.total = 0

    def heavy(self, caller: str) -> bool:
        """Count one request of `caller`'s; whether it has sent at least its share."""
        counts = self.counts
        count = counts.get(caller)
        if count is None:
            if len(counts) >= MAX_CALLERS:
                return True
            count = 0
        counts[caller] = count = count + 1
        self.total += 1
        return count * len(counts) >= self.total

    def clear(self) -> None:
        self.counts.clear()
        self.total = 0


class Admission:
    """A service's limits, checked for every new call (`refusal`); `start`/`stop` with the service."""

    __slots__ = ("transport", "max_loop_lag", "max_outbound_bytes", "lag", "max_streams", "max_unary", "callers", "_outbound")

    def __init__(
        self,
        transport: Transport,
        *,
        max_streams: int,
        max_unary: int,
        max_loop_lag: float | None,
        max_outbound_bytes: int | None,
    ) -> None:
        if max_loop_lag is not None and max_loop_lag <= 0:
            raise ValueError("max_loop_lag must be positive (or None: no limit)")
        self.transport = transport
        self.max_loop_lag = max_loop_lag
        if max_outbound_bytes is None:  # half of what the connection buffers (nats-py: pending_size)
            max_outbound_bytes = outbound_backlog(transport)[1] // 2
        self.max_outbound_bytes = max_outbound_bytes or None  # 0: no limit
        # checked for every new call: looked up once (None: no limit, or the transport cannot tell)
        self._outbound = getattr(transport, "outbound", None) if self.max_outbound_bytes is not None else None
        self.max_streams = max_streams
        self.max_unary = max_unary
        self.callers = Callers()
        self.lag: LoopLag | None = None

    def start(self) -> None:
        if self.max_loop_lag is not None and self.lag is None:
            self.lag = LoopLag.acquire()

    def stop(self) -> None:
        lag, self.lag = self.lag, None
        if lag is not None:
            lag.release()

    def refusal(self, unary: bool, in_progress: int, typical_call: Callable[[], float], reply: str = "") -> Refusal | None:
        """None: take the call. `in_progress`: calls of its kind now; `typical_call()`: seconds an
        endpoint's calls usually take (when a slot may free up; asked only when refusing); `reply`:
        the request's reply subject (who calls; looked at only while the loop lags)."""
        ceiling = self.max_unary if unary else self.max_streams
        if in_progress >= ceiling:
            kind = "unary calls" if unary else "streams"
            return Refusal("concurrency", f"{ceiling} {kind} already in progress", retry_hint(typical_call()))
        monitor = self.lag
        if monitor is not None:
            max_lag = self.max_loop_lag
            assert max_lag is not None  # (a monitor runs only with a limit)
            overdue = monitor.clock() - monitor.due  # (`monitor.seconds`, inlined: asked for every new call)
            lag = overdue if overdue > monitor.recent else monitor.recent
            if lag > max_lag:
                if self.callers.heavy(caller_of(reply)) or lag > 2 * max_lag:
                    return Refusal("loop_lag", f"the service is overloaded: its event loop runs {lag * 1000:.0f} ms behind", retry_hint(lag))
            elif self.callers.total:
                self.callers.clear()  # the loop keeps up again: everybody starts afresh
        outbound = self._outbound
        if outbound is not None:
            backlog = outbound()[0]
            if backlog > (self.max_outbound_bytes or 0):  # (`_outbound` is only set with a limit)
                return Refusal("outbound", f"the service is overloaded: {backlog} bytes wait to be sent", retry_hint(0.0))
        return None

    def loop_lag(self) -> float:
        """The loop's lag now, in seconds (0 when not measured)."""
        return 0.0 if self.lag is None else self.lag.seconds


class OpenGate:
    """The client side: a connection's stream openings wait while its own loop lags.

    A client that opens more streams than it can read would slow every stream it has (its acks and
    heartbeats go out late, what arrives waits) and flood its services with requests it cannot
    follow up. So opening a stream waits, in order, while the loop runs more than `max_loop_lag`
    behind, or once `OPEN_BURST` streams opened since the loop's lag was last sampled (a burst goes
    out a step at a time, each as the loop shows it carries the last); at most until the call's
    deadline (then `Overloaded`, raised here: nothing was sent). Open streams are not counted
    against anything: idle ones cost the loop nothing.
    """

    _gates: ClassVar[dict[int, OpenGate]] = {}  # by id() of the transport, while in use

    __slots__ = ("key", "max_loop_lag", "active", "waiters", "lag", "opened", "window")

    def __init__(self, key: int, max_loop_lag: float) -> None:
        self.key = key
        self.max_loop_lag = max_loop_lag
        self.active = 0  # streams that passed and have not left
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.lag = LoopLag.acquire()
        self.opened = 0  # streams that passed in the current sampling window
        self.window = 0  # which: loop time // the sampling period

    @classmethod
    def of(cls, nc: Transport, max_loop_lag: float = DEFAULT_MAX_LOOP_LAG) -> OpenGate:
        gate = cls._gates.get(id(nc))
        if gate is None or gate.lag.loop is not asyncio.get_running_loop():
            gate = cls._gates[id(nc)] = cls(id(nc), max_loop_lag)
        return gate

    def _may_open(self) -> bool:
        """Whether one more stream may open now (and then it is counted as opened)."""
        lag = self.lag
        if lag.seconds > self.max_loop_lag:
            return False
        window = int(lag.loop.time() / PERIOD)
        if window != self.window:
            self.window, self.opened = window, 0
        if self.opened >= OPEN_BURST:
            return False
        self.opened += 1
        return True

    async def enter(self, wait: float | None, method: str) -> None:
        """Take a place for a new stream (`leave()` when it ends), waiting at most `wait` seconds."""
        if not self.waiters and self._may_open():
            self.active += 1
            return
        future = self.lag.loop.create_future()
        self.waiters.append(future)
        if len(self.waiters) == 1:
            self.lag.listeners.append(self._release)
        try:
            async with asyncio.timeout(wait):
                await future
        except BaseException as error:
            if future.done() and not future.cancelled():
                self.leave()  # a place was given as we gave up
            else:
                future.cancel()
                self._forget(future)
            if isinstance(error, TimeoutError):
                behind = self.lag.seconds
                raise Overloaded(
                    f"the client is overloaded ({self.active} streams open, its event loop {behind * 1000:.0f} ms behind): "
                    "the stream was not opened",
                    retry_after=retry_hint(2 * behind),
                    method=method,
                    reason="client",
                ) from None
            raise

    def leave(self) -> None:
        self.active -= 1
        self._release()

    def _release(self) -> None:
        """Let waiters in, oldest first, while there is room (on every lag sample, and as streams end)."""
        waiters = self.waiters
        while waiters and self._may_open():
            future = waiters.popleft()
            if not future.done():
                future.set_result(None)
                self.active += 1
        self._idle_check()

    def _forget(self, future: asyncio.Future[None]) -> None:
        try:
            self.waiters.remove(future)
        except ValueError:
            pass
        self._idle_check()

    def _idle_check(self) -> None:
        if not self.waiters and self._release in self.lag.listeners:
            self.lag.listeners.remove(self._release)
        if not self.waiters and self.active <= 0 and self._gates.get(self.key) is self:
            del self._gates[self.key]
            self.lag.release()


class OpenWindow:
    """The client side: a connection's stream opens to one subject wait while `MAX_OPENING` of them
    are unanswered (no message from the service yet), the way a TCP sender waits for acks.

    A service reads a burst of opens faster than it can start them; what it cannot start at once
    lags its loop, and then it refuses the rest (absorbed, but sent twice). With the window, the
    service has at most `MAX_OPENING` of our opens queued, and the opens go out as fast as it
    answers them: as fast as it can take them. Each subject has its own window, so a slow service
    does not hold up opens to another. An open counts until its first answer (`answered`), its
    end, or `OPENING_PATIENCE`.
    """

    _windows: ClassVar[dict[tuple[int, str], OpenWindow]] = {}  # by (id() of the transport, subject), while in use

    __slots__ = ("key", "loop", "opening", "waiters", "_timer")

    def __init__(self, key: tuple[int, str], loop: asyncio.AbstractEventLoop) -> None:
        self.key = key
        self.loop = loop
        self.opening: dict[object, float] = {}  # unanswered opens (oldest first): when each went out
        self.waiters: deque[tuple[asyncio.Future[None], object]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, nc: Transport, subject: str) -> OpenWindow:
        key = (id(nc), subject)
        window = cls._windows.get(key)
        loop = asyncio.get_running_loop()
        if window is None or window.loop is not loop:
            window = cls._windows[key] = cls(key, loop)
        return window

    async def enter(self, call: object, wait: float | None, method: str) -> None:
        """Count `call`'s open (until `answered(call)`), waiting at most `wait` seconds for room."""
        if not self.waiters and len(self.opening) < MAX_OPENING:
            self._take(call)
            return
        future = self.loop.create_future()
        place = (future, call)
        self.waiters.append(place)
        try:
            async with asyncio.timeout(wait):
                await future
        except BaseException as error:
            if future.done() and not future.cancelled():
                self.answered(call)  # room was given as we gave up
            else:
                future.cancel()
                try:
                    self.waiters.remove(place)
                except ValueError:
                    pass
                self._idle_check()
            if isinstance(error, TimeoutError):
                raise Overloaded(
                    f"the client is overloaded ({len(self.opening)} opens to this service unanswered): the stream was not opened",
                    retry_after=retry_hint(OPENING_PATIENCE),
                    method=method,
                    reason="client",
                ) from None
            raise

    def answered(self, call: object) -> None:
        """`call`'s open was answered (or it ended): it no longer counts."""
        if self.opening.pop(call, None) is not None:
            self._let_in()

    def _take(self, call: object) -> None:
        self.opening[call] = now = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(now + OPENING_PATIENCE, self._expire)

    def _let_in(self) -> None:
        """Waiters in, oldest first, while there is room."""
        waiters, opening = self.waiters, self.opening
        while waiters and len(opening) < MAX_OPENING:
            future, call = waiters.popleft()
            if not future.done():
                self._take(call)
                future.set_result(None)
        self._idle_check()

    def _expire(self) -> None:
        """Opens unanswered for `OPENING_PATIENCE` stop counting; the timer follows the oldest left."""
        self._timer = None
        opening = self.opening
        given_up = self.loop.time() - OPENING_PATIENCE
        for call, sent in list(opening.items()):
            if sent > given_up:
                self._timer = self.loop.call_at(sent + OPENING_PATIENCE, self._expire)
                break
            del opening[call]
        self._let_in()

    def _idle_check(self) -> None:
        if not self.waiters and not self.opening:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._windows.get(self.key) is self:
                del self._windows[self.key]
