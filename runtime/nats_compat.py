"""Workarounds for nats-py behaviour, kept in one place so they can go when nats-py changes."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription


async def flush_ordered(nc: NATS, timeout: int = 5) -> None:
    """A round trip that the NATS server answers only after everything sent before it.

    nats-py 2.16's `flush()` writes its PING straight to the socket while SUB/PUB commands still
    wait in the pending buffer for the flusher task, so its PONG can come back before the server
    has seen those subscriptions (measured: ~2% of subscribe+flush pairs on a busy 2-core machine,
    giving "no responders" to a caller on another connection). Write the buffer first.

    And shield it: when a task waiting in nats-py's `flush()` is cancelled, the PONG's future is
    cancelled but stays queued, and the PONG then raises InvalidStateError inside nats-py's read
    loop, which stops reading for good: the connection is deaf from then on. A call cancelled by its
    peer must not do that, so the round trip completes in a task of its own.
    """
    await asyncio.shield(_flush(nc, timeout))


async def _flush(nc: NATS, timeout: int) -> None:
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


class PermissionErrors:
    """Routes nats-py's permission-violation reports to the calls whose subjects they name.

    nats-py hands `-ERR 'Permissions Violation for Publish to "X"'` only to the connection's error
    callback (lower-cased), and the denied message is silently dropped: without this, a call whose
    own subjects are denied would wait for its deadline. Installed once per connection, wrapping the
    user's callback (which still sees every error).
    """

    _pattern = re.compile(r'permissions violation for (?:publish to|subscription to) "([^"]*)"')

    def __init__(self, nc: NATS) -> None:
        self._watchers: dict[str, Callable[[str], None]] = {}
        self._user_callback = nc._error_cb

        async def on_error(error: Exception) -> None:
            match = self._pattern.search(str(error))
            if match is not None:
                watcher = self._watchers.get(match.group(1))
                if watcher is not None:
                    watcher(str(error)[:256])
            await self._user_callback(error)

        nc._error_cb = on_error

    @classmethod
    def of(cls, nc: NATS) -> PermissionErrors:
        registry: PermissionErrors | None = getattr(nc, "_betterproto_nats_permissions", None)
        if registry is None:
            registry = cls(nc)
            nc._betterproto_nats_permissions = registry  # type: ignore[attr-defined]
        return registry

    def watch(self, subject: str, on_denied: Callable[[str], None]) -> None:
        """Call `on_denied(text)` when publishing to or subscribing on `subject` is denied."""
        self._watchers[subject.lower()] = on_denied

    def forget(self, subject: str) -> None:
        self._watchers.pop(subject.lower(), None)


def new_inbox(nc: NATS) -> str:
    """An inbox subject nobody can guess: the connection's inbox prefix and 128 random bits, in
    lower-case hex (nats-py lower-cases the subjects in permission errors; these match exactly).

    nats-py's `new_inbox()` ends in a NUID: a prefix fixed per connection and a sequence with small
    random increments, so a client that saw a few of a service's inboxes could guess the next ones.
    """
    prefix = getattr(nc, "_inbox_prefix", None)
    text = prefix.decode() if isinstance(prefix, (bytes, bytearray)) else nc.new_inbox().rsplit(".", 1)[0]
    return f"{text}.{secrets.token_hex(16)}"
