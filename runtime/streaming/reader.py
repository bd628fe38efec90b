"""`StreamReader`: the driver of one direction's receiving rules (`core.receiver.Receiver`), on
either side: frames from the inbox fed to the rules, the messages they let through decoded, the acks
they say are due sent through the session."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Awaitable, Callable, Generic, TypeVar

import betterproto2

from ..core.sender import EMPTY_QUEUE
from ..core.errors import RpcError
from ..core.negotiation import Window
from ..core.receiver import END, Data, Receiver
from ..encoding.codec import Codec
from .deadline import Deadline
from .inbox import Inbox

M = TypeVar("M", bound=betterproto2.Message)


class StreamReader(Generic[M]):
    """Moves one direction's frames from its inbox through its `Receiver` (see the module)."""

    __slots__ = ("inbox", "codec", "message_type", "method", "deadline", "rules", "_send_ack", "_unpacked", "_acking", "_decode")

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
        self.rules = Receiver(method)
        self._send_ack: Callable[[int], Awaitable[None]] | None = None  # v2: the session's
        self._unpacked: deque[bytes] = EMPTY_QUEUE  # the rest of a batched frame, in order
        self._acking: set[asyncio.Future[None]] | None = None  # acks sent by `take_nowait`
        self._decode = codec.decoder(message_type, method)

    # What the rules know, as the call classes read it.
    @property
    def received(self) -> int:
        return self.rules.received

    @property
    def bytes_received(self) -> int:
        return self.rules.bytes_received

    @property
    def finished(self) -> bool:
        """No more messages will be returned."""
        return self.rules.finished

    @property
    def saw_end(self) -> bool:
        """The peer sent its last frame (its end marker or an error answer)."""
        return self.rules.peer_done

    @property
    def error(self) -> RpcError | None:
        return self.rules.error

    @property
    def headers(self) -> dict[str, str]:
        """The peer's caller headers on its first message."""
        return self.rules.headers

    @property
    def blob_size(self) -> int | None:
        """A chunked stream's size, when the sender said it."""
        return self.rules.blob_size

    def acknowledge(self, window: Window, send_ack: Callable[[int], Awaitable[None]]) -> None:
        """v2: acknowledge what the application consumed, within the `window` we granted."""
        self.rules.acknowledge(window)
        self._send_ack = send_ack

    def _fail(self, error: RpcError) -> RpcError:
        self.rules.fail(error)
        self._unpacked = EMPTY_QUEUE
        return error

    async def recv(self) -> M:
        """The next message; StopAsyncIteration at a clean end, RpcError on any failure."""
        if self._unpacked and not self.rules.finished and not self.inbox.aborted:  # the rest of a batch: no waiting
            body = self._next_unpacked()
            ack = self.rules.consumed(len(body))
            if ack is not None and self._send_ack is not None:
                await self._send_ack(ack)
        else:
            body = await self.recv_body()
        try:
            return self._decode(body)
        except RpcError as error:
            raise self._fail(error) from None

    def take_nowait(self) -> M | None:
        """The next message when it is already unpacked (the rest of a batch), else None: `recv`
        waits or fails. An ack that falls due goes out in a task of its own (acks are cumulative)."""
        if not self._unpacked or self.rules.finished or self.inbox.aborted:
            return None
        try:
            message = self._decode(self._unpacked[0])
        except RpcError as error:
            self._fail(error)  # `recv` raises it, through the call's own error handling
            return None
        ack = self.rules.consumed(len(self._next_unpacked()))
        if ack is not None and self._send_ack is not None:
            acking = self._acking
            if acking is None:
                acking = self._acking = set()
            task = asyncio.ensure_future(self._send_ack(ack))
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
        rules = self.rules
        if rules.finished:
            if rules.error is not None:
                raise rules.error
            raise StopAsyncIteration
        if self._unpacked:
            if not self.inbox.aborted:
                return await self._consumed(self._next_unpacked())
            self._unpacked = EMPTY_QUEUE
        while True:
            msg = await self.inbox.get(self.deadline, self.method)
            event = rules.feed(msg.headers, msg.data)
            if type(event) is Data:
                if event.more is not None:
                    self._unpacked = deque(event.more)
                return await self._consumed(event.body)
            if event is END:
                raise StopAsyncIteration
            if event is not None:
                assert rules.error is not None
                raise rules.error
            # Anything else (no seq, no end, no error) is not data: skip it.

    async def _consumed(self, body: bytes) -> bytes:
        ack = self.rules.consumed(len(body))
        if ack is not None and self._send_ack is not None:
            await self._send_ack(ack)
        return body

    async def drain_to_end(self, deadline: Deadline | None) -> None:
        """Discard what is left until the peer's last frame (or the deadline)."""
        rules = self.rules
        while not rules.peer_done:
            try:
                msg = await self.inbox.get(deadline, self.method)
            except RpcError:
                return
            rules.feed(msg.headers, msg.data)  # the peer's last frame leaves the rules finished
