"""Protocol v2 negotiation, as pure functions: what a client offers, what a server accepts, the
defaults and the clamps. Everything about versions, windows, heartbeats and deadlines in the opening
headers is decided here, once; calls only carry out the terms.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping

from .errors import ErrorCode, RpcError
from .headers import (
    DEADLINE,
    MAX_BATCH,
    REPLY_TO,
    STREAM_BATCH,
    STREAM_HEARTBEAT,
    STREAM_INBOX,
    STREAM_PEER,
    STREAM_VERSION,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
    VERSION_2,
    header_int,
    parse_uint,
    quote,
)
from .heartbeats import DEFAULT_HEARTBEAT, MAX_HEARTBEAT, MIN_HEARTBEAT, MISSED_BEATS

# Receiver windows when the method sets no `(natsmicro.stream).max_inflight`. Measured (FACTS.md):
# 128-512 frames of 1 KiB and ~32 frames of 64 KiB run as fast as no flow control; more than 64 MiB
# queued at the NATS server for one connection gets it cut off, so the byte cap stays small. In
# messages, four full batches (256 each): with one (a window of 256, acknowledged every 128) a
# sender in another process waited for every ack, and small-message streams ran at half the rate
# (docs/PERFORMANCE.md); the byte cap still bounds what a receiver holds.
DEFAULT_WINDOW_MESSAGES = 1024
DEFAULT_WINDOW_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Window:
    """A receiver's credit: data messages and body bytes a sender may have unacknowledged, and how
    many messages it takes in one batched frame (1: no batches, what a peer that says nothing gets)."""

    messages: int = DEFAULT_WINDOW_MESSAGES
    max_bytes: int = DEFAULT_WINDOW_BYTES
    batch: int = 1

    @classmethod
    def for_method(cls, max_inflight: int) -> Window:
        """The window we grant on a method: its `max_inflight` option, or the default; batches welcome
        (one shared object per size)."""
        return _method_window(max_inflight)

    @classmethod
    def granted(cls, headers: Mapping[str, str] | None) -> Window:
        """The window a peer granted us in its headers (defaults where absent or malformed)."""
        return cls(
            header_int(headers, STREAM_WINDOW, DEFAULT_WINDOW_MESSAGES),
            header_int(headers, STREAM_WINDOW_BYTES, DEFAULT_WINDOW_BYTES),
            min(header_int(headers, STREAM_BATCH, 1), MAX_BATCH),
        )

    def headers(self) -> dict[str, str]:
        window = {STREAM_WINDOW: str(self.messages), STREAM_WINDOW_BYTES: str(self.max_bytes)}
        if self.batch > 1:
            window[STREAM_BATCH] = str(self.batch)
        return window


@functools.lru_cache(maxsize=256)
def _method_window(max_inflight: int) -> Window:
    return Window(max_inflight or DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES, MAX_BATCH)


def clamp_heartbeat(seconds: float, longest: float = MAX_HEARTBEAT) -> float:
    return min(max(seconds, MIN_HEARTBEAT), longest)


def client_offer(
    heartbeat: float, deadline_epoch_ms: str | None, window: Window | None, peer: str | None = None
) -> dict[str, str]:
    """The v2 offer on a streaming request (a v1 server ignores it): our heartbeat, the call's
    deadline, the window we grant for what we receive (`None` when we receive no stream) and our
    connection's liveness subject (`peer`: heartbeats shared with the server's connection)."""
    offer = {STREAM_VERSION: VERSION_2, STREAM_HEARTBEAT: str(int(heartbeat * 1000))}
    if peer is not None:
        offer[STREAM_PEER] = peer
    if window is not None:
        offer.update(window.headers())
    if deadline_epoch_ms is not None:
        offer[DEADLINE] = deadline_epoch_ms
    return offer


def longest_heartbeat(stream_idle_timeout: float) -> float:
    """The longest heartbeat a server accepts: silence for `MISSED_BEATS` of them must not outlast
    its idle timeout."""
    return clamp_heartbeat(stream_idle_timeout / MISSED_BEATS)


@dataclass(frozen=True)
class ServerTerms:
    """What a server makes of a request's opening headers."""

    v2: bool
    heartbeat: float  # seconds, clamped
    deadline_epoch: float | None  # the client's deadline (unix seconds), v2 only
    peer: str | None = None  # the client's liveness subject (unchecked), v2 only


def server_terms(headers: Mapping[str, str] | None, streaming: bool, stream_idle_timeout: float) -> ServerTerms:
    """v2 when a streaming request offers it and names its inbox; the client's heartbeat within
    bounds; its deadline (v2 streams, and unary calls, where our clients send one too). A malformed
    deadline is INVALID_ARGUMENT."""
    headers = headers or {}
    v2 = streaming and headers.get(STREAM_VERSION) == VERSION_2 and bool(headers.get(REPLY_TO))
    heartbeat = 0.0  # unary calls and v1 streams have none
    if v2:
        wished = header_int(headers, STREAM_HEARTBEAT, int(DEFAULT_HEARTBEAT * 1000)) / 1000
        heartbeat = clamp_heartbeat(wished, longest_heartbeat(stream_idle_timeout))
    deadline = request_deadline(headers) if v2 or not streaming else None
    return ServerTerms(v2, heartbeat, deadline, shared_peer(headers) if v2 else None)


def request_deadline(headers: Mapping[str, str] | None) -> float | None:
    """The caller's deadline (`Nats-Deadline`, unix seconds), if it sent one; a malformed one is
    INVALID_ARGUMENT."""
    text = headers.get(DEADLINE) if headers else None
    if text is None:
        return None
    epoch_ms = parse_uint(text)
    if epoch_ms is None:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"malformed {DEADLINE} {quote(text)}")
    return epoch_ms / 1000


def confirmation(inbox: str, heartbeat: float, window: Window | None, peer: str | None = None) -> dict[str, str]:
    """A server's v2 confirmation: its inbox for the client's control messages (and data), the
    heartbeat it uses, the window it grants for what it receives (`None`: it receives no stream) and,
    when the client named one and heartbeats are shared, its connection's liveness subject."""
    confirmed = {STREAM_VERSION: VERSION_2, STREAM_INBOX: inbox, STREAM_HEARTBEAT: str(round(heartbeat * 1000))}
    if peer is not None:
        confirmed[STREAM_PEER] = peer
    if window is not None:
        confirmed.update(window.headers())
    return confirmed


def named_inbox(headers: Mapping[str, str] | None) -> str:
    """The inbox a peer named for what we send it (`Nats-Stream-Inbox`, unchecked; "" when none)."""
    return (headers or {}).get(STREAM_INBOX, "")


def shared_peer(headers: Mapping[str, str] | None) -> str | None:
    """The peer's liveness subject in its offer or confirmation (unchecked), if it named one."""
    return (headers or {}).get(STREAM_PEER) or None


def confirmed(headers: Mapping[str, str] | None) -> bool:
    return (headers or {}).get(STREAM_VERSION) == VERSION_2


def client_heartbeat(confirmed_headers: Mapping[str, str] | None, own: float) -> float:
    """The heartbeat a client uses once confirmed: the server's, when it says one (it may have
    shortened ours to fit its idle timeout), else its own."""
    millis = parse_uint((confirmed_headers or {}).get(STREAM_HEARTBEAT))
    return clamp_heartbeat(millis / 1000) if millis else own
