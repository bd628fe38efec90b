"""One direction of a stream, on either side: a receiving `Inbox` + `StreamReader`, a `StreamWriter`.

Client and server use the same classes, so ordering checks, end markers and size limits are written
once. Nothing here knows which side it is on.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Mapping, TypeVar

import betterproto
from nats.aio.msg import Msg

from .batch import BATCHED_BODY_LIMIT, MAX_BATCH_BYTES, pack, unpack
from .codec import Codec
from .errors import ErrorCode, RpcError
from .flow import EMPTY_QUEUE, NO_ACKS, Acknowledger, SendCredit, Unlimited
from .protocol import (
    BLOB_SIZE,
    END_TRUE,
    STREAM_BATCH,
    STREAM_COUNT,
    STREAM_END,
    STREAM_SEQ,
    FrameKind,
    caller_headers,
    check_size,
    classify,
    error_headers,
    is_no_responders,
    message_size,
    parse_uint,
    user_headers,
    RESPONSE_PROTOCOL_HEADERS,
)
from .mux import InboxMux
from .transport import Transport, publish, publish_now

if TYPE_CHECKING:
    from .peers import PeerGroup

M = TypeVar("M", bound=betterproto.Message)

RECONNECT_CHECK = 1.0  # seconds: how often a waiting reader looks whether its connection reconnected


class Deadline:
    """A point in time a call must end by, on the event loop's clock and as a unix time."""

    __slots__ = ("at", "epoch")

    def __init__(self, timeout: float) -> None:
        self.at = asyncio.get_running_loop().time() + timeout
        self.epoch = time.time() + timeout

    @classmethod
    def after(cls, timeout: float | None) -> Deadline | None:
        return None if timeout is None else cls(timeout)

    @classmethod
    def at_epoch(cls, epoch: float) -> Deadline:
        """The deadline a peer sent as unix time."""
        return cls(epoch - time.time())

    def earliest(self, other: Deadline | None) -> Deadline:
        return self if other is None or self.at <= other.at else other

    @property
    def epoch_ms(self) -> str:
        return str(int(self.epoch * 1000))

    def remaining(self) -> float:
        return max(0.0, self.at - asyncio.get_running_loop().time())


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


def _counted(msg: Msg) -> int:
    """Stream messages a queued NATS message holds against the window: a batch's count (as its
    peer claims it; the reader checks the claim), else one."""
    headers = msg.headers
    if headers is None or STREAM_BATCH not in headers:
        return 1
    return parse_uint(headers[STREAM_BATCH]) or 1


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
        counted = _counted(msg)
        headers = msg.headers
        if headers is not None and (STREAM_SEQ in headers or STREAM_END in headers):
            self.arrived += counted
        if self._dropping:
            return
        self.last_data = now
        queue = self._queue
        if queue is EMPTY_QUEUE:
            queue = self._queue = deque()
        queue.append(msg)
        self._queued_messages += counted
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
            self._queued_messages -= _counted(msg)
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


