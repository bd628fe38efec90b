"""`StreamReader`: the receiving side of one direction of a stream, on either side: sequence, end
marker and count checks, batches unpacked, acks through its `Acknowledger`."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Generic, TypeVar

import betterproto2

from ..core.credit import EMPTY_QUEUE, NO_ACKS, Acknowledger
from ..core.errors import ErrorCode, RpcError
from ..core.frames import FrameKind, classify
from ..core.headers import BLOB_SIZE, END_TRUE, STREAM_END, STREAM_SEQ, caller_headers, parse_uint
from ..core.loss import short_end
from ..encoding.batch import unpack
from ..encoding.codec import Codec
from .deadline import Deadline
from .inbox import Inbox

M = TypeVar("M", bound=betterproto2.Message)


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
                short = short_end(self.received, frame.count)
                if short is not None:
                    raise self._fail(RpcError(ErrorCode.DATA_LOSS, short, method=self.method))
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
