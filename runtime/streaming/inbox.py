"""`Inbox`: one call's receiving subject (a route of the connection's `InboxMux`) and the bounded queue
of what arrived there, in arrival order, until a reader takes it. Counts what arrived (for the peer's
counts) and holds a peer to its window or the v1 buffer limits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Callable

from nats.aio.msg import Msg

from ..core.sender import EMPTY_QUEUE
from ..core.errors import ErrorCode, RpcError
from ..core.receiver import stream_positions
from ..net.mux import InboxMux
from ..net.transport import Transport
from .deadline import Deadline

if TYPE_CHECKING:
    from ..health.peers import PeerGroup


RECONNECT_CHECK = 1.0  # seconds: how often a waiting reader looks whether its connection reconnected


# What a receiving inbox holds at most for a peer without flow control (v1, the Go project's
# protocol); a v2 peer is held to the window we granted instead. Beyond it the stream ends with
# RESOURCE_EXHAUSTED rather than letting one peer grow our memory without bound.
V1_BUFFER_MESSAGES = 8192
V1_BUFFER_BYTES = 32 * 1024 * 1024


FRAME_OVERHEAD = 64  # bytes per queued message beyond its body: header values and batch framing
FIRST_HEADERS_ROOM = 64 * 1024  # a handler's response headers ride on the first message


def _held(msg: Msg) -> int:
    """Bytes a queued message holds: its body and header values (a peer controls both)."""
    return len(msg.data) + (sum(map(len, msg.headers.values())) if msg.headers else 0)


class Inbox:
    """A subscription whose messages queue up until a reader takes them, in arrival order.

    The queue is bounded (`limit`); a peer that overruns it ends the stream with RESOURCE_EXHAUSTED
    and `on_overflow` is told at once. With `idle_timeout` set, a `get` fails once nothing at all
    (data or control) has arrived for that long.
    """

    __slots__ = (
        "nc", "method", "subject", "_mux", "_queue", "_queued_messages", "arrived", "_queued_bytes", "max_messages",
        "max_bytes", "_on_overflow", "_waiter", "_failure", "_dropping", "aborted", "_state", "_reconnects", "last_heard",
        "last_data", "_idle", "_quiet", "watcher", "peer",
    )

    def __init__(
        self,
        nc: Transport,
        method: str | None = None,
        on_overflow: Callable[[RpcError], None] | None = None,
    ) -> None:
        self.nc = nc
        self.method = method
        self._mux = InboxMux.of(nc)  # one subscription per connection for all its inboxes
        self.subject = self._mux.reserve()
        self._queue: deque[Msg] = EMPTY_QUEUE  # allocated while something is queued
        self._queued_messages = 0  # stream messages queued: a batched frame counts what it holds
        self.arrived = 0  # data messages and end markers that arrived (v2 heartbeats tell the sender)
        self._queued_bytes = 0
        self.max_messages = V1_BUFFER_MESSAGES
        self.max_bytes = V1_BUFFER_BYTES
        self._on_overflow = on_overflow
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None
        self._dropping = False  # failed (or overrun): nothing more is queued
        self.aborted = False  # ended at once: not even what was queued is delivered
        self._state = 0  # 0: reserved, 1: open, 2: closed
        self._reconnects = 0  # the connection's reconnect count when we subscribed
        self.last_heard = self.last_data = asyncio.get_running_loop().time()
        # (seconds, code, message): a `get` fails once nothing at all arrived for that long ...
        self._idle: tuple[float, str, str] | None = None
        # ... or once nothing but control messages (heartbeats) arrived for that long.
        self._quiet: tuple[float, str, str] | None = None
        # Sees every message first; returns True for one it handled itself (v2 control messages).
        self.watcher: Callable[[Msg], bool] | None = None
        # Shared liveness: the peer's connection heartbeats count as heard here (the idle clock).
        self.peer: PeerGroup | None = None

    async def open(self) -> Inbox:
        self._reconnects = self.nc.reconnects
        if self._state == 0:
            self._state = 1
            await self._mux.open(self.subject, self._on_msg)
        return self

    def limit(self, messages: int, max_bytes: int) -> None:
        """Hold the peer to a window: at most `messages` queued, and `max_bytes` of bodies unless one
        (plus room for what a sender's window does not count: header values, batch framing, and the
        response headers on a first message)."""
        self.max_messages = messages
        self.max_bytes = max_bytes + FRAME_OVERHEAD * messages + FIRST_HEADERS_ROOM

    def end_when_idle(self, after: float, code: str, message: str) -> None:
        """A `get` that finds nothing fails (`code`, `message`) once nothing arrived for `after` seconds."""
        self._idle = (after, code, message)
        self._wake()

    def end_when_quiet(self, after: float, code: str, message: str) -> None:
        """Like `end_when_idle`, but heartbeats do not count: only data and end markers do."""
        self._quiet = (after, code, message)
        self._wake()

    def _on_msg(self, msg: Msg) -> None:
        if self.nc.reconnects != self._reconnects:
            # Anything after a reconnect follows a gap in which messages may have been lost: the
            # stream ends UNAVAILABLE on this side, whatever comes now (a skipped seq that would read
            # as DATA_LOSS, the peer's answer to such a gap, more data that would keep it going).
            self.fail(self._interrupted())
            return
        self.last_heard = now = asyncio.get_running_loop().time()
        watcher = self.watcher
        if watcher is not None and watcher(msg):
            return
        positions = stream_positions(msg.headers)  # a batch as its peer claims it (the rules check it)
        self.arrived += positions
        if self._dropping:
            return
        self.last_data = now
        queue = self._queue
        if queue is EMPTY_QUEUE:
            queue = self._queue = deque()
        queue.append(msg)
        self._queued_messages += positions or 1
        self._queued_bytes += _held(msg)
        if self._queued_messages > self.max_messages or (len(queue) > 1 and self._queued_bytes > self.max_bytes):
            self._overrun()
        self._wake()

    def _overrun(self) -> None:
        error = RpcError(
            ErrorCode.RESOURCE_EXHAUSTED,
            f"the peer sent more than the {self.max_messages} messages / {self.max_bytes} bytes it may have "
            "outstanding (flow-control window or receive buffer)",
            method=self.method,
        )
        self.abort(error)
        if self._on_overflow is not None:
            self._on_overflow(error)

    def abort(self, error: BaseException) -> None:
        """End at once: drop what is queued and whatever still arrives; every `get` raises `error`."""
        self.aborted = True  # readers drop what they unpacked too
        self._queue = EMPTY_QUEUE
        self._queued_messages = self._queued_bytes = 0
        self.fail(error)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        """Make the current and every later `get` raise `error` once the queue is empty. Nothing that
        arrives from now on is queued: a peer still sending (acked as the reader drains the queue)
        would otherwise keep the queue from ever emptying, and the stream from ending."""
        self._dropping = True
        if self._failure is None:
            self._failure = error
        self._wake()

    def _interrupted(self) -> RpcError:
        return RpcError(ErrorCode.UNAVAILABLE, "the NATS connection was interrupted", method=self.method)

    async def get(self, deadline: Deadline | None, method: str | None = None) -> Msg:
        loop = asyncio.get_running_loop()
        while not self._queue:
            if self._failure is not None:
                raise self._failure
            if self.nc.reconnects != self._reconnects:
                # Messages may have been lost in the gap, including an end marker that would never
                # come again: a v1 peer sends no heartbeats, so without this a stream could wait forever.
                self.fail(self._interrupted())
                continue
            now = loop.time()
            wake_at = now + RECONNECT_CHECK
            if deadline is not None and deadline.at < wake_at:
                wake_at = deadline.at
            ended = False
            heard = self.last_heard if self.peer is None else max(self.last_heard, self.peer.heard)
            for since, limit in ((heard, self._idle), (self.last_data, self._quiet)):
                if limit is not None:
                    if since + limit[0] <= now:
                        self.fail(RpcError(limit[1], limit[2], method=self.method))
                        ended = True
                        break
                    wake_at = min(wake_at, since + limit[0])
            if ended:
                continue
            self._waiter = loop.create_future()
            try:
                async with asyncio.timeout_at(wake_at):
                    await self._waiter
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline.at:
                    raise RpcError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded", method=method) from None
            finally:
                self._waiter = None
        msg = self._queue.popleft()
        if self._queue:
            self._queued_messages -= stream_positions(msg.headers) or 1
            self._queued_bytes -= _held(msg)
        else:
            self._queued_messages = self._queued_bytes = 0
            self._queue = EMPTY_QUEUE
        return msg

    @property
    def is_open(self) -> bool:
        return self._state == 1

    def arrived_unless_failed(self) -> int | None:
        """What arrived, for comparing with a peer's count; None once this side failed."""
        return None if self._failure is not None else self.arrived

    @property
    def denied(self) -> bool:
        """Ended because NATS denied a permission on this call's subjects: nothing more will arrive."""
        failure = self._failure
        return isinstance(failure, RpcError) and failure.code == ErrorCode.PERMISSION_DENIED

    async def close(self) -> None:
        if self._state != 2:
            self._state = 2
            await self._mux.release(self.subject)
        self._queue = EMPTY_QUEUE
        self._queued_messages = self._queued_bytes = 0
        self.watcher = self._on_overflow = None  # bound methods of the call: no cycle outlives it
