"""Workarounds for nats-py behaviour, kept in one place so they can go when nats-py changes."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import secrets
from typing import Any, Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.errors import ErrorCode
from ..core.headers import ERROR_CODE
from ..core.logs import RateLimitedLog


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
    length = len(payload)
    if not nc.is_connected or nc.is_draining_pubs or length > nc.max_payload:
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
        blocked = len(block)
        head = f"HPUB {subject} {reply} {blocked} {blocked + length}\r\n" if reply else f"HPUB {subject} {blocked} {blocked + length}\r\n"
        command = b"".join((head.encode(), block, payload, b"\r\n"))
    else:  # as nats-py writes a message without headers
        head = f"PUB {subject} {reply} {length}\r\n" if reply else f"PUB {subject} {length}\r\n"
        command = b"".join((head.encode(), payload, b"\r\n"))
    size = len(command)
    limit = nc._max_pending_size
    if limit > 0 and nc._pending_data_size + size > limit:
        return False
    nc._pending.append(command)
    nc._pending_data_size += size
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += length
    queue = nc._flush_queue
    if queue is not None and queue.empty():
        queue.put_nowait(asyncio.get_running_loop().create_future())  # wake the flusher
    return True


class Requests:
    """Requests on nats-py's own response subscription (`_INBOX.<nuid>.*`, shared with its
    `request()`), without what `request()` costs per call: a NUID and random bytes per token, a
    done-callback, the `publish` coroutine and `asyncio.wait_for` (measured, 50 requests in flight
    against a plain responder: 17-23 µs of the client's CPU a request through `request()`, 9 µs
    this way). Tokens are a counter: the reply subjects of one connection stay unique, and a peer
    that sees one learns no more than `request()`'s guessable NUIDs would tell it. When nats-py's
    internals are not as expected (`usable`), callers use `request()` (a test fails loudly)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.count = 0
        self.prefix = ""  # the response subscription's prefix, once it exists
        # Answers that came after a refusal on the same token, before its caller could `listen` again
        # (another receiver's real answer must not be lost); bounded, oldest dropped.
        self.late: dict[str, Msg] = {}
        self.usable = (
            hasattr(nc, "_init_request_sub")
            and hasattr(nc, "_request_sub_callback")
            and isinstance(getattr(nc, "_resp_map", None), dict)
            and hasattr(nc, "_resp_sub_prefix")
            and _has_pending_buffer(nc)
        )

    @classmethod
    def of(cls, nc: NATS) -> Requests:
        requests: Requests | None = getattr(nc, "_betterproto_nats_requests", None)
        if requests is None:
            requests = nc._betterproto_nats_requests = cls(nc)  # type: ignore[attr-defined]
        return requests

    async def request(self, subject: str, payload: bytes, timeout: float | None, headers: dict[str, str] | None = None) -> Msg:
        """The answer to one request (`NoRespondersError`, `TimeoutError` as `request()` raises them)."""
        nc = self.nc
        if not self.prefix:
            if not nc._resp_sub_prefix:
                await nc._init_request_sub()
            self.prefix = bytes(nc._resp_sub_prefix or b"").decode()
            for sub in list(nc._subs.values()):  # answers resolve their futures as they are read
                if sub.subject == self.prefix + "*":
                    deliver_directly(sub, self._answered)
        self.count += 1
        token = str(self.count)
        reply = self.prefix + token
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        waiting = nc._resp_map
        waiting[token] = future
        expiry = None if timeout is None else loop.call_later(timeout, _expire, future)
        try:
            if not publish_nowait(nc, subject, payload, headers, reply):
                await nc.publish(subject, payload, reply=reply, headers=headers)
            msg = await future
        finally:
            waiting.pop(token, None)
            if expiry is not None:
                expiry.cancel()
        if msg.headers and msg.headers.get("Status") == "503":
            raise nats.errors.NoRespondersError
        return msg

    def listen(self, reply: str) -> asyncio.Future[Msg] | None:
        """A future for the next answer to `reply`, a reply subject of ours that answered already (a
        refusal: what the call's retry, or another receiver of the first try, answers comes there
        too); None when `reply` is not one of ours. `forget` it when the call is over."""
        prefix = self.prefix
        if not prefix or not reply.startswith(prefix):
            return None
        token = reply[len(prefix) :]
        future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        came = self.late.pop(token, None)
        if came is not None:
            future.set_result(came)  # it came while the refusal was being read
        self.nc._resp_map[token] = future
        return future

    def forget(self, reply: str) -> None:
        if self.prefix and reply.startswith(self.prefix):
            token = reply[len(self.prefix) :]
            self.nc._resp_map.pop(token, None)
            self.late.pop(token, None)

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None, reply: str) -> None:
        """Publish a request with a reply subject of ours (`listen`), e.g. a call sent again."""
        if not publish_nowait(self.nc, subject, payload, headers, reply):
            await self.nc.publish(subject, payload, reply=reply, headers=headers)

    def _answered(self, msg: Msg) -> None:
        """An answer on the response subscription (as nats-py's own callback takes it): its request's
        future gets it, ours or `request()`'s."""
        token = msg.subject[len(self.prefix) :]
        future = self.nc._resp_map.get(token)
        if future is None:
            return
        if not future.done():
            future.set_result(msg)
        elif not future.cancelled() and future.exception() is None and _is_refusal(future.result()):
            late = self.late
            if len(late) >= MAX_LATE_ANSWERS:
                del late[next(iter(late))]
            late.setdefault(token, msg)  # (the first that came: a later one is another receiver's too)


