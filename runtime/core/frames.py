"""How a message received on a stream inbox is classified (`Frame`: data with its seq and batch
size, end marker with its count, error, other) and what counts as a v2 control message. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

from .errors import ErrorCode, RpcError
from .headers import (
    CONTROL,
    END_TRUE,
    ERROR,
    MAX_BATCH,
    STREAM_BATCH,
    STREAM_COUNT,
    STREAM_END,
    STREAM_SEQ,
    error_from_headers,
    parse_uint,
    quote,
)


class FrameKind(enum.Enum):
    """What a message received on a stream inbox means."""

    DATA = "data"  # carries Nats-Stream-Seq: one message of the stream, or a batch of them
    END = "end"  # Nats-Stream-End: true, possibly with an error
    ERROR = "error"  # an error answer without end marker (a unary-style reply, or a 503 status)
    OTHER = "other"  # anything else: not data (open/ack messages, unknown control)


@dataclass(slots=True)
class Frame:
    kind: FrameKind
    seq: int = 0
    count: int | None = None  # Nats-Stream-Count on an end marker
    batch: int = 1  # Nats-Stream-Batch on data: how many messages the body holds
    error: RpcError | None = None


def is_control(headers: Mapping[str, str] | None) -> bool:
    """A v2 control message (ack, heartbeat, cancel, open): empty body, no seq, no end marker."""
    if not headers or STREAM_SEQ in headers or STREAM_END in headers:
        return False
    return any(name in headers for name in CONTROL)


def classify(headers: Mapping[str, str] | None, method: str | None = None) -> Frame:
    """Classify a message received on a stream inbox (`R` or `S`)."""
    if not headers:
        return Frame(FrameKind.OTHER)
    if headers.get(STREAM_END) == END_TRUE:
        count = parse_uint(headers.get(STREAM_COUNT))  # malformed: ignored, as if absent
        return Frame(FrameKind.END, count=count, error=error_from_headers(headers, method))
    seq_text = headers.get(STREAM_SEQ)
    if seq_text is not None:
        seq = parse_uint(seq_text)
        if seq is None:
            return Frame(
                FrameKind.ERROR,
                error=RpcError(ErrorCode.DATA_LOSS, f"malformed {STREAM_SEQ} {quote(seq_text)}", method=method),
            )
        batch_text = headers.get(STREAM_BATCH)
        if batch_text is None:
            return Frame(FrameKind.DATA, seq=seq)
        batch = parse_uint(batch_text)
        if not batch or batch > MAX_BATCH:
            return Frame(
                FrameKind.ERROR,
                error=RpcError(ErrorCode.DATA_LOSS, f"malformed {STREAM_BATCH} {quote(batch_text)}", method=method),
            )
        return Frame(FrameKind.DATA, seq=seq, batch=batch)
    error = error_from_headers(headers, method)
    if error is not None:
        return Frame(FrameKind.ERROR, error=error)
    return Frame(FrameKind.OTHER)
