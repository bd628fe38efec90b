"""Workarounds for nats-py behaviour, kept in one place so they can go when nats-py changes."""

from __future__ import annotations

import asyncio
import re
import secrets
from typing import Callable

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription


async def flush_ordered(nc: NATS, timeout: int = 5) -> bool:
    """A round trip that the NATS server answers only after everything sent before it.

    nats-py 2.16's `flush()` writes its PING straight to the socket while SUB/PUB commands still
    wait in the pending buffer for the flusher task, so its PONG can come back before the server
    has seen those subscriptions (measured: ~2% of subscribe+flush pairs on a busy 2-core machine,
    giving "no responders" to a caller on another connection). Write the buffer first.

    And shield it: when a task waiting in nats-py's `flush()` is cancelled, the PONG's future is
    cancelled but stays queued, and the PONG then raises InvalidStateError inside nats-py's read
    loop, which stops reading for good: the connection is deaf from then on. A call cancelled by its
    peer must not do that, so the round trip completes in a task of its own.

    Returns whether the PONG came back (False: closed, reconnecting, or no answer within `timeout`).
    """
    return await asyncio.shield(_flush(nc, timeout))


async def _flush(nc: NATS, timeout: int) -> bool:
    try:
        await nc._flush_pending(force_flush=True)
        await nc.flush(timeout=timeout)
    except Exception:  # closed or reconnecting: nothing to order against
        return False
    return True


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
                for watcher in self._concerned(match.group(1)):
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

    def _concerned(self, subject: str) -> list[Callable[[str], None]]:
        """Who watches `subject`; for a denied wildcard subscription `X.>` (the runtime's inboxes,
        `runtime/mux.py`), everyone who watches a subject under `X.`."""
        watcher = self._watchers.get(subject)
        if watcher is not None:
            return [watcher]
        if not subject.endswith(".>"):
            return []
        prefix = subject[:-1]
        return [w for name, w in self._watchers.items() if name.startswith(prefix)]

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


def _has_pending_buffer(nc: NATS) -> bool:
    """nats-py keeps what `publish` writes in `_pending` (a list of commands), counts it in
    `_pending_data_size` and wakes its flusher task through `_flush_queue`. When an upgrade changes
    that, `publish_nowait` stays off and everything goes through `publish` (a test in
    tests/test_batching.py fails loudly)."""
    return (
        isinstance(getattr(nc, "_pending", None), list)
        and isinstance(getattr(nc, "_pending_data_size", None), int)
        and isinstance(getattr(nc, "_max_pending_size", None), int)
        and isinstance(getattr(nc, "_flush_queue", None), asyncio.Queue)
        and isinstance(getattr(nc, "stats", None), dict)
        and hasattr(nc, "_flusher_task")
    )


def header_block(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block for headers we built ourselves (valid names, values without CR/LF)."""
    return ("NATS/1.0\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()


def publish_nowait(nc: NATS, subject: str, payload: bytes, headers: dict[str, str] | None, reply: str = "") -> bool:
    """Queue an HPUB the way nats-py's `publish` does when it has nothing to wait for, without a
    coroutine (and without re-checking subjects and header names that we built). False, having
    done nothing, when `publish` must be used: disconnected, draining, the buffer full, the
    flusher gone, or nats-py's internals not as expected."""
    if not nc.is_connected or nc.is_draining_pubs or len(payload) > nc.max_payload:
        return False
    usable: bool | None = getattr(nc, "_betterproto_nats_nowait", None)
    if usable is None:  # looked at once, on a connected client (its flush queue exists then)
        usable = nc._betterproto_nats_nowait = _has_pending_buffer(nc)  # type: ignore[attr-defined]
    if not usable:
        return False
    flusher = nc._flusher_task
    if flusher is None or flusher.done():
        return False
    if headers:
        block = header_block(headers)
        head = f"HPUB {subject} {reply + ' ' if reply else ''}{len(block)} {len(block) + len(payload)}\r\n".encode()
    else:  # as nats-py writes a message without headers
        block = b""
        head = f"PUB {subject} {reply + ' ' if reply else ''}{len(payload)}\r\n".encode()
    size = len(head) + len(block) + len(payload) + 2
    if nc._max_pending_size > 0 and nc._pending_data_size + size > nc._max_pending_size:
        return False
    nc._pending.append(b"".join((head, block, payload, b"\r\n")))
    nc._pending_data_size += size
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())  # wake the flusher
    return True


def outbound_pending(nc: NATS) -> tuple[int, int]:
    """(bytes published and not yet handed to the socket, the most nats-py buffers: `pending_size`);
    (0, 0) when nats-py's internals are not as expected."""
    pending, limit = getattr(nc, "_pending_data_size", 0), getattr(nc, "_max_pending_size", 0)
    return (pending, limit) if isinstance(pending, int) and isinstance(limit, int) else (0, 0)
