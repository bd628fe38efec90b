"""Admission control: whether a service takes a new call now, and when a refused caller may retry.

A service past what it can serve refuses new calls at once (RESOURCE_EXHAUSTED with a retry hint,
`Nats-Retry-After`) instead of taking them on and slowing every call it already accepted; calls it
accepted are never ended for load. Past what it can serve means any of:
- its event loop runs more than `max_loop_lag` behind (`load.LoopLag`): every message already waits
  that long, and a new call would add to it;
- its calls in progress reach their budget. Each kind (streams, unary calls) has a `Budget`: at most
  `max_concurrent_streams` / `max_concurrent_unary`, and within that a limit that adapts to the loop
  (it starts at `INITIAL_BUDGET`, grows while the lag stays low and the budget is used, and shrinks
  to below what runs when the lag passes half of `max_loop_lag`). A burst of new streams thus cannot
  be let in before the load they bring shows, and streams cannot starve unary calls;
- its connection's outgoing buffer holds more than `max_outbound_bytes` while the socket takes no
  more (the NATS server or the network does not keep up; by default half of what the connection
  buffers, nats-py's `pending_size`). A buffer that one loop turn filled and the next will write is
  not a backlog: a fast download fills it every turn.
The defaults come from measurements (docs/PERFORMANCE.md, "Overload").
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Callable, ClassVar

from ..core.errors import Overloaded
from ..net.transport import Transport, outbound_backlog
from .load import LoopLag

DEFAULT_MAX_LOOP_LAG = 0.05  # seconds
# Streams in progress before the loop has shown it lags, and how often their budget may step up: a
# stream brings its load over its first messages, so a burst is let in a step at a time.
INITIAL_STREAMS, STREAMS_GROW_EVERY = 1000, 0.1
# Unary calls in progress at first, and their steps up: a unary call's load shows at once (it runs
# now), so its budget starts small and follows the loop closely; a burst of calls that each compute
# for a while cannot all be let in within one loop turn.
INITIAL_UNARY, UNARY_GROW_EVERY = 64, 0.025
MIN_BUDGET = 8
GROWTH = 1.125  # per step up while the lag is low and the budget is used
SHRINK = 0.9  # of the calls in progress, while the lag is high
ADAPT_EVERY = 0.025  # seconds between adaptations (shrinking)
MAX_CLIENT_STREAMS = 1_000_000  # a client's budget grows up to this
MIN_RETRY_AFTER, MAX_RETRY_AFTER = 0.05, 5.0  # seconds: the hint a refusal carries


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is not taken now, and how long the caller should wait before trying again."""

    reason: str  # "loop_lag", "concurrency", "budget" or "outbound": what ran out (STATS, metrics)
    message: str
    retry_after: float


def _hint(seconds: float) -> float:
    return min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, seconds))


class Budget:
    """How many calls of one kind may be in progress now: `limit`, at most `ceiling`."""

    __slots__ = ("ceiling", "limit", "grow_every", "adapted", "grown")

    def __init__(self, ceiling: int, adaptive: bool, initial: int = INITIAL_STREAMS, grow_every: float = STREAMS_GROW_EVERY) -> None:
        self.ceiling = ceiling
        self.limit = min(ceiling, initial) if adaptive else ceiling
        self.grow_every = grow_every
        self.adapted = self.grown = 0.0  # loop times of the last adaptation and the last step up

    def adapt(self, lag: float, target: float, in_progress: int, now: float) -> None:
        """At most every `ADAPT_EVERY`: shrink below what runs, in proportion to how far the loop lags
        beyond `target`; grow by an eighth (at most every `grow_every`) while it lags less and the
        budget is nearly used."""
        if now - self.adapted < ADAPT_EVERY:
            return
        self.adapted = now
        if lag > target:
            self.limit = max(MIN_BUDGET, min(self.limit, int(in_progress * SHRINK * target / lag)))
        elif lag < target and in_progress >= self.limit * 0.75 and now - self.grown >= self.grow_every:
            self.grown = now
            self.limit = min(self.ceiling, max(self.limit + 1, int(self.limit * GROWTH)))


