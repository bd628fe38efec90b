"""Correctness fixes for nats-py: what the runtime needs to be right on nats-py 2.16, not faster.

Each one works around a nats-py behaviour named in its docstring, so it can go when nats-py changes.
Where a fix reaches into a private attribute (`_flush_pending`, `_error_cb`, `_inbox_prefix`,
`_process_msg`), a changed nats-py is told apart from a closed connection: it is logged once at
WARNING (logger "betterproto_nats") and the fix falls back to nats-py's public API. The fast paths
over nats-py's internals are in `nats_fast`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
from typing import Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from ..core.logs import RateLimitedLog, warn_once

_log = logging.getLogger("betterproto_nats")

# What nats-py raises when a connection is closed, reconnecting or unanswered; its asserts say
# "Client.connect must be called first". Anything else from nats-py is not a connection state.
CONNECTION_ERRORS = (nats.errors.Error, OSError, asyncio.TimeoutError, AssertionError)


def changed_nats_py(what: str, error: BaseException, instead: str) -> None:
    """Say once that nats-py's `what` is not as this runtime expects (a nats-py this version was not
    tested on) and what is done `instead`."""
    warn_once(
        _log,
        f"fix:{what}",
        "nats-py's %s is not as expected (%s: %s); %s. Is nats-py the version pyproject.toml pins?",
        what,
        type(error).__name__,
        error,
        instead,
    )


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
    A nats-py without `_flush_pending(force_flush=True)` gets a plain `flush()`, said once.
    """
    return await asyncio.shield(_flush(nc, timeout))


async def _flush(nc: NATS, timeout: int) -> bool:
    try:
        await nc._flush_pending(force_flush=True)
    except CONNECTION_ERRORS:  # closed or reconnecting: nothing to order against
        return False
    except (AttributeError, TypeError) as error:  # nats-py changed: not a closed connection
        changed_nats_py("Client._flush_pending(force_flush=True)", error, "flush_ordered uses flush() alone, which may answer before queued subscriptions reach the server")
    try:
        await nc.flush(timeout=timeout)
    except CONNECTION_ERRORS:
        return False
    except Exception as error:  # not a connection state: a changed nats-py, loud but not fatal
        changed_nats_py("Client.flush()", error, "the round trip counts as failed")
        return False
    return True


async def unsubscribe_quietly(sub: Subscription | None) -> None:
    """Remove a subscription; a closed or reconnecting connection is not an error here."""
    if sub is None:
        return
    try:
        await sub.unsubscribe()
    except Exception as error:
        if not isinstance(error, CONNECTION_ERRORS):
            changed_nats_py("Subscription.unsubscribe()", error, "its delivery task is stopped and the subscription counts as removed")
        # Closed connection or already-removed subscription: interest is gone either way; make sure
        # the subscription's delivery task does not outlive it.
        stop = getattr(sub, "_stop_processing", None)
        if stop is None:
            changed_nats_py("Subscription._stop_processing", AttributeError("missing"), "a closed subscription's delivery task may linger")
        else:
            stop()


class PermissionErrors:
    """Routes nats-py's permission-violation reports to the calls whose subjects they name.

    nats-py hands `-ERR 'Permissions Violation for Publish to "X"'` only to the connection's error
    callback (lower-cased), and the denied message is silently dropped: without this, a call whose
    own subjects are denied would wait for its deadline. Installed once per connection, wrapping the
    user's callback (which still sees every error). A nats-py without `_error_cb` is said once; its
    denied calls then end at their deadlines.
    """

    _pattern = re.compile(r'permissions violation for (?:publish to|subscription to) "([^"]*)"')

    def __init__(self, nc: NATS) -> None:
        self._watchers: dict[str, Callable[[str], None]] = {}
        user_callback = getattr(nc, "_error_cb", None)
        if not callable(user_callback):
            changed_nats_py("Client._error_cb", AttributeError(repr(user_callback)), "denied permissions are not routed to calls (they end at their deadlines)")
            return
        self._user_callback: Callable[[Exception], Awaitable[None]] = user_callback

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
    Without `_inbox_prefix` (said once) the prefix is read off a public `new_inbox()`.
    """
    prefix = getattr(nc, "_inbox_prefix", None)
    if isinstance(prefix, (bytes, bytearray)):
        text = prefix.decode()
    else:
        changed_nats_py("Client._inbox_prefix", AttributeError(repr(prefix)), "inboxes take their prefix from new_inbox()")
        text = nc.new_inbox().rsplit(".", 1)[0]
    return f"{text}.{secrets.token_hex(16)}"


MessageProcessor = Callable[[int, bytes, bytes, bytes, bytes], Awaitable[None]]


class ReadGuard:
    """Keeps one message from deafening a connection: nats-py parses a message's header block and
    decodes its subjects inside its read loop, where an exception stops reading for good while the
    connection still reports itself connected (a header block of just `NATS/1.0`, a status line or a
    subject that is not UTF-8). Installed once per connection the runtime uses (`guard_reads`), around
    `_process_msg`: such a message is dropped, counted in `dropped`, and warned about (rate-limited).
    `nats_fast.DirectReads` may take its place in `_process_msg` and drops through it (`drop`)."""

    def __init__(self, nc: NATS, nats_way: MessageProcessor) -> None:
        self.nc = nc
        self.nats_way = nats_way  # nats-py's own `_process_msg`, bound to `nc`
        self.dropped = 0  # messages dropped since the guard was installed
        self._log = RateLimitedLog(_log, per_second=1)

    async def process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        """One message from nats-py's parser (in its read loop: nothing may escape from here)."""
        try:
            await self.nats_way(sid, subject, reply, data, headers)
        except Exception as error:  # a peer's bytes that nats-py cannot read: this message only
            self.drop(sid, error)

    def drop(self, sid: int, error: Exception) -> None:
        """Count a dropped message and warn (at most once a second: a flood is summed up)."""
        self.dropped += 1
        subs = getattr(self.nc, "_subs", None)
        sub = subs.get(sid) if isinstance(subs, dict) else None
        self._log.warning(
            "dropped a message that nats-py cannot read (a header block, status line, subject or reply that is "
            "malformed or not UTF-8) on subscription %s: %s",
            getattr(sub, "subject", f"sid {sid}"),
            type(error).__name__,
        )


def guard_reads(nc: NATS) -> ReadGuard | None:
    """Install the connection's `ReadGuard` (once); None, said once, when nats-py has no
    `_process_msg` to guard (a test fails loudly then)."""
    guard: ReadGuard | None = getattr(nc, "_betterproto_nats_guard", None)
    if guard is not None:
        return guard
    process = getattr(nc, "_process_msg", None)
    if process is None or not inspect.iscoroutinefunction(process):
        changed_nats_py("Client._process_msg", AttributeError(repr(process)), "a malformed message can stop its read loop")
        return None
    guard = ReadGuard(nc, process)
    nc._process_msg = guard.process_msg  # type: ignore[method-assign]
    nc._betterproto_nats_guard = guard  # type: ignore[attr-defined]
    return guard
