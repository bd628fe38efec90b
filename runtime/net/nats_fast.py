"""Fast paths over nats-py's private attributes: the same messages as its public API, less CPU each.

Every fast path checks the internals it uses before its first use; when they are not as expected
(a nats-py this runtime was not tested on: pyproject.toml pins the tested versions) it switches
itself off, says once at WARNING (logger "betterproto_nats") which internal and that nats-py's
public API is used instead, and the runtime goes on, slower. `BETTERPROTO_NATS_FAST_PATHS=0` in
the environment (read once, at import) switches them all off, to check the public paths alone
(tests/test_fast_paths_off.py). The correctness fixes are in `nats_fixes`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from typing import Any, Awaitable, Callable

import nats.aio.client
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..core.errors import ErrorCode
from ..core.headers import ERROR_CODE
from ..core.logs import warn_once
from .nats_fixes import ReadGuard, guard_reads

SWITCH = "BETTERPROTO_NATS_FAST_PATHS"
FAST_PATHS = os.environ.get(SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")
"""Whether the fast paths may run at all (the environment's `BETTERPROTO_NATS_FAST_PATHS`)."""

_log = logging.getLogger("betterproto_nats")


def usable(path: str, unexpected: str | None, instead: str) -> bool:
    """Whether fast path `path` may run, given the nats-py internal that is `unexpected` (None: all
    as expected); when not, says once why and what is used `instead`."""
    if not FAST_PATHS:
        warn_once(_log, "fast:switch", "nats-py fast paths are off (%s=0): nats-py's public API is used everywhere", SWITCH)
        return False
    if unexpected is None:
        return True
    warn_once(
        _log,
        f"fast:{path}",
        "fast path %s is off: nats-py's %s is not as expected (is nats-py the version pyproject.toml pins?); %s is used instead",
        path,
        unexpected,
        instead,
    )
    return False


def _not_as_expected(obj: object, expected: dict[str, type | None]) -> str | None:
    """The first attribute of `obj` that is missing or not of its expected type (None: any value)."""
    for name, kind in expected.items():
        if not hasattr(obj, name):
            return f"{type(obj).__name__}.{name} (missing)"
        value = getattr(obj, name)
        if kind is not None and not isinstance(value, kind):
            return f"{type(obj).__name__}.{name} (a {type(value).__name__}, expected a {kind.__name__})"
    return None


_PENDING_BUFFER: dict[str, type | None] = {
    "_status": int,
    "_max_payload": int,
    "_pending": list,
    "_pending_data_size": int,
    "_max_pending_size": int,
    "_flush_queue": asyncio.Queue,
    "stats": dict,
    "_flusher_task": None,
    "_transport": None,
}


def _pending_buffer(nc: NATS) -> bool:
    """nats-py keeps what `publish` writes in `_pending` (a list of commands), counts it in
    `_pending_data_size` and wakes its flusher task through `_flush_queue`. When an upgrade changes
    that, `publish_nowait` stays off and everything goes through `publish` (said once; a test in
    tests/test_batching.py fails loudly). Looked at once per connection, once it is connected (its
    flush queue exists then)."""
    usable_here: bool | None = getattr(nc, "_betterproto_nats_nowait", None)
    if usable_here is None:
        if not nc.is_connected:
            return False
        usable_here = usable("publish_nowait", _not_as_expected(nc, _PENDING_BUFFER), "Client.publish")
        nc._betterproto_nats_nowait = usable_here  # type: ignore[attr-defined]
        nc._betterproto_nats_wrote = False  # type: ignore[attr-defined]  # (`_write_now`: a message went out at once this loop turn)
    return usable_here


_PUBLISHING = (NATS.CONNECTED, NATS.DRAINING_SUBS)  # the states in which nats-py's `publish` queues
_CRLF = b"\r\n"


def header_block(headers: dict[str, str]) -> bytes:
    """The NATS/1.0 header block for headers we built ourselves (valid names, values without CR/LF)."""
    return ("NATS/1.0\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n").encode()


def publish_nowait(nc: NATS, subject: str, payload: bytes, headers: dict[str, str] | None, reply: str = "") -> bool:
    """Queue an HPUB the way nats-py's `publish` does when it has nothing to wait for, without a
    coroutine (and without re-checking subjects and header names that we built). False, having
    done nothing, when `publish` must be used: disconnected, draining, the buffer full, the
    flusher gone, or nats-py's internals not as expected."""
    length = len(payload)
    usable_here = getattr(nc, "_betterproto_nats_nowait", None)  # (`_pending_buffer`'s answer, once known)
    if usable_here is not True and (usable_here is False or not _pending_buffer(nc)):
        return False
    # `is_connected and not is_draining_pubs` and `max_payload`, read as those properties read them
    if nc._status not in _PUBLISHING or length > nc._max_payload:
        return False
    flusher = nc._flusher_task
    if flusher is None or flusher.done():
        return False
    # The command's parts go into nats-py's list as they are (its flusher joins the list once).
    if headers:
        block = header_block(headers)
        blocked = len(block)
        head = f"HPUB {subject} {reply} {blocked} {blocked + length}\r\n" if reply else f"HPUB {subject} {blocked} {blocked + length}\r\n"
        parts: tuple[bytes, ...] = (head.encode(), block, payload, _CRLF)
        size = len(parts[0]) + blocked + length + 2
    else:  # as nats-py writes a message without headers
        head = f"PUB {subject} {reply} {length}\r\n" if reply else f"PUB {subject} {length}\r\n"
        parts = (head.encode(), payload, _CRLF)
        size = len(parts[0]) + length + 2
    limit = nc._max_pending_size
    if limit > 0 and nc._pending_data_size + size > limit:
        return False
    if nc._pending or not _write_now(nc, parts):
        nc._pending += parts
        nc._pending_data_size += size
        queue = nc._flush_queue
        if queue is not None and queue.empty():
            queue.put_nowait(asyncio.get_running_loop().create_future())  # wake the flusher
    stats = nc.stats
    stats["out_msgs"] += 1
    stats["out_bytes"] += length
    return True


def _write_now(nc: NATS, parts: tuple[bytes, ...]) -> bool:
    """Write a message to the socket at once when the connection is quiet: nothing waits before it
    (nats-py's list and the socket's buffer are empty) and nothing else runs in this loop turn (the
    loop's ready queue is empty: asyncio's own loops). One loop turn sooner than nats-py's flusher
    task would write it, without waking that task: what one call at a time waits for. Anything else
    goes to the list as before, to be written together: the rest of this turn's messages
    (`_turn_over` lets the next turn write at once again), and everything while many callers publish."""
    socket = getattr(nc, "_betterproto_nats_socket", None)
    if socket is None or socket[0] is not nc._transport:
        socket = nc._betterproto_nats_socket = (nc._transport, _socket_of(nc))  # type: ignore[attr-defined]
    transport = socket[1]
    if transport is None or nc._betterproto_nats_wrote or transport.get_write_buffer_size() or transport.is_closing():  # type: ignore[attr-defined]
        return False
    loop = asyncio.get_running_loop()
    if getattr(loop, "_ready", True):  # other callbacks run in this turn (other callers may publish too): together, later
        return False
    transport.write(b"".join(parts))
    nc._betterproto_nats_wrote = True  # type: ignore[attr-defined]
    loop.call_soon(_turn_over, nc)
    return True


def _turn_over(nc: NATS) -> None:
    nc._betterproto_nats_wrote = False  # type: ignore[attr-defined]


def _socket_of(nc: NATS) -> asyncio.WriteTransport | None:
    """The asyncio transport under nats-py's TCP transport (None elsewhere: websockets, TLS upgrades
    aside, or internals not as expected: the flusher writes everything then)."""
    carrier = nc._transport
    if type(carrier).__name__ != "TcpTransport":
        return None
    writer = getattr(carrier, "_io_writer", None)
    transport = getattr(writer, "transport", None)
    return transport if isinstance(transport, asyncio.WriteTransport) else None


_REQUESTS: dict[str, type | None] = {
    "_init_request_sub": None,
    "_request_sub_callback": None,
    "_resp_map": dict,
    "_resp_sub_prefix": None,
    "_subs": dict,
    **_PENDING_BUFFER,  # its requests go out through `publish_nowait`
}


class Requests:
    """Requests on nats-py's own response subscription (`_INBOX.<nuid>.*`, shared with its
    `request()`), without what `request()` costs per call: a NUID and random bytes per token, a
    done-callback, the `publish` coroutine and `asyncio.wait_for` (measured, 50 requests in flight
    against a plain responder: 17-23 µs of the client's CPU a request through `request()`, 9 µs
    this way). Tokens are a counter: the reply subjects of one connection stay unique, and a peer
    that sees one learns no more than `request()`'s guessable NUIDs would tell it. When nats-py's
    internals are not as expected (`usable`, said once), callers use `request()` (a test fails loudly)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.count = 0
        self.prefix = ""  # the response subscription's prefix, once it exists
        # Answers that came after a refusal on the same token, before its caller could `listen` again
        # (another receiver's real answer must not be lost); bounded, oldest dropped.
        self.late: dict[str, Msg] = {}
        self.usable = usable("Requests", _not_as_expected(nc, _REQUESTS), "Client.request")

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


MAX_LATE_ANSWERS = 1024


def _is_refusal(msg: Msg) -> bool:
    """An admission control refusal (`RESOURCE_EXHAUSTED`; core/headers.py reads it in full)."""
    headers = msg.headers
    return bool(headers) and headers.get(ERROR_CODE) == ErrorCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


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
            _log.exception("handling a message on %s failed", self.sub.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    async def join(self) -> None:
        """What nats-py's `drain()` awaits: nothing is ever waiting here."""


_SUBSCRIPTION: dict[str, type | None] = {
    "_pending_queue": asyncio.Queue,
    "_pending_size": int,
    "_wait_for_msgs_task": asyncio.Task,
    "_conn": None,
}


def deliver_directly(sub: Subscription, handler: Callable[[Msg], None]) -> bool:
    """Route a subscription's messages to `handler` at once (`DirectDelivery`); False, said once,
    when nats-py's internals are not as expected (the subscription's own callback then keeps
    delivering). The connection reads them straight from its parser where it can (`DirectReads`)."""
    if not usable("DirectDelivery", _not_as_expected(sub, _SUBSCRIPTION), "the subscription's callback"):
        return False
    sub._pending_queue = DirectDelivery(sub, handler)  # type: ignore[assignment]
    sub._wait_for_msgs_task.cancel()  # type: ignore[attr-defined]  # (an asyncio.Task, checked) the subscription's own delivery task has nothing more to do
    read_directly(sub._conn)
    return True


_PROCESS_MSG = ["self", "sid", "subject", "reply", "data", "headers"]


def _reads_not_as_expected(nc: NATS, guard: ReadGuard) -> str | None:
    """What of nats-py's `_process_msg` and what it uses is not as `DirectReads` expects (None: all)."""
    process = getattr(type(nc), "_process_msg", None)
    if process is None or not inspect.iscoroutinefunction(process) or list(inspect.signature(process).parameters) != _PROCESS_MSG:
        return f"Client._process_msg (expected a coroutine function of {', '.join(_PROCESS_MSG)})"
    if getattr(guard.nats_way, "__func__", None) is not process or vars(nc).get("_process_msg") != guard.process_msg:
        return "Client._process_msg (replaced on this connection by someone else)"
    if not inspect.iscoroutinefunction(getattr(nc, "_process_headers", None)):
        return "Client._process_headers (expected a coroutine function)"
    return _not_as_expected(nc, {"_subs": dict, "stats": dict, "msg_class": None})


_PLAIN_HEADERS = b"NATS/1.0\r\n"  # a header block without an inline status (`NATS/1.0 503`, heartbeats)


def header_lines(block: bytes) -> dict[str, str] | None:
    """The headers of a plain header block (`NATS/1.0\\r\\n`, then `Name: value` lines), as nats-py's
    `_process_headers` reads them when `fast_mail_parser` is not installed, without its coroutine and
    its generator per name (tests/test_nats_fast.py compares the two): a line without a colon, a name
    that is not ASCII or holds whitespace once stripped is skipped, values are stripped and decoded
    with U+FFFD for bad UTF-8, a later line wins; None for no headers."""
    found: dict[str, str] = {}
    end = len(block) - 4 if block.endswith(b"\r\n\r\n") else len(block)  # (the empty lines at its end say nothing)
    for line in block[len(_PLAIN_HEADERS) : end].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name.isascii():
            continue
        key = name.strip().decode()
        if key and key.split() != [key]:  # whitespace within the name, as str.isspace has it
            continue
        found[key] = value.strip().decode("utf-8", "replace")
    return found or None


class DirectReads:
    """The fast path of `DirectDelivery` subscriptions in the connection's read loop: their messages go
    to them straight from nats-py's parser, without what nats-py's `_process_msg` does for every
    message (JetStream flow control, old-style requests, pending limits; measured about 0.8 µs of CPU
    per message, each unary call has two). It takes the place of the connection's `ReadGuard` in
    `_process_msg` and guards as it does: the rest goes the guard's way, a message that cannot be
    read is dropped through it. A message whose subscription is not as expected switches it off."""

    def __init__(self, guard: ReadGuard) -> None:
        self.guard = guard
        self.nc = guard.nc
        self.handled: asyncio.Future[None] | None = None  # what `process_msg` returns for a message handled at once
        # nats-py reads header lines itself unless `fast_mail_parser` is installed (then its way is kept)
        self.plain_headers = getattr(nats.aio.client, "parse_email", None) is None

    def process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> Awaitable[None]:
        """One message from nats-py's parser, which awaits what this returns. A message for a
        `DirectDelivery` subscription, without headers or with a plain header block (no inline
        status), is handled here and now, and a finished future returned (no coroutine per message);
        anything else, or anything unexpected, goes through `process` (from the start: nothing was
        counted or handed on)."""
        nc = self.nc
        handled = self.handled
        if handled is not None and (not headers or self.plain_headers and headers.startswith(_PLAIN_HEADERS)):
            try:
                sub = nc._subs.get(sid)
                direct: Any = None if sub is None else sub._pending_queue
                if type(direct) is DirectDelivery and sub._max_msgs <= 0:  # type: ignore[union-attr]  # (not None: it has a queue)
                    self.deliver(direct, sid, subject, reply, data, header_lines(headers) if headers else None)
                    return handled
            except Exception:
                pass  # (`process` says what it was)
        elif handled is None:
            self.handled = handled = asyncio.get_running_loop().create_future()
            handled.set_result(None)
        return self.process(sid, subject, reply, data, headers)

    def deliver(self, direct: DirectDelivery, sid: int, subject: bytes, reply: bytes, data: bytes, headers: dict[str, str] | None) -> None:
        """A message for `direct`'s subscription, counted as nats-py counts it and handed to its
        handler now (`DirectDelivery.deliver`, inlined: once per message). Raises only before
        anything is counted (a subject that is not UTF-8: the caller drops the message)."""
        nc = self.nc
        msg = nc.msg_class(subject=subject.decode(), reply=reply.decode(), data=data, headers=headers, _client=nc, _sid=sid)
        stats = nc.stats
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        direct.sub._received += 1
        try:
            direct.handler(msg)
        except Exception:
            _log.exception("handling a message on %s failed", direct.sub.subject)

    async def process(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        """One message from nats-py's parser (in its read loop: nothing may escape from here)."""
        nc = self.nc
        try:
            sub = nc._subs.get(sid)
            direct: Any = None if sub is None else sub._pending_queue
            if type(direct) is DirectDelivery and sub._max_msgs <= 0:  # type: ignore[union-attr]  # (not None: it has a queue)
                self.deliver(direct, sid, subject, reply, data, await nc._process_headers(headers) if headers else None)
                return
            await self.guard.nats_way(sid, subject, reply, data, headers)
        except AttributeError as error:
            if error.obj is not nc and not isinstance(error.obj, Subscription):
                self.guard.drop(sid, error)
                return
            # nats-py changed under us: back to the guard, for this message too
            nc._process_msg = self.guard.process_msg  # type: ignore[method-assign]
            usable("DirectReads", f"Subscription or Client attribute ({error})", "Client._process_msg")
            await self.guard.process_msg(sid, subject, reply, data, headers)
        except Exception as error:  # a peer's bytes that nats-py cannot read: this message only
            self.guard.drop(sid, error)


def read_directly(nc: NATS) -> DirectReads | None:
    """Install the connection's `DirectReads` (once) in place of its `ReadGuard`; None, said once,
    when nats-py's internals are not as expected (messages then go through `_process_msg`)."""
    reads: DirectReads | None = getattr(nc, "_betterproto_nats_direct_reads", None)
    if reads is not None:
        return reads
    guard = guard_reads(nc)
    if guard is None or not usable("DirectReads", _reads_not_as_expected(nc, guard), "Client._process_msg"):
        return None
    reads = DirectReads(guard)
    nc._process_msg = reads.process_msg  # type: ignore[method-assign,assignment]  # (nats-py awaits what it returns)
    nc._betterproto_nats_direct_reads = reads  # type: ignore[attr-defined]
    return reads


def outbound_pending(nc: NATS) -> tuple[int, int]:
    """(bytes waiting to be written because the network does not take them now, the most nats-py
    buffers: `pending_size`); (0, 0), unknown, when nats-py's internals are not as expected or the
    fast paths are off (admission control then has no outgoing backlog to refuse on).

    What publishers queue within one loop turn, nats-py's flusher writes at the next: a full buffer
    then is no backlog (a fast download fills it every turn). Queued bytes count only while the
    socket's own buffer is past its high-water mark, so that the flusher waits for it to drain."""
    usable_here = getattr(nc, "_betterproto_nats_nowait", None)  # (`_pending_buffer`'s answer, once known)
    if usable_here is not True and (usable_here is False or not _pending_buffer(nc)):
        return (0, 0)
    pending = nc._pending_data_size
    if pending and _socket_backed_up(nc):
        return (pending, nc._max_pending_size)
    return (0, nc._max_pending_size)


def _socket_backed_up(nc: NATS) -> bool:
    """Whether the connection's socket holds more than its high-water mark of unsent bytes (asyncio's
    transport under nats-py's TCP transport; False where that cannot be seen: websockets, or a TCP
    transport that is not as expected, said once)."""
    carrier = getattr(nc, "_transport", None)
    writer = getattr(carrier, "_io_writer", None)
    transport = getattr(writer, "transport", None)
    if isinstance(transport, asyncio.WriteTransport):
        return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
    if type(carrier).__name__ == "TcpTransport":
        usable("outbound_pending", "TcpTransport._io_writer.transport", "no outgoing backlog (admission cannot see the socket)")
    return False