class Admission:
    """A service's limits, checked for every new call (`refusal`); `start`/`stop` with the service."""

    __slots__ = ("transport", "max_loop_lag", "max_outbound_bytes", "lag", "streams", "unary", "_outbound")

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
        adaptive = max_loop_lag is not None
        self.streams = Budget(max_streams, adaptive)
        self.unary = Budget(max_unary, adaptive, INITIAL_UNARY, UNARY_GROW_EVERY)
        self.lag: LoopLag | None = None

    def start(self) -> None:
        if self.max_loop_lag is not None and self.lag is None:
            self.lag = LoopLag.acquire()

    def stop(self) -> None:
        lag, self.lag = self.lag, None
        if lag is not None:
            lag.release()

    def refusal(self, unary: bool, in_progress: int, typical_call: Callable[[], float]) -> Refusal | None:
        """None: take the call. `in_progress`: calls of its kind now; `typical_call()`: seconds an
        endpoint's calls usually take (when a slot may free up; asked only when refusing)."""
        budget = self.unary if unary else self.streams
        if in_progress >= budget.ceiling:
            kind = "unary calls" if unary else "streams"
            return Refusal("concurrency", f"{budget.ceiling} {kind} already in progress", _hint(typical_call()))
        monitor = self.lag
        if monitor is not None:
            max_lag = self.max_loop_lag
            assert max_lag is not None  # (a monitor runs only with a limit)
            lag = monitor.seconds
            if lag > max_lag / 2 or in_progress >= budget.limit * 0.75:  # else the budget has nothing to adapt
                budget.adapt(lag, max_lag / 2, in_progress, monitor.loop.time())
            if lag > max_lag:
                return Refusal("loop_lag", f"the service is overloaded: its event loop runs {lag * 1000:.0f} ms behind", _hint(2 * lag))
            if in_progress >= budget.limit:
                kind = "unary calls" if unary else "streams"
                return Refusal(
                    "budget", f"the service is at capacity: {in_progress} {kind} in progress", _hint(min(typical_call(), 4 * max_lag))
                )
        outbound = self._outbound
        if outbound is not None:
            backlog = outbound()[0]
            if backlog > (self.max_outbound_bytes or 0):  # (`_outbound` is only set with a limit)
                return Refusal("outbound", f"the service is overloaded: {backlog} bytes wait to be sent", _hint(0.0))
        return None

    def loop_lag(self) -> float:
        """The loop's lag now, in seconds (0 when not measured)."""
        return 0.0 if self.lag is None else self.lag.seconds


class OpenGate:
    """The client side: a connection's open streams, within a `Budget` that adapts to the loop's lag.

    A client that opens more streams than it can read would slow every stream it has (its acks and
    heartbeats go out late, what arrives waits) and flood its services with requests it cannot
    follow up. So opening a stream waits, in order, while the budget is spent or the loop runs more
    than `max_loop_lag` behind; at most until the call's deadline (then `Overloaded`, raised here:
    nothing was sent). Idle streams cost the loop nothing, so they never hold the budget down.
    """

    _gates: ClassVar[dict[int, OpenGate]] = {}  # by id() of the transport, while in use

    __slots__ = ("key", "max_loop_lag", "budget", "active", "waiters", "lag")

    def __init__(self, key: int, max_loop_lag: float) -> None:
        self.key = key
        self.max_loop_lag = max_loop_lag
        self.budget = Budget(MAX_CLIENT_STREAMS, adaptive=True)
        self.active = 0  # streams that passed and have not left
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.lag = LoopLag.acquire()

    @classmethod
    def of(cls, nc: Transport, max_loop_lag: float = DEFAULT_MAX_LOOP_LAG) -> OpenGate:
        gate = cls._gates.get(id(nc))
        if gate is None or gate.lag.loop is not asyncio.get_running_loop():
            gate = cls._gates[id(nc)] = cls(id(nc), max_loop_lag)
        return gate

    def _may_open(self) -> bool:
        lag = self.lag.seconds
        self.budget.adapt(lag, self.max_loop_lag / 2, self.active, self.lag.loop.time())
        return lag <= self.max_loop_lag and self.active < self.budget.limit

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
                    retry_after=_hint(2 * behind),
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
