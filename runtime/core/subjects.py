"""Checks for subjects a peer names in headers (`Reply-To`, `Nats-Stream-Inbox`) before we publish there.

A peer must not be able to make us publish to a subject of its choosing (a JetStream API, a wildcard,
another application's subject) or one that nats-server rejects by closing our connection (a subject
longer than its control line). So a named inbox must be a literal subject of printable ASCII, at most
`MAX_SUBJECT` bytes, not a `$` system subject, and start with an allowed prefix.
"""

from __future__ import annotations

import re
from typing import Iterable

DEFAULT_INBOX_PREFIX = "_INBOX."
MAX_SUBJECT = 256

# Literal tokens of printable ASCII other than the wildcards, separated by single dots.
_LITERAL = re.compile(r"[!-)+-\-/-=?-~]+(?:\.[!-)+-\-/-=?-~]+)*")


# Reply subjects up to their last token that passed `is_literal` lately: one client's replies share
# them (`_INBOX.<nuid>.<counter>`), so most calls check only their last token (a full check costs a
# regular expression match of the whole subject). Bounded: forgotten all at once when full.
_LITERAL_HEADS: set[str] = set()
_MAX_LITERAL_HEADS = 1024


def is_literal_reply(reply: str) -> bool:
    """`is_literal(reply)`, asked for every call's reply subject: cheaper for a subject whose tokens
    before the last passed lately and whose last is ASCII letters and digits (the same answer)."""
    head, _, last = reply.rpartition(".")
    if last.isalnum() and last.isascii() and len(reply) <= MAX_SUBJECT and head in _LITERAL_HEADS:
        return True
    if not is_literal(reply):
        return False
    if head:
        if len(_LITERAL_HEADS) >= _MAX_LITERAL_HEADS:
            _LITERAL_HEADS.clear()
        _LITERAL_HEADS.add(head)
    return True


def is_literal(subject: str, max_len: int = MAX_SUBJECT) -> bool:
    """A subject we may publish to: literal tokens (no `*`, `>`, whitespace or empty token), bounded."""
    return len(subject) <= max_len and _LITERAL.fullmatch(subject) is not None


def first_token_prefix(subject: str | None) -> str | None:
    """`_INBOX_alice.` for a reply subject `_INBOX_alice.abc.1`: the prefix its owner's inboxes share."""
    if not subject or "." not in subject or not is_literal(subject) or subject.startswith("$"):
        return None
    return subject.split(".", 1)[0] + "."


class InboxPolicy:
    """Which prefixes a peer-named inbox may have: `_INBOX.` and any configured ones."""

    def __init__(self, extra_prefixes: Iterable[str] = ()) -> None:
        prefixes = [DEFAULT_INBOX_PREFIX]
        for prefix in extra_prefixes:
            prefix = prefix if prefix.endswith(".") else prefix + "."
            if not is_literal(prefix[:-1]):
                raise ValueError(f"inbox prefix {prefix!r} is not a literal subject prefix")
            prefixes.append(prefix)
        self.prefixes = tuple(prefixes)

    def check(self, subject: str, also: str | None = None) -> str | None:
        """Why `subject` may not be published to (None when it may). `also` is one more allowed
        prefix (the first token of the request's own reply subject, on the server)."""
        if not is_literal(subject):
            return "not a literal subject of at most 256 printable ASCII characters"
        if subject.startswith("$"):
            return "a system subject"
        allowed = self.prefixes if also is None else (*self.prefixes, also)
        if not subject.startswith(allowed):
            return f"outside the allowed inbox prefixes ({', '.join(allowed)})"
        return None