class StreamReader(Generic[M]):
    """The receiving side of one direction: checks `Nats-Stream-Seq`, the end marker and its count."""

    __slots__ = (
        "inbox", "codec", "message_type", "method", "deadline", "received", "bytes_received", "finished", "saw_end",
        "error", "headers", "blob_size", "acks", "_unpacked", "_acking", "_decode",
    )

    def __init__(
        self,
        inbox: Inbox,
        codec: Codec,
        message_type: type[M],
        method: str,
        deadline: Deadline | None,
    ) -> None:
        self.inbox = inbox
        self.codec = codec
        self.message_type = message_type
        self.method = method
        self.deadline = deadline
        self.received = 0
        self.bytes_received = 0
        self.finished = False  # no more messages will be returned
        self.saw_end = False  # the peer's end marker arrived
        self.error: RpcError | None = None
        self.headers: dict[str, str] = {}  # the peer's headers on its first message
        self.blob_size: int | None = None  # a chunked stream's size, when the sender said it
        self.acks: Acknowledger = NO_ACKS  # v2: acknowledge what the application consumed
        self._unpacked: deque[bytes] = EMPTY_QUEUE  # the rest of a batched frame, in order
        self._acking: set[asyncio.Future[None]] | None = None  # acks sent by `take_nowait`
        self._decode = codec.decoder(message_type, method)

    def _fail(self, error: RpcError) -> RpcError:
        self.finished = True
        self.error = error
        self._unpacked = EMPTY_QUEUE
        return error

    async def recv(self) -> M:
        """The next message; StopAsyncIteration at a clean end, RpcError on any failure."""
        if self._unpacked and not self.finished and not self.inbox.aborted:  # the rest of a batch: no waiting
            body = self._next_unpacked()
            ack = self._count(body)
            if ack is not None:
                await ack
        else:
            body = await self.recv_body()
        try:
            return self._decode(body)
        except RpcError as error:
            raise self._fail(error) from None

    def take_nowait(self) -> M | None:
        """The next message when it is already unpacked (the rest of a batch), else None: `recv`
        waits or fails. An ack that falls due goes out in a task of its own (acks are cumulative)."""
        if not self._unpacked or self.finished or self.inbox.aborted:
            return None
        try:
            message = self._decode(self._unpacked[0])
        except RpcError as error:
            self._fail(error)  # `recv` raises it, through the call's own error handling
            return None
        ack = self._count(self._next_unpacked())
        if ack is not None:
            acking = self._acking
            if acking is None:
                acking = self._acking = set()
            task = asyncio.ensure_future(ack)
            acking.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(acking.discard)
        return message

    def _next_unpacked(self) -> bytes:
        """The next message of a batched frame (the queue goes once empty: idle streams hold none)."""
        unpacked = self._unpacked
        body = unpacked.popleft()
        if not unpacked:
            self._unpacked = EMPTY_QUEUE
        return body

    async def recv_body(self) -> bytes:
        """The next message's body, undecoded (chunk fast path); same checks and acks as `recv`."""
        if self.finished:
            if self.error is not None:
                raise self.error
            raise StopAsyncIteration
        if self._unpacked:
            if not self.inbox.aborted:
                return await self._consumed(self._next_unpacked())
            self._unpacked = EMPTY_QUEUE
        while True:
            msg = await self.inbox.get(self.deadline, self.method)
            headers = msg.headers
            if not self.headers and headers and self.received == 0:
                self.headers = caller_headers(headers)
                if BLOB_SIZE in headers:
                    self.blob_size = parse_uint(headers[BLOB_SIZE])
            frame = classify(headers, self.method)
            kind = frame.kind
            if kind is FrameKind.DATA:
                expected = self.received + 1
                if frame.seq != expected:
                    raise self._fail(
                        RpcError(
                            ErrorCode.DATA_LOSS,
                            f"message lost or repeated: expected {STREAM_SEQ} {expected}, got {frame.seq}",
                            method=self.method,
                        )
                    )
                if frame.batch == 1:
                    return await self._consumed(msg.data)
                bodies = unpack(msg.data, frame.batch)
                if bodies is None:
                    raise self._fail(
                        RpcError(
                            ErrorCode.DATA_LOSS,
                            f"malformed batched frame: not {frame.batch} length-prefixed messages",
                            method=self.method,
                        )
                    )
                self._unpacked = deque(bodies[1:])
                return await self._consumed(bodies[0])
            if kind is FrameKind.END:
                self.saw_end = True
                if frame.error is not None:
                    raise self._fail(frame.error)
                if frame.count is not None and frame.count != self.received:
                    raise self._fail(
                        RpcError(
                            ErrorCode.DATA_LOSS,
                            f"stream ended after {self.received} messages, peer sent {frame.count}",
                            method=self.method,
                        )
                    )
                self.finished = True
                raise StopAsyncIteration
            if kind is FrameKind.ERROR:
                assert frame.error is not None
                self.saw_end = True
                raise self._fail(frame.error)
            # Anything else (no seq, no end, no error) is not data: skip it.

    def _count(self, body: bytes) -> Awaitable[None] | None:
        """Count the next message in sequence as taken by the application; the v2 ack that is due."""
        self.received += 1
        self.bytes_received += len(body)
        return self.acks.consumed(self.received, len(body))

    async def _consumed(self, body: bytes) -> bytes:
        ack = self._count(body)
        if ack is not None:
            await ack
        return body

    async def drain_to_end(self, deadline: Deadline | None) -> None:
        """Discard what is left until the peer's end marker (or the deadline)."""
        while not self.saw_end:
            try:
                msg = await self.inbox.get(deadline, self.method)
            except RpcError:
                return
            if msg.headers and msg.headers.get(STREAM_END) == END_TRUE:
                self.saw_end = True
        self.finished = True


