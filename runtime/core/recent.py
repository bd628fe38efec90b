"""`RecentReplies`: the reply subjects of the calls a service took lately, so that a client's retry
of a call that was refused by someone else, but taken here, is not run twice (docs/PROTOCOL.md,
"Admission control")."""

from __future__ import annotations

# Calls remembered, at most (at least half as many): a retry comes within a refusal's hint and
# jitter (at most 6.25 s), so this covers some seconds of calls at the rates one service instance
# takes (about 100 bytes each: ~1.6 MB at most).
RECENT_REPLIES = 16_384


class RecentReplies:
    """A bounded set of reply subjects in two generations: when the newer holds half the bound, it
    becomes the older and the older is forgotten. One set insert per call taken (this runs for every
    call: a ring with a set cost three times as much)."""

    __slots__ = ("_current", "_previous", "_half")

    def __init__(self, size: int = RECENT_REPLIES) -> None:
        self._current: set[str] = set()
        self._previous: set[str] = set()
        self._half = max(1, size // 2)

    def add(self, reply: str) -> None:
        current = self._current
        current.add(reply)
        if len(current) >= self._half:
            self._previous, self._current = current, set()

    def discard(self, reply: str) -> None:
        """Forget `reply` (a call taken, then refused before it started: a retry of it must run)."""
        self._current.discard(reply)
        self._previous.discard(reply)

    def __contains__(self, reply: object) -> bool:
        return reply in self._current or reply in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)
