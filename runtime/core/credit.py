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
