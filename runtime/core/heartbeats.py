"""Liveness bookkeeping, pure: heartbeat defaults and bounds, when a peer counts as silent, how our
own loop's stall is discounted, and the body of a shared heartbeat (its count and release lines)."""

from __future__ import annotations

from typing import Callable, Generic, Mapping, TypeVar

from .headers import STREAM_HEARTBEAT, STREAM_PEER, parse_uint

DEFAULT_HEARTBEAT = 1.0  # seconds: a killed peer is noticed within about this long (no-responders)
MISSED_BEATS = 3  # silence for this many intervals means the peer is gone (a paused process)
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.05, 20.0  # what a server accepts from a client's header


def past_stall(heard: float, due: float, now: float, period: float) -> float:
    """`heard` moved on by however long our own loop stood still: as late as our timer, due at `due`,
    runs `now`, beyond one `period`. A peer in our process could not speak meanwhile, and one
    elsewhere is read after the stall: that time is not the peer's silence."""
    stall = now - due - period
    return min(now, heard + stall) if stall > 0 else heard


def overdue(heard: float, now: float, interval: float) -> bool:
    """Silent by the clock: nothing heard for `MISSED_BEATS` intervals. Not yet a verdict: what
    waits for us unread may hold the peer's word (see `silent`)."""
    return now - heard > MISSED_BEATS * interval


def silent(heard: float, progress: float, interval: float) -> bool:
    """The verdict: nothing heard for `MISSED_BEATS` intervals of what we have read (`progress`, how
    far our connection has read, not the clock: our own backlog is not the peer's silence)."""
    return progress - heard > MISSED_BEATS * interval


def silence(interval: float) -> str:
    """Why a silent peer's streams end."""
    return f"no word from the peer for {MISSED_BEATS * interval:g} s"


# Shared heartbeats (health/peers.py, docs/PROTOCOL.md "Heartbeats"): a beat's body has a line per
# stream that needs something, `<inbox> s<n>` (n frames handed to NATS before this beat) or
# `<inbox> e[<n>]` (we let go of the stream after sending n frames).
SENT, RELEASED = "s", "e"
# A count or a release is named in this many beats (a lost beat does not hide it).
REPEAT = MISSED_BEATS
# A beat's body stays below this (and half of max_payload): more entries go in more beats.
BEAT_BODY_LIMIT = 64 * 1024
# Lines one beat can hold (a body of at most BEAT_BODY_LIMIT bytes, two bytes a line at the least).
MAX_ENTRIES = BEAT_BODY_LIMIT // 2


def sent_line(inbox: str, sent: int) -> str:
    return f"{inbox} {SENT}{sent}"


def released_line(inbox: str, final: int | None) -> str:
    return f"{inbox} {RELEASED}" if final is None else f"{inbox} {RELEASED}{final}"


def beat_bodies(lines: list[str], limit: int) -> list[bytes]:
    """The lines of one beat as bodies of at most `limit` bytes each (one, maybe empty, when they fit)."""
    bodies: list[bytes] = []
    body: list[str] = []
    size = 0
    for line in lines:
        if size + len(line) + 1 > limit and body:
            bodies.append("\n".join(body).encode())
            body, size = [], 0
        body.append(line)
        size += len(line) + 1
    bodies.append("\n".join(body).encode())
    return bodies


def beat_lines(data: bytes) -> list[tuple[str, str]]:
    """A peer's beat body as (the stream's inbox, its one entry) per line, read only as far as the
    format allows: one entry per line (anything after it is ignored unread) and a body no larger
    than a sender of ours writes (`BEAT_BODY_LIMIT`). A larger body, or one that is not ASCII, is
    dropped whole: nothing (a 1 MB beat of junk costs a length check, not a parse)."""
    if not data or len(data) > BEAT_BODY_LIMIT:
        return []
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return []
    lines = []
    for line in text.split("\n", MAX_ENTRIES)[:MAX_ENTRIES]:
        inbox, _, rest = line.partition(" ")
        if rest:
            lines.append((inbox, rest.split(" ", 1)[0]))
    return lines


def beat_entry(field: str) -> tuple[str, int | None] | None:
    """One field of a beat line: (`SENT`, n), (`RELEASED`, n or None); None when malformed."""
    kind, value = field[:1], field[1:]
    number = parse_uint(value)
    if kind == SENT and number is not None:
        return SENT, number
    if kind == RELEASED and (number is not None or not value):
        return RELEASED, number
    return None


def beat_headers(interval_ms: int, peer: str) -> dict[str, str]:
    """A shared beat's headers: its interval and who sends it (the sender's liveness subject)."""
    return {STREAM_HEARTBEAT: str(interval_ms), STREAM_PEER: peer}


def beat_sender(headers: Mapping[str, str] | None) -> tuple[str, int] | None:
    """Who sent a shared beat, and at which interval (0 when malformed): its group's key; None
    without headers."""
    if not headers:
        return None
    return headers.get(STREAM_PEER, ""), parse_uint(headers.get(STREAM_HEARTBEAT)) or 0


# In a `BeatLedger`'s counting: the stream sent since the last beat (no count yet: it is still sending).
SENDING = REPEAT + 1
K = TypeVar("K")  # a stream, as its owner knows it (hashable)


class BeatLedger(Generic[K]):
    """What our next beats to one peer connection say, as plain values: a count line for each
    stream that went quiet lately (in the `REPEAT` beats after it last sent: a stream still sending
    needs none, its next message shows a gap), a release line for each stream we let go of (in the
    next `REPEAT` beats). Streams are the caller's keys; `counting[key] = SENDING` marks one that
    sent (a dict store, per frame, no call)."""

    __slots__ = ("counting", "released")

    def __init__(self) -> None:
        self.counting: dict[K, int] = {}  # beats left that count the stream (`SENDING`: it sent since the last)
        self.released: list[tuple[str, int | None, int]] = []  # (the peer's name of the stream, final count, beats left)

    @property
    def empty(self) -> bool:
        """Nothing left to say for streams that are gone (releases still to repeat)."""
        return not self.released

    def release(self, key: K, name: str, final: int | None) -> None:
        """We let go of the stream `key` (the peer names it `name`) after handing `final` frames to
        NATS: said in the next beats, so a peer whose last message from us was lost stops waiting."""
        self.counting.pop(key, None)
        self.released.append((name, final, REPEAT))

    def lines(self, count: Callable[[K], tuple[str, int | None]]) -> list[str]:
        """The body lines of the next beat; `count(key)`: the stream's name for the peer and the frames
        we handed to NATS on it (None: we send none). What was said is counted down."""
        lines = []
        counting = self.counting
        for key, left in list(counting.items()):
            if left == SENDING:  # still sending: counted once it goes quiet (10,000 busy streams: no lines)
                counting[key] = REPEAT
                continue
            name, sent = count(key)
            if sent is None:
                del counting[key]
                continue
            if not sent:
                continue  # nothing handed over yet (the first message may still be resent)
            lines.append(sent_line(name, sent))
            if left > 1:
                counting[key] = left - 1
            else:
                del counting[key]
        kept = []
        for name, final, left in self.released:
            lines.append(released_line(name, final))
            if left > 1:
                kept.append((name, final, left - 1))
        self.released = kept
        return lines


def read_beat(data: bytes) -> list[tuple[str, str, int | None]]:
    """A peer's beat read: (the stream's inbox, `SENT` or `RELEASED`, the number) per valid line;
    malformed lines are left out."""
    read = []
    for inbox, field in beat_lines(data):
        entry = beat_entry(field)
        if entry is not None:
            read.append((inbox, entry[0], entry[1]))
    return read
