"""`Receiver`: the receiving rules of one direction of a stream, as a small state machine over plain
values (in the style of h11): `feed(headers, body)` says what a frame that arrived on the stream's
inbox is, `consumed(size)` counts what the application took and says when a v2 ack is due. The
driver (`streaming/reader.py`) moves the frames from NATS to it and the acks from it to NATS; the
rules are here, tested with no event loop (tests/test_core.py).

    state       input (feed)                                 output                 next state
    RECEIVING   data, Nats-Stream-Seq = fed + 1              Data (batch unpacked)  RECEIVING
    RECEIVING   data, another seq / malformed seq or batch   Failed (DATA_LOSS)     FAILED
    RECEIVING   end marker, count = fed (or none)            END                    ENDED
    RECEIVING   end marker with the error pair               Failed (its error)     FAILED
    RECEIVING   end marker, another count                    Failed (DATA_LOSS)     FAILED
    RECEIVING   an error answer without end marker           Failed (its error)     FAILED
    RECEIVING   anything else (open, stray control, status)  None (skip it)         RECEIVING
    ENDED/FAILED anything                                    None                   (unchanged)

`fed`: the last sequence number that arrived in order (a batch's last). `peer_done` says the peer
sent its last frame (an end marker or an error answer): nothing is left to cancel. Pure: no
asyncio, no I/O.
"""

from __future__ import annotations

import enum
from typing import Mapping

from .batch import unpack
from .errors import ErrorCode, RpcError
from .headers import (
    BLOB_SIZE,
    END_TRUE,
    MAX_BATCH,
    STREAM_BATCH,
    STREAM_COUNT,
    STREAM_END,
    STREAM_SEQ,
    caller_headers,
    error_from_headers,
    parse_uint,
    quote,
)
from .loss import short_end
from .negotiation import Window


class ReceiverState(enum.Enum):
    RECEIVING = "receiving"
    ENDED = "ended"  # the peer's end marker arrived, its count matched
    FAILED = "failed"  # the peer's error, or what arrived broke the rules (`error`)


class Data:
    """Stream messages in sequence: `body`, then `more` (the rest of a batched frame) when the frame
    held several."""

    __slots__ = ("body", "more")

    def __init__(self, body: bytes, more: list[bytes] | None = None) -> None:
        self.body = body
        self.more = more


class End:
    """The peer ended the stream cleanly (its count matched)."""

    __slots__ = ()


END = End()


class Failed:
    """The stream failed: the peer's error, or a rule it broke (DATA_LOSS)."""

    __slots__ = ("error",)

    def __init__(self, error: RpcError) -> None:
        self.error = error


def batch_size(text: str | None) -> int | None:
    """A `Nats-Stream-Batch` value: 1..MAX_BATCH, else None (malformed). The one reading of it: the
    receiving rules fail a frame with a malformed one, an inbox counts such a frame as one message."""
    size = parse_uint(text)
    return size if size and size <= MAX_BATCH else None


def stream_positions(headers: Mapping[str, str] | None) -> int:
    """How many positions of the peer's stream a message takes, as its headers claim (before the
    rules check them): a data frame its batch (one when malformed), an end marker one, anything else
    (control, statuses) none. What an inbox counts against the window and for the peer's counts."""
    if headers is None:
        return 0
    if STREAM_SEQ in headers:
        batch = headers.get(STREAM_BATCH)
        return 1 if batch is None else (batch_size(batch) or 1)
    return 1 if STREAM_END in headers else 0


