"""A writer's flow control: the `SendCredit` it asks before sending (`FlowWindow` in v2, `Unlimited`
for v1 peers), so writers never ask which version they speak. The accounting itself is
`core.credit.Credit`; this adds the waiting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from ..core.credit import EMPTY_QUEUE
from ..core.negotiation import Window


class SendCredit(Protocol):
    """What a writer asks before sending and tells after; `batch`: how many messages the receiver
    takes in one batched frame (1: one NATS message each)."""

    batch: int

    async def acquire(self, size: int) -> None: ...

    def ready(self, size: int) -> bool:
        """`acquire(size)` would return at once (no wait, no error): callers may skip it."""
        ...

    def sent(self, seq: int, size: int) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Unlimited:
    """No flow control (a v1 peer): sending never waits, unless the call ended."""

    batch = 1

    def __init__(self) -> None:
        self._failure: BaseException | None = None

    async def acquire(self, size: int) -> None:
        if self._failure is not None:
            raise self._failure

    def ready(self, size: int) -> bool:
        return self._failure is None

    def sent(self, seq: int, size: int) -> None:
        pass

    def fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error


class FlowWindow:
    """The sender's credit: at most `messages` data messages and `max_bytes` body bytes beyond the
    last acknowledged seq. `acquire` blocks when out of credit; nothing buffers without bound."""

    __slots__ = (
        "messages", "max_bytes", "batch", "_in_flight", "bytes_in_flight", "acked", "peak_messages", "peak_bytes",
        "_waiter", "_failure",
    )

    def __init__(self, window: Window) -> None:
        self.messages = max(1, window.messages)
        self.max_bytes = max(1, window.max_bytes)
        self.batch = max(1, min(window.batch, self.messages))
        self._in_flight: deque[tuple[int, int]] = EMPTY_QUEUE  # (seq, body size)
        self.bytes_in_flight = 0
        self.acked = 0
        self.peak_messages = 0
        self.peak_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    def _fits(self, size: int) -> bool:
        if not self._in_flight:
            return True  # one message always goes, whatever its size
        return len(self._in_flight) < self.messages and self.bytes_in_flight + size <= self.max_bytes

    def ready(self, size: int) -> bool:
        return self._failure is None and self._fits(size)

    async def acquire(self, size: int) -> None:
        while not self._fits(size):
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._failure is not None:
            raise self._failure

    def sent(self, seq: int, size: int) -> None:
        in_flight = self._in_flight
        if in_flight is EMPTY_QUEUE:
            in_flight = self._in_flight = deque()
        in_flight.append((seq, size))
        self.bytes_in_flight += size
        if len(in_flight) > self.peak_messages:
            self.peak_messages = len(in_flight)
        if self.bytes_in_flight > self.peak_bytes:
            self.peak_bytes = self.bytes_in_flight

    def on_ack(self, seq: int) -> None:
        """Everything up to `seq` was consumed by the receiver."""
        if seq <= self.acked:
            return
        self.acked = seq
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= seq:
            self.bytes_in_flight -= in_flight.popleft()[1]
        if not in_flight:
            self._in_flight = EMPTY_QUEUE
        self._wake()

    def fail(self, error: BaseException) -> None:
        """Wake a blocked sender with `error` (the call ended or the peer is gone)."""
        if self._failure is None:
            self._failure = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