# How long the first message to a peer's inbox is resent while the NATS server does not know the inbox.
FIRST_HOP_WAIT = 1.0


class FirstHop:
    """Delivers the first message to an inbox the peer created, even before interest in it has
    reached our NATS server (across gateways, subscription interest and messages travel on different
    connections, so the peer's announcement of its inbox can arrive before the inbox is known).

    The message goes with our own inbox as its reply subject, then a flush: a server that does not
    know the subject answers with a no-responders status before the flush's PONG, and the message,
    which went nowhere, is sent again with a short backoff (bounded, then UNAVAILABLE). A Go peer
    ignores reply subjects on stream messages, so it sees nothing extra. `saw` is called first by our
    inbox's watcher to take those statuses.
    """

    __slots__ = ("nc", "own_inbox", "method", "wait", "done", "_probing", "_missed")

    def __init__(self, nc: Transport, own_inbox: str, method: str | None) -> None:
        self.nc = nc
        self.own_inbox = own_inbox
        self.method = method
        self.wait = FIRST_HOP_WAIT  # seconds of retries before UNAVAILABLE
        self.done = False
        self._probing = False
        self._missed = False

    def saw(self, msg: Msg) -> bool:
        """True for a no-responders status that answers our probe (not for the reader)."""
        if self._probing and is_no_responders(msg.headers):
            self._missed = True
            return True
        return False

    async def send(self, send_once: Callable[[str], Awaitable[None]], undo: Callable[[], None]) -> None:
        """`send_once(reply)` until it was not refused; `undo()` rewinds what a refused send counted."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait
        delay = 0.001
        while True:
            self._probing, self._missed = True, False
            try:
                await send_once(self.own_inbox)
                await self.nc.flush()
                await asyncio.sleep(0)  # the status, if any, came before the PONG: let its callback run
            finally:
                self._probing = False
            if not self._missed:
                self.done = True
                return
            undo()
            if loop.time() > give_up:
                raise RpcError(ErrorCode.UNAVAILABLE, "the peer's inbox is not reachable", method=self.method)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


class StreamWriter:
    """The sending side of one direction: numbers messages from 1 and ends with the count sent.

    When the receiver takes batched frames (`credit.batch` > 1), small messages wait in `_batch`
    until this loop turn ends (the producer awaits something that suspends) or a bound is reached,
    and leave as one NATS message: never later than they would have been written to the socket.
    """

    __slots__ = (
        "nc", "subject", "codec", "method", "sent", "bytes_sent", "ended", "first_headers", "credit", "first_hop",
        "on_sent", "_batch", "_batch_bytes", "_flush_pending", "_flushing", "_flush_error",
        "_handed_over", "_batch_byte_limit", "_batched_body_limit", "turn_due",
    )

    def __init__(
        self,
        nc: Transport,
        subject: str,
        codec: Codec,
        method: str,
        credit: SendCredit | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.codec = codec
        self.method = method
        self.sent = 0  # the last sequence number given out (sent, or waiting in the batch)
        self.bytes_sent = 0
        self.ended = False
        # Sent once, with the first message of this direction (data or end): response headers.
        self.first_headers: Mapping[str, str] | None = None
        self.credit: SendCredit = credit if credit is not None else Unlimited()  # v2: the receiver's window
        self.first_hop: FirstHop | None = None  # set when the subject is an inbox the peer just created
        self.on_sent = on_sent  # v2: heartbeats count what we send
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._flush_pending = False  # a flush is scheduled for the end of this loop turn
        self._flushing: asyncio.Task[None] | None = None  # a flush that had to await `publish`
        self._flush_error: BaseException | None = None
        self._handed_over = 0
        # A full batch left while the producer kept queueing without awaiting anything: it should let
        # the loop run once (`take_turn`), so acks and what the peer sends are read between batches
        # (a bidi client that sends 2,048 messages before reading one ran at half the rate).
        self.turn_due = False
        # Bodies up to this size may share a frame; one frame stays well below max_payload.
        self._batch_byte_limit = min(MAX_BATCH_BYTES, nc.max_payload // 2)
        self._batched_body_limit = min(BATCHED_BODY_LIMIT, self._batch_byte_limit // 2)

    @property
    def handed_over(self) -> int:
        """Frames handed to NATS (data messages, then the end marker as one more), as a v2 heartbeat
        reports them: nothing while the first message may still have to be sent again."""
        first_hop = self.first_hop
        return self._handed_over if first_hop is None or first_hop.done else 0

    def _published(self, position: int) -> None:
        """Frames up to `position` are with NATS now: heartbeats may count them."""
        if position > self._handed_over:
            self._handed_over = position
        if self.on_sent is not None:
            self.on_sent()

    def _batchable(self, size: int, reply: str = "") -> bool:
        """A message that may share a frame: batches agreed, small, not the one that carries the
        response headers or the first-hop check."""
        return self.credit.batch > 1 and size <= self._batched_body_limit and not reply and self.first_headers is None

    def _take_first_headers(self, headers: dict[str, str]) -> None:
        if self.first_headers:  # a handler's dict, which it may have changed since it set it: checked again
            headers.update(user_headers(self.first_headers, allow=RESPONSE_PROTOCOL_HEADERS))
        self.first_headers = None

    async def send(self, message: betterproto.Message) -> None:
        body = self.codec.encode(message)
        if not self.queue_nowait(body):
            await self.send_body(body)

    def queue_nowait(self, body: bytes) -> bool:
        """Put a small message into the batch when nothing needs waiting for (batches agreed, the
        first message sent, credit there); False: `send_body` it. The hot path of a stream: no
        coroutine per message."""
        credit = self.credit
        size = len(body)
        if (
            not self._batchable(size)
            or self.ended
            or self._flush_error is not None
            or (self.first_hop is not None and not self.first_hop.done)
            or not credit.ready(size)
        ):
            return False
        if self._batch and self._would_overflow(size, credit):
            self._flush_without_waiting()
            if self._batch:  # a flush is still under way: this one waits for it in `send_body`
                return False
        self._append(body, size, credit)
        return True

    async def send_body(self, body: bytes, reply: str = "") -> None:
        first_hop = self.first_hop
        if first_hop is not None and not first_hop.done and not reply:
            sent, sent_bytes, first_headers = self.sent, self.bytes_sent, self.first_headers

            def undo() -> None:
                self.sent, self.bytes_sent, self.first_headers = sent, sent_bytes, first_headers

            return await first_hop.send(lambda own: self.send_body(body, reply=own), undo)
        if self.ended:
            raise RpcError(ErrorCode.INTERNAL, "send after the stream was ended", method=self.method)
        credit = self.credit
        if self._batchable(len(body), reply):
            return await self._add_to_batch(body, credit)
        if self._batch or self._flushing is not None:
            await self.flush()
        seq = self.sent + 1
        headers = {STREAM_SEQ: str(seq)}
        if self.first_headers is not None:
            self._take_first_headers(headers)
        check_size(len(body), headers, self.nc.max_payload, self.method)
        await credit.acquire(len(body))
        await self._publish(body, headers, seq, reply)
        self.sent = seq
        self.bytes_sent += len(body)
        credit.sent(seq, len(body))

    async def _add_to_batch(self, body: bytes, credit: SendCredit) -> None:
        """Queue a small message for the next batched frame; flow control counts it now."""
        size = len(body)
        if not credit.ready(size):
            await credit.acquire(size)  # out of credit: we suspend here, and the scheduled flush runs
        if self._flush_error is not None:
            raise self._flush_error
        if self._batch and self._would_overflow(size, credit):
            await self.flush()
        self._append(body, size, credit)

    def _would_overflow(self, size: int, credit: SendCredit) -> bool:
        """One more message of `size` would break the batch's bounds (count, bytes)."""
        return len(self._batch) >= credit.batch or self._batch_bytes + size + 3 > self._batch_byte_limit

    def _append(self, body: bytes, size: int, credit: SendCredit) -> None:
        """Count a message and add it to the batch (within its bounds: callers checked). A full
        batch leaves now if it can; any other at the end of this loop turn."""
        self.sent += 1
        self.bytes_sent += size
        credit.sent(self.sent, size)
        batch = self._batch
        batch.append(body)
        self._batch_bytes += size + 3
        if len(batch) >= credit.batch:
            self.turn_due = True
            self._flush_without_waiting()
        elif not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _take_batch(self) -> tuple[bytes, dict[str, str], int]:
        """The waiting messages as one NATS message (a single one as a plain data message), and the
        sequence number of its last message."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        first = self.sent - len(batch) + 1
        if len(batch) == 1:
            body, headers = batch[0], {STREAM_SEQ: str(first)}
        else:
            body, headers = pack(batch), {STREAM_SEQ: str(first), STREAM_BATCH: str(len(batch))}
        if self.first_headers is not None:
            self._take_first_headers(headers)
        return body, headers, self.sent

    def _flush_soon(self) -> None:
        """End of the loop turn in which messages were queued: send them now."""
        self._flush_pending = False
        self._flush_without_waiting()

    def _flush_without_waiting(self) -> None:
        """Queue the batch at once when the transport can, else hand it to a task (in order:
        a flush already under way sends it after its own)."""
        if not self._batch or self._flushing is not None:
            return
        body, headers, last = self._take_batch()
        if publish_now(self.nc, self.subject, body, headers):
            self._published(last)
            return
        self._flushing = asyncio.get_running_loop().create_task(self._publish_taken(body, headers, last))

    async def _publish_taken(self, body: bytes, headers: dict[str, str], last: int) -> None:
        """Publish a taken batch, then whatever was queued meanwhile (nobody else sends it)."""
        try:
            while True:
                await self._publish(body, headers, last)
                if not self._batch:
                    break
                body, headers, last = self._take_batch()
        except Exception as error:  # the connection closed: the next send or end says so
            self._flush_error = error
            self.credit.fail(error)
        finally:
            self._flushing = None

    async def take_turn(self) -> None:
        """Let the loop run once after a full batch left (see `turn_due`)."""
        self.turn_due = False
        await asyncio.sleep(0)

    async def flush(self) -> None:
        """Send whatever waits in the batch now (in order behind a flush already under way)."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._flush_error is not None:
            raise self._flush_error
        if self._batch:
            body, headers, last = self._take_batch()
            await self._publish(body, headers, last)

    async def _publish(self, body: bytes, headers: dict[str, str], position: int, reply: str = "") -> None:
        """One frame, which takes the stream to `position` (its last message, or the end marker)."""
        await publish(self.nc, self.subject, body, headers, reply)
        self._published(position)

    async def end(self, error: RpcError | None = None) -> None:
        """Send the end marker (with the error pair when failing); only the first call sends."""
        if self.ended:
            return
        first_hop = self.first_hop
        if first_hop is not None and not first_hop.done:  # nothing was sent: the end marker goes first
            first_headers = self.first_headers

            def undo() -> None:
                self.ended, self.first_headers = False, first_headers

            return await first_hop.send(lambda own: self._end(error, own), undo)
        if self._batch or self._flushing is not None:
            try:
                await self.flush()
            except Exception:
                if error is None:
                    raise
        await self._end(error)

    async def _end(self, error: RpcError | None, reply: str = "") -> None:
        self.ended = True
        headers: dict[str, Any] = {STREAM_END: END_TRUE, STREAM_COUNT: str(self.sent)}
        if self.first_headers is not None:
            self._take_first_headers(headers)
        if error is not None:
            headers.update(error_headers(error.code, error.message))
        if message_size(0, headers) > self.nc.max_payload:  # response headers too large: end all the same
            too_big = f"the end marker's headers exceed the server's max_payload of {self.nc.max_payload}"
            headers = {STREAM_END: END_TRUE, STREAM_COUNT: str(self.sent)}
            headers.update(error_headers(ErrorCode.RESOURCE_EXHAUSTED, too_big))
        await self._publish(b"", headers, self.sent + 1, reply)