class Receiver:
    """One direction's receiving rules (see the module): sequence from 1, batches unpacked, the end
    marker's count, the peer's first headers, and v2 ack accounting (`acknowledge`)."""

    __slots__ = (
        "method", "state", "finished", "error", "peer_done", "received", "bytes_received", "fed", "headers", "blob_size",
        "_ack_messages", "_ack_bytes", "_unacked_messages", "_unacked_bytes",
    )

    def __init__(self, method: str | None = None) -> None:
        self.method = method
        self.state = ReceiverState.RECEIVING
        self.finished = False  # ENDED or FAILED: no more messages (an attribute: read per message)
        self.error: RpcError | None = None
        self.peer_done = False  # the peer sent its last frame (end marker or error answer)
        self.received = 0  # messages the application took (`consumed`)
        self.bytes_received = 0
        self.fed = 0  # the last sequence number fed in order (a batch's last)
        self.headers: dict[str, str] = {}  # the peer's caller headers on its first frame
        self.blob_size: int | None = None  # a chunked stream's size, when the sender said it
        self._ack_messages = 0  # v2: ack every this many messages (0: no acks, v1) ...
        self._ack_bytes = 0  # ... or bytes, since the last ack
        self._unacked_messages = 0
        self._unacked_bytes = 0

    @property
    def peer_stops(self) -> bool:
        """The peer stops sending by itself, so nothing is left to cancel: it sent its last frame,
        or the stream failed on the call's deadline (which a v2 peer knows too)."""
        error = self.error
        return self.peer_done or (error is not None and error.code == ErrorCode.DEADLINE_EXCEEDED)

    def acknowledge(self, window: Window) -> None:
        """v2: acknowledge consumed messages at the latest when half the window we granted (in
        messages or in bytes) was consumed since the last ack."""
        self._ack_messages = max(1, window.messages // 2)
        self._ack_bytes = max(1, window.max_bytes // 2)

    def fail(self, error: RpcError) -> Failed:
        """Fail the stream with `error` (also the driver's, e.g. a body that does not decode)."""
        self.state = ReceiverState.FAILED
        self.finished = True
        self.error = error
        return Failed(error)

    def _loss(self, text: str) -> Failed:
        return self.fail(RpcError(ErrorCode.DATA_LOSS, text, method=self.method))

    def feed(self, headers: Mapping[str, str] | None, body: bytes) -> Data | End | Failed | None:
        """What a frame that arrived on the stream's inbox means (the table in the module)."""
        if not headers:
            return None
        if self.finished:
            if not self.peer_done and (headers.get(STREAM_END) == END_TRUE or error_from_headers(headers) is not None):
                self.peer_done = True  # what is drained after a failure: the peer's last frame
            return None
        if self.fed == 0 and not self.headers:
            self._first(headers)
        if headers.get(STREAM_END) == END_TRUE:
            self.peer_done = True
            error = error_from_headers(headers, self.method)
            if error is not None:
                return self.fail(error)
            short = short_end(self.fed, parse_uint(headers.get(STREAM_COUNT)))  # malformed count: as if absent
            if short is not None:
                return self._loss(short)
            self.state = ReceiverState.ENDED
            self.finished = True
            return END
        seq_text = headers.get(STREAM_SEQ)
        if seq_text is not None:
            seq = parse_uint(seq_text)
            if seq is None:
                return self._loss(f"malformed {STREAM_SEQ} {quote(seq_text)}")
            if seq != self.fed + 1:
                return self._loss(f"message lost or repeated: expected {STREAM_SEQ} {self.fed + 1}, got {seq}")
            batch_text = headers.get(STREAM_BATCH)
            if batch_text is None:
                self.fed = seq
                return Data(body)
            batch = batch_size(batch_text)
            if batch is None:
                return self._loss(f"malformed {STREAM_BATCH} {quote(batch_text)}")
            bodies = unpack(body, batch)
            if bodies is None:
                return self._loss(f"malformed batched frame: not {batch} length-prefixed messages")
            self.fed = seq + batch - 1
            return Data(bodies[0], bodies[1:] if batch > 1 else None)
        error = error_from_headers(headers, self.method)
        if error is not None:  # an answer that is not data: a unary-style error, or no responders
            self.peer_done = True
            return self.fail(error)
        return None

    def _first(self, headers: Mapping[str, str]) -> None:
        """The peer's first frame: its caller headers (a handler's response headers), and a blob's size."""
        self.headers = caller_headers(headers)
        if BLOB_SIZE in headers:
            self.blob_size = parse_uint(headers[BLOB_SIZE])

    def consumed(self, size: int) -> int | None:
        """The application took the next message (`size` body bytes); returns the seq to acknowledge
        when an ack is due (cumulative), else None. The driver sends it."""
        self.received = received = self.received + 1
        self.bytes_received += size
        if not self._ack_messages:
            return None
        self._unacked_messages += 1
        self._unacked_bytes += size
        if self._unacked_messages >= self._ack_messages or self._unacked_bytes >= self._ack_bytes:
            self._unacked_messages = self._unacked_bytes = 0
            return received
        return None
