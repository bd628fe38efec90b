"""`RecentReplies`: the reply subjects of the calls a service took lately, so that a client's retry
of a call that was refused by someone else, but taken here, is not run twice (docs/PROTOCOL.md,
"Admission control")."""

from __future__ import annotations

# Calls remembered: a retry comes within a refusal's hint and jitter (at most 5 s), so this covers
# some seconds of calls at the rates one service instance takes (about 100 bytes each: ~1.6 MB).
RECENT_REPLIES = 16_384


class RecentReplies:
    """A bounded set of reply subjects, oldest forgotten first; `add` and `in` are O(1)."""

    __slots__ = ("_ring", "_members", "_next")

    def __init__(self, size: int = RECENT_REPLIES) -> None:
        self._ring: list[str] = [""] * size
        self._members: set[str] = set()
        self._next = 0

    def add(self, reply: str) -> None:
        members = self._members
        if not reply or reply in members:
            return
        ring, index = self._ring, self._next
        members.discard(ring[index])
        ring[index] = reply
        members.add(reply)
        self._next = (index + 1) % len(ring)

    def discard(self, reply: str) -> None:
        """Forget `reply` (a call taken, then refused before it started: a retry of it must run)."""
        self._members.discard(reply)

    def __contains__(self, reply: object) -> bool:
        return reply in self._members

    def __len__(self) -> int:
        return len(self._members)
