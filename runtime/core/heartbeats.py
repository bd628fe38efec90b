"""Liveness bookkeeping, pure: heartbeat defaults and bounds, when a peer counts as silent, how our
own loop's stall is discounted, and the body of a shared heartbeat (its count and release lines)."""

from __future__ import annotations

DEFAULT_HEARTBEAT = 1.0  # seconds: a killed peer is noticed within about this long (no-responders)
MISSED_BEATS = 3  # silence for this many intervals means the peer is gone (a paused process)
MIN_HEARTBEAT, MAX_HEARTBEAT = 0.05, 20.0  # what a server accepts from a client's header


def past_stall(heard: float, due: float, now: float, period: float) -> float:
    """`heard` moved on by however long our own loop stood still: as late as our timer, due at `due`,
    runs `now`, beyond one `period`. A peer in our process could not speak meanwhile, and one
    elsewhere is read after the stall: that time is not the peer's silence."""
    stall = now - due - period
    return min(now, heard + stall) if stall > 0 else heard
