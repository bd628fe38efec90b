"""`Sender`: the sending rules of one direction of a stream, as a small state machine over plain
values (in the style of h11): numbering from 1, the window a v2 receiver granted (messages and body
bytes beyond its last cumulative ack, how many messages one batched frame may hold), the headers of
each frame and of the end marker with the count sent. The driver (`streaming/writer.py`) batches,
waits for credit (`streaming/flow.py`) and publishes; the rules are here, tested with no event loop.

    state   input                                   output                                   next
    OPEN    fits(size)                              may it go now (one always fits)           OPEN
    OPEN    add(size)                               its seq (counted against the window)      OPEN
    OPEN    data_headers(first, count)              {Seq: first} (+ {Batch: count} when > 1)  OPEN
    OPEN    on_ack(seq)                             credit back (False: old or repeated ack)  OPEN
    OPEN    end(error, first headers, max_payload)  {End: true, Count: sent} (+ error pair)   ENDED
    ENDED   end(...)                                the same end marker again (a first-hop retry)  ENDED

Pure: no asyncio, no I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

from .errors import ErrorCode, RpcError
from .headers import END_TRUE, STREAM_BATCH, STREAM_COUNT, STREAM_END, STREAM_SEQ, error_headers, message_size
from .negotiation import Window

# Stands for a queue that holds nothing and was not allocated yet: an empty deque costs about 600
# bytes, which thousands of idle streams would each hold. Never appended to (it has room for none).
EMPTY_QUEUE: deque[Any] = deque(maxlen=0)


def data_headers(first: int, count: int) -> dict[str, str]:
    """A data frame's headers: its first message's seq and, for a batch, how many it holds."""
    if count == 1:
        return {STREAM_SEQ: str(first)}
    return {STREAM_SEQ: str(first), STREAM_BATCH: str(count)}


def refused_end(refusal: Mapping[str, str]) -> dict[str, str]:
    """The end marker of a server stream refused before it started (admission control): nothing
    was sent, and the refusal's error pair with its retry hint."""
    return {STREAM_END: END_TRUE, STREAM_COUNT: "0", **refusal}


class Sender:
    """One direction's sending rules (see the module). Without a window (a v1 peer, or before v2 is
    confirmed) everything fits and frames hold one message each."""

    __slots__ = (
        "sent", "bytes_sent", "ended", "limited", "messages", "max_bytes", "batch", "_in_flight", "bytes_in_flight",
        "acked", "peak_messages", "peak_bytes",
    )

    def __init__(self, window: Window | None = None) -> None:
        self.sent = 0  # the last sequence number given out
        self.bytes_sent = 0
        self.ended = False
        self.limited = False  # a window holds us (v2)
        self.messages = self.max_bytes = 0
        self.batch = 1  # messages one frame may hold
        self._in_flight: deque[tuple[int, int]] = EMPTY_QUEUE  # (seq, body size) beyond the last ack
        self.bytes_in_flight = 0
        self.acked = 0
        self.peak_messages = 0
        self.peak_bytes = 0
        if window is not None:
            self.limit(window)

    def limit(self, window: Window) -> None:
        """The receiver granted `window` (v2): at most `messages` data messages and `max_bytes` body
        bytes beyond the last acknowledged seq, `batch` messages per frame (never more than the
        window holds)."""
        self.limited = True
        self.messages = max(1, window.messages)
        self.max_bytes = max(1, window.max_bytes)
        self.batch = max(1, min(window.batch, self.messages))

    def fits(self, size: int) -> bool:
        """A message of `size` body bytes may be sent now."""
        if not self._in_flight:
            return True  # one message always goes, whatever its size (and nothing is counted without a window)
        return len(self._in_flight) < self.messages and self.bytes_in_flight + size <= self.max_bytes

    def add(self, size: int) -> int:
        """Count the next message (`size` body bytes): its seq."""
        self.sent = seq = self.sent + 1
        self.bytes_sent += size
        if self.limited:
            in_flight = self._in_flight
            if in_flight is EMPTY_QUEUE:
                in_flight = self._in_flight = deque()
            in_flight.append((seq, size))
            self.bytes_in_flight += size
            if len(in_flight) > self.peak_messages:
                self.peak_messages = len(in_flight)
            if self.bytes_in_flight > self.peak_bytes:
                self.peak_bytes = self.bytes_in_flight
        return seq

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

    def end(self, error: RpcError | None, first: Mapping[str, str] | None, max_payload: int) -> dict[str, str]:
        """The end marker: the count sent, the response headers when nothing carried them yet
        (`first`, already made safe), the error pair when failing. Headers beyond `max_payload` are
        dropped for a RESOURCE_EXHAUSTED end: the stream ends all the same."""
        self.ended = True
        headers = {STREAM_END: END_TRUE, STREAM_COUNT: str(self.sent)}
        if first:
            headers.update(first)
        if error is not None:
            headers.update(error_headers(error.code, error.message))
        if message_size(0, headers) > max_payload:
            too_big = f"the end marker's headers exceed the server's max_payload of {max_payload}"
            headers = {STREAM_END: END_TRUE, STREAM_COUNT: str(self.sent)}
            headers.update(error_headers(ErrorCode.RESOURCE_EXHAUSTED, too_big))
        return headers
