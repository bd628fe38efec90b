"""Workarounds for nats-py behaviour, kept in one place so they can go when nats-py changes."""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription


async def flush_ordered(nc: NATS, timeout: int = 5) -> None:
    """A round trip that the NATS server answers only after everything sent before it.

    nats-py 2.16's `flush()` writes its PING straight to the socket while SUB/PUB commands still
    wait in the pending buffer for the flusher task, so its PONG can come back before the server
    has seen those subscriptions (measured: ~2% of subscribe+flush pairs on a busy 2-core machine,
    giving "no responders" to a caller on another connection). Write the buffer first.
    """
    try:
        await nc._flush_pending(force_flush=True)
        await nc.flush(timeout=timeout)
    except Exception:  # closed or reconnecting: nothing to order against
        pass


async def unsubscribe_quietly(sub: Subscription | None) -> None:
    """Remove a subscription; a closed or reconnecting connection is not an error here."""
    if sub is None:
        return
    try:
        await sub.unsubscribe()
    except Exception:
        # Closed connection or already-removed subscription: interest is gone either way; make sure
        # the subscription's delivery task does not outlive it.
        sub._stop_processing()