class DirectDelivery:
    """Stands in for a nats-py subscription's pending queue: each message goes to `handler` as nats-py
    parses it, in its read loop, instead of through an `asyncio.Queue`, the subscription's task and a
    coroutine per message (measured: about 1.5 µs of CPU per message). Handlers only hand messages
    on (queue them for a reader, start a call's task, resolve a future), so they never block; what
    one raises is logged here, since an exception would stop nats-py's read loop for good."""

    def __init__(self, sub: Subscription, handler: Callable[[Msg], None]) -> None:
        self.sub = sub
        self.handler = handler

    def put_nowait(self, msg: Msg) -> None:
        self.sub._pending_size -= len(msg.data)  # nats-py counted it as waiting: it does not
        self.deliver(msg)

    def deliver(self, msg: Msg) -> None:
        try:
            self.handler(msg)
        except Exception:
            logging.getLogger("betterproto_nats").exception("handling a message on %s failed", self.sub.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False


def deliver_directly(sub: Subscription, handler: Callable[[Msg], None]) -> bool:
    """Route a subscription's messages to `handler` at once (`DirectDelivery`); False when nats-py's
    internals are not as expected (the subscription's own callback then keeps delivering)."""
    task = getattr(sub, "_wait_for_msgs_task", None)
    if (
        not isinstance(getattr(sub, "_pending_queue", None), asyncio.Queue)
        or not isinstance(getattr(sub, "_pending_size", None), int)
        or not isinstance(task, asyncio.Task)
    ):
        return False
    sub._pending_queue = DirectDelivery(sub, handler)  # type: ignore[assignment]
    task.cancel()  # the subscription's own delivery task has nothing more to do
    guard_reads(sub._conn)
    return True


_PROCESS_MSG = ["self", "sid", "subject", "reply", "data", "headers"]
_log = logging.getLogger("betterproto_nats")


class ReadGuard:
    """Keeps one message from deafening a connection: nats-py parses a message's header block and
    decodes its subjects inside its read loop, where an exception stops reading for good while the
    connection still reports itself connected (a header block of just `NATS/1.0`, a status line or a
    subject that is not UTF-8). Installed once per connection the runtime uses (`guard_reads`), around
    `_process_msg`: such a message is dropped, counted in `dropped`, and warned about (rate-limited). Also the fast path of `DirectDelivery` subscriptions: their messages go to
    them straight from the parser, without what nats-py's `_process_msg` does for every message
    (JetStream flow control, old-style requests, pending limits; measured about 0.8 µs of CPU per
    message, each unary call has two), when nats-py's internals are as expected (`direct`)."""

    def __init__(self, nc: NATS, nats_way: Callable[[int, bytes, bytes, bytes, bytes], Awaitable[None]], direct: bool) -> None:
        self.nc = nc
        self.nats_way = nats_way
        self.direct = direct
        self.dropped = 0  # messages dropped since the guard was installed
        self._log = RateLimitedLog(_log, per_second=1)

    async def process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        """One message from nats-py's parser (in its read loop: nothing may escape from here)."""
        try:
            if self.direct:
                nc = self.nc
                sub = nc._subs.get(sid)
                if sub is not None:
                    direct: Any = sub._pending_queue
                    if type(direct) is DirectDelivery and sub._max_msgs <= 0:
                        stats = nc.stats
                        stats["in_msgs"] += 1
                        stats["in_bytes"] += len(data)
                        sub._received += 1
                        parsed = await nc._process_headers(headers) if headers else None
                        msg = nc.msg_class(subject=subject.decode(), reply=reply.decode(), data=data, headers=parsed, _client=nc, _sid=sid)
                        direct.deliver(msg)
                        return
            await self.nats_way(sid, subject, reply, data, headers)
        except Exception as error:  # a peer's bytes that nats-py cannot read: this message only
            self.drop(sid, error)

    def drop(self, sid: int, error: Exception) -> None:
        """Count a dropped message and warn (at most once a second: a flood is summed up)."""
        self.dropped += 1
        sub = self.nc._subs.get(sid)
        self._log.warning(
            "dropped a message that nats-py cannot read (a header block, status line, subject or reply that is "
            "malformed or not UTF-8) on subscription %s: %s",
            sub.subject if sub is not None else f"sid {sid}",
            type(error).__name__,
        )


def _direct_reads_possible(nc: NATS) -> bool:
    """Whether nats-py's `_process_msg` and what it uses look as `ReadGuard`'s fast path expects."""
    process = getattr(type(nc), "_process_msg", None)
    return (
        process is not None
        and inspect.iscoroutinefunction(process)
        and list(inspect.signature(process).parameters) == _PROCESS_MSG
        and isinstance(getattr(nc, "_subs", None), dict)
        and isinstance(getattr(nc, "stats", None), dict)
        and inspect.iscoroutinefunction(getattr(nc, "_process_headers", None))
    )


def guard_reads(nc: NATS) -> ReadGuard | None:
    """Install the connection's `ReadGuard` (once); None, with a warning, when nats-py has no
    `_process_msg` to guard (a test fails loudly then)."""
    guard: ReadGuard | None = getattr(nc, "_betterproto_nats_guard", None)
    if guard is not None:
        return guard
    process = getattr(nc, "_process_msg", None)
    if process is None or not inspect.iscoroutinefunction(process):
        _log.warning("this nats-py has no _process_msg to guard: a malformed message can stop its read loop")
        return None
    guard = ReadGuard(nc, process, direct=_direct_reads_possible(nc) and "_process_msg" not in vars(nc))
    nc._process_msg = guard.process_msg  # type: ignore[method-assign]
    nc._betterproto_nats_guard = guard  # type: ignore[attr-defined]
    return guard


MAX_LATE_ANSWERS = 1024


def _is_refusal(msg: Msg) -> bool:
    """An admission control refusal (`RESOURCE_EXHAUSTED`; core/headers.py reads it in full)."""
    headers = msg.headers
    return bool(headers) and headers.get(ERROR_CODE) == ErrorCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def outbound_pending(nc: NATS) -> tuple[int, int]:
    """(bytes waiting to be written because the network does not take them now, the most nats-py
    buffers: `pending_size`); (0, 0) when nats-py's internals are not as expected.

    What publishers queue within one loop turn, nats-py's flusher writes at the next: a full buffer
    then is no backlog (a fast download fills it every turn). Queued bytes count only while the
    socket's own buffer is past its high-water mark, so that the flusher waits for it to drain."""
    usable: bool | None = getattr(nc, "_betterproto_nats_nowait", None)
    if usable is None:
        usable = _has_pending_buffer(nc)
    if not usable:
        return (0, 0)
    pending = nc._pending_data_size
    if pending and _socket_backed_up(nc):
        return (pending, nc._max_pending_size)
    return (0, nc._max_pending_size)


def _socket_backed_up(nc: NATS) -> bool:
    """Whether the connection's socket holds more than its high-water mark of unsent bytes (asyncio's
    transport under nats-py's TCP transport; False where that cannot be seen: websockets)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if not isinstance(transport, asyncio.WriteTransport):
        return False
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
