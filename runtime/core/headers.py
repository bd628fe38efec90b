"""The wire protocol's header names and values: parsing remote numbers strictly, error headers both
ways, caller and handler headers made safe, and message sizes against `max_payload`.

Pure (no I/O), tested directly against the captured Go bytes; see docs/PROTOCOL.md.
"""

from __future__ import annotations

import re
from typing import Mapping

from .errors import ErrorCode, Overloaded, RpcError

REPLY_TO = "Reply-To"
STREAM_INBOX = "Nats-Stream-Inbox"
STREAM_SEQ = "Nats-Stream-Seq"
STREAM_END = "Nats-Stream-End"
STREAM_COUNT = "Nats-Stream-Count"
ERROR = "Nats-Service-Error"
ERROR_CODE = "Nats-Service-Error-Code"
STATUS = "Status"
DESCRIPTION = "Description"
NO_RESPONDERS_STATUS = "503"

# Protocol v2 (ours, negotiated per call; never sent to a v1 peer).
STREAM_VERSION = "Nats-Stream-Version"
STREAM_WINDOW = "Nats-Stream-Window"
STREAM_WINDOW_BYTES = "Nats-Stream-Window-Bytes"
STREAM_ACK = "Nats-Stream-Ack"
STREAM_HEARTBEAT = "Nats-Stream-Heartbeat"
STREAM_CANCEL = "Nats-Stream-Cancel"
# On heartbeats of a side that sends a stream: its frames (data messages, then the end marker) handed
# to NATS before the heartbeat, which follows them on the same subject (so they must have arrived).
STREAM_SENT = "Nats-Stream-Sent"
# On the v2 offer and confirmation: the sender's connection liveness subject (shared heartbeats,
# runtime/peers.py); on a shared heartbeat: who sends it.
STREAM_PEER = "Nats-Stream-Peer"
# On a data message: it holds this many stream messages (a batch); in a window offer: the most a
# receiver accepts in one. Only sent to a peer that offered it.
STREAM_BATCH = "Nats-Stream-Batch"
DEADLINE = "Nats-Deadline"
# Beside a RESOURCE_EXHAUSTED error pair: the service refused the call before starting it (admission
# control) and asks the caller to wait this many milliseconds before trying again.
RETRY_AFTER = "Nats-Retry-After"
# On a request our client sends again after a refusal, to the same reply subject: which try this is
# (2 for the first retry). A service that already took the call with that reply subject drops it.
RETRY = "Nats-Retry"
# A hint is clamped to this both ways: what we send, and where one from the wire is parsed (a peer's
# number must not park a caller; admission control never asks for more, health/admission.py).
MAX_RETRY_AFTER_MS = 5_000
# Optional, on the first message of a chunked stream: the blob's size in bytes, for progress reports.
BLOB_SIZE = "Nats-Blob-Size"
VERSION_2 = "2"
CONTROL = (STREAM_ACK, STREAM_HEARTBEAT, STREAM_CANCEL, STREAM_VERSION)

# Headers of ours that must never be taken for caller headers or echoed back.
PROTOCOL_HEADERS = frozenset(
    {
        REPLY_TO, STREAM_INBOX, STREAM_SEQ, STREAM_END, STREAM_COUNT, STREAM_BATCH, STREAM_SENT, STREAM_PEER, ERROR, ERROR_CODE,
        DEADLINE, BLOB_SIZE, RETRY_AFTER, RETRY, *CONTROL,
    }
)

END_TRUE = "true"
# Protocol headers the runtime itself puts among a handler's response headers.
RESPONSE_PROTOCOL_HEADERS = frozenset({BLOB_SIZE})
MAX_BATCH = 256  # messages in one batch, at most (sent and accepted)


_UINT = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit() accepts '²'); fits in 63 bits


def parse_uint(text: str | None) -> int | None:
    """A remote non-negative integer, parsed strictly: ASCII digits, at most 18 of them; else None."""
    if text is None or not _UINT.fullmatch(text):
        return None
    return int(text)


def header_int(headers: Mapping[str, str] | None, name: str, default: int) -> int:
    """A positive integer header, or `default` when absent, malformed or zero."""
    value = parse_uint((headers or {}).get(name))
    return value if value else default


def sanitize(value: str) -> str:
    """Header values must not contain CR or LF: they would corrupt the header block."""
    if "\r" in value or "\n" in value:
        return value.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return value


MAX_ERROR_TEXT = 1024  # characters of an error message that travel or are kept from the wire
MAX_ERROR_CODE = 64


def clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    """`text` cut to `limit` characters (marked), so no error echoes remote input unbounded."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(remote: str, limit: int = 32) -> str:
    """A remote value for an error message: repr'd and short."""
    return repr(clip(remote, limit))


