"""Flow-control accounting (protocol v2), pure: a sender's `Credit` (data messages and bytes beyond the
last acknowledged seq, acknowledged cumulatively). When a receiver acknowledges is its rules'
(`core.receiver.Receiver.consumed`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

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
