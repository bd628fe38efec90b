"""Loss counting, pure: what a peer says it sent against what arrived here. A count beyond what
arrived means the rest were lost in transit (the count follows the data on the same path, so it
cannot overtake it); the call then ends DATA_LOSS instead of waiting for messages that never come.
"""

from __future__ import annotations


def lost_in_transit(sent: int, arrived: int | None) -> str | None:
    """Why the call ends when the peer handed `sent` frames to NATS before its heartbeat and fewer
    `arrived`; None when all did (or we no longer count: `arrived` None)."""
    if arrived is None or arrived >= sent:
        return None
    return f"the peer sent {sent} messages before its heartbeat, {arrived} arrived: the rest were lost in transit"


def missing_at_release(final: int | None, arrived: int | None) -> str | None:
    """What of its stream did not arrive when the peer let go after `final` frames; None: all did
    (or either count is unknown)."""
    if final is not None and arrived is not None and arrived < final:
        return f"{final - arrived} of the {final} messages it sent"
    return None


def short_end(received: int, count: int | None) -> str | None:
    """An end marker's count against the messages received: the text of the DATA_LOSS, or None."""
    if count is None or count == received:
        return None
    return f"stream ended after {received} messages, peer sent {count}"