def error_headers(code: str, message: str, retry_after: float | None = None) -> dict[str, str]:
    """The micro error pair, capped; what every sender of ours uses (never `Status`). With
    `retry_after` (seconds): a refusal of admission control, the call not started."""
    headers = {ERROR_CODE: sanitize(clip(code, MAX_ERROR_CODE)), ERROR: sanitize(clip(message))}
    if retry_after is not None:
        headers[RETRY_AFTER] = str(retry_after_ms(retry_after))
    return headers


def retry_after_ms(seconds: float) -> int:
    """A retry hint in whole milliseconds, within 0..`MAX_RETRY_AFTER_MS` (NaN: 0; never raises)."""
    if not seconds > 0:  # also NaN
        return 0
    return round(min(seconds * 1000, MAX_RETRY_AFTER_MS))


def error_from_headers(headers: Mapping[str, str] | None, method: str | None = None) -> RpcError | None:
    """The error a message carries, if any: the micro pair first, then `Status`/`Description`.

    A three-digit `Status` is a NATS status, not an application error; 503 means no responders.
    """
    if not headers:
        return None
    code = headers.get(ERROR_CODE)
    if code:
        message = clip(headers.get(ERROR, ""))
        if code == ErrorCode.RESOURCE_EXHAUSTED:
            retry_ms = parse_uint(headers.get(RETRY_AFTER))
            if retry_ms is not None:  # a refusal of admission control, says the peer (a claim only)
                return Overloaded(message, retry_after=min(retry_ms, MAX_RETRY_AFTER_MS) / 1000, method=method)
        return RpcError(clip(code, MAX_ERROR_CODE), message, method=method)
    status = headers.get(STATUS)
    if status:
        if parse_uint(status) is not None and len(status) == 3:
            if status == NO_RESPONDERS_STATUS:
                return RpcError(ErrorCode.UNAVAILABLE, "no responders", method=method)
            return None
        return RpcError(clip(status, MAX_ERROR_CODE), clip(headers.get(DESCRIPTION, "")), method=method)
    return None


def is_no_responders(headers: Mapping[str, str] | None) -> bool:
    """The NATS server's answer to a message with a reply subject that nobody was subscribed for."""
    return bool(headers) and headers.get(STATUS) == NO_RESPONDERS_STATUS  # type: ignore[union-attr]


_RESERVED_LOWER = frozenset(name.lower() for name in (*PROTOCOL_HEADERS, STATUS, DESCRIPTION))
# RFC 7230 token characters: what nats-py accepts as a header name.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,256}")


def is_reserved(name: str) -> bool:
    """A header name of the protocol's or of NATS's (`Status`, `Description`, any `Nats-*`),
    compared case-insensitively: never a caller's or a handler's."""
    lower = name.lower()
    return lower in _RESERVED_LOWER or lower.startswith("nats-")


def caller_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The headers a caller sent, without protocol headers."""
    if not headers:
        return {}
    return {k: v for k, v in headers.items() if not is_reserved(k)}


def user_headers(headers: Mapping[str, str] | None, allow: frozenset[str] = frozenset()) -> dict[str, str]:
    """Caller- or handler-supplied headers made safe to send: valid names only, protocol names
    refused (ValueError, before anything is sent) except those in `allow` (the runtime's own, in a
    dict a handler shares), values without CR/LF."""
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"header name {clip(repr(name), 64)} is not valid: letters, digits and !#$%&'*+-.^_`|~ only")
        if is_reserved(name) and name not in allow:
            raise ValueError(f"header {name!r} is reserved for the protocol or NATS")
        out[name] = sanitize(str(value))
    return out


_HEADER_LINE = len(b"NATS/1.0\r\n")


def message_size(body_len: int, headers: Mapping[str, str] | None) -> int:
    """Bytes a message counts against `max_payload`: the header block plus the body."""
    if not headers:
        return body_len
    size = _HEADER_LINE + 2
    for name, value in headers.items():
        size += len(name.encode()) + len(value.encode()) + 4  # "name: value\r\n"
    return size + body_len


def check_size(body_len: int, headers: Mapping[str, str] | None, max_payload: int, method: str | None) -> None:
    """Fail clearly before publishing a message the server would reject (and close us for)."""
    size = message_size(body_len, headers)
    if size > max_payload:
        raise RpcError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"message of {size} bytes (headers + body) exceeds the server's max_payload of {max_payload}: "
            "raise max_payload in the nats-server configuration, or send large data as a stream "
            "((natsmicro.chunked_io) splits a blob into chunks)",
            method=method,
        )
