"""Flow-control accounting (protocol v2), pure: a sender's `Credit` (data messages and bytes beyond the
last acknowledged seq) and a receiver's `AckPolicy` (acknowledge after half the window), acknowledged
cumulatively; `NO_ACKS` for v1 peers.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Awaitable, Callable, Protocol

from .negotiation import Window

# Stands for a queue that holds nothing and was not allocated yet: an empty deque costs about 600
# bytes, which thousands of idle streams would each hold. Never appended to (it has room for none).
EMPTY_QUEUE: deque[Any] = deque(maxlen=0)


class Credit:
    """A sender's credit, the accounting only: at most `messages` data messages and `max_bytes` body
    bytes beyond the last acknowledged seq (one message always fits, whatever its size); `batch`:
    how many messages the receiver takes in one frame. `FlowWindow` adds the waiting."""

    __slots__ = ("messages", "max_bytes", "batch", "_in_flight", "bytes_in_flight", "acked", "peak_messages", "peak_bytes")

    def __init__(self, window: Window) -> None:
        self.messages = max(1, window.messages)
        self.max_bytes = max(1, window.max_bytes)
        self.batch = max(1, min(window.batch, self.messages))
        self._in_flight: deque[tuple[int, int]] = EMPTY_QUEUE  # (seq, body size)
        self.bytes_in_flight = 0
        self.acked = 0
        self.peak_messages = 0
        self.peak_bytes = 0

    def fits(self, size: int) -> bool:
        """A message of `size` body bytes may be sent now."""
        if not self._in_flight:
            return True  # one message always goes, whatever its size
        return len(self._in_flight) < self.messages and self.bytes_in_flight + size <= self.max_bytes

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

    def on_ack(self, seq: int) -> bool:
        """Everything up to `seq` was consumed by the receiver; False when that was known already
        (an old or repeated ack: nothing comes back)."""
        if seq <= self.acked:
            return False
        self.acked = seq
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= seq:
            self.bytes_in_flight -= in_flight.popleft()[1]
        if not in_flight:
            self._in_flight = EMPTY_QUEUE
        return True


class Acknowledger(Protocol):
    """What a reader tells about each message the application consumed; returns the ack to await
    when one is due (most messages need none, so no coroutine per message)."""

    def consumed(self, seq: int, size: int) -> Awaitable[None] | None: ...


class NoAcks:
    """No acknowledgements (a v1 peer)."""

    def consumed(self, seq: int, size: int) -> Awaitable[None] | None:
        return None


NO_ACKS = NoAcks()


class AckPolicy:
    """The receiver's side: acknowledge consumed messages at the latest when half the window (in
    messages or in bytes) has been consumed since the last acknowledgement."""

    __slots__ = ("every_messages", "every_bytes", "_send_ack", "_messages", "_bytes")

    def __init__(self, window: Window, send_ack: Callable[[int], Awaitable[None]]) -> None:
        self.every_messages = max(1, window.messages // 2)
        self.every_bytes = max(1, window.max_bytes // 2)
        self._send_ack = send_ack
        self._messages = 0
        self._bytes = 0

    def consumed(self, seq: int, size: int) -> Awaitable[None] | None:
        self._messages += 1
        self._bytes += size
        if self._messages >= self.every_messages or self._bytes >= self.every_bytes:
            self._messages = self._bytes = 0
            return self._send_ack(seq)
        return None
