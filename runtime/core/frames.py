"""What travels on a stream inbox besides the stream itself: v2 control messages, read
(`read_control`: an ack, a heartbeat with the peer's sent count, a cancel) and written
(`ack_headers`, `heartbeat_headers`, `cancel_headers`), and whether a message ends a call
(`ends_stream`). A stream's data and end marker are its `Receiver`'s (`core/receiver.py`). Pure."""

from __future__ import annotations

from typing import Mapping

from .errors import ErrorCode
from .headers import (
    CONTROL,
    END_TRUE,
    ERROR_CODE,
    STREAM_ACK,
    STREAM_BATCH,
    STREAM_CANCEL,
    STREAM_END,
    STREAM_HEARTBEAT,
    STREAM_SENT,
    STREAM_SEQ,
    clip,
    error_from_headers,
    parse_uint,
    sanitize,
)
from .receiver import batch_size

MAX_CANCEL_REASON = 256  # characters of a peer's cancel reason that are kept


def is_control(headers: Mapping[str, str] | None) -> bool:
    """A v2 control message (ack, heartbeat, cancel, open): empty body, no seq, no end marker."""
    if not headers or STREAM_SEQ in headers or STREAM_END in headers:
        return False
    return any(name in headers for name in CONTROL)


class Control:
    """A control message's content: `ack` (everything up to it consumed), `sent` (frames the peer
    handed to NATS before this heartbeat), `cancel` (the reason, clipped) with its `code`."""

    __slots__ = ("ack", "sent", "cancel", "code")

    def __init__(self, ack: int | None, sent: int | None, cancel: str | None, code: str) -> None:
        self.ack = ack
        self.sent = sent
        self.cancel = cancel
        self.code = code


def read_control(headers: Mapping[str, str] | None) -> Control | None:
    """A v2 control message read (malformed numbers as absent), or None when it is not one."""
    if not is_control(headers):
        return None
    assert headers is not None
    reason = headers.get(STREAM_CANCEL)
    code = ErrorCode.DATA_LOSS if headers.get(ERROR_CODE) == ErrorCode.DATA_LOSS else ErrorCode.CANCELLED
    return Control(
        parse_uint(headers.get(STREAM_ACK)),
        parse_uint(headers.get(STREAM_SENT)),
        None if reason is None else clip(reason, MAX_CANCEL_REASON),
        code,
    )


def ends_stream(headers: Mapping[str, str] | None) -> bool:
    """The message ends a stream: an end marker, or an error answer (a frame whose seq or batch is
    malformed counts as one: the receiving rules fail on it)."""
    if not headers:
        return False
    if headers.get(STREAM_END) == END_TRUE:
        return True
    seq = headers.get(STREAM_SEQ)
    if seq is not None:
        batch = headers.get(STREAM_BATCH)
        return parse_uint(seq) is None or (batch is not None and batch_size(batch) is None)
    return error_from_headers(headers) is not None


def ack_headers(seq: int) -> dict[str, str]:
    """An ack: everything up to `seq` was consumed (cumulative)."""
    return {STREAM_ACK: str(seq)}


def heartbeat_headers(interval_ms: int, sent: int | None) -> dict[str, str]:
    """A per-stream heartbeat; `sent`: the frames of ours handed to NATS before it (we send a stream)."""
    headers = {STREAM_HEARTBEAT: str(interval_ms)}
    if sent is not None:
        headers[STREAM_SENT] = str(sent)
    return headers


def cancel_headers(reason: str, data_loss: bool = False) -> dict[str, str]:
    """A client's cancel; `data_loss`: because messages of the call were lost."""
    headers = {STREAM_CANCEL: sanitize(clip(reason, MAX_CANCEL_REASON))}
    if data_loss:
        headers[ERROR_CODE] = ErrorCode.DATA_LOSS
    return headers
