"""`StreamWriter`: the sending side of one direction of a stream, on either side: its state and
the frames it hands to NATS (one at a time, in order, response headers on the first, counting the
position heartbeats report: `handed_over`); numbering from 1, size checks, credit, the first hop,
the end marker with the count; small messages of one loop turn leave as one batched frame
(`Nats-Stream-Batch`) when the receiver takes them, with `queue_nowait`, no coroutine per message:
queued at once where the transport can, else by a task, in order; never later than they would have
been written to the socket one by one."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping

import betterproto

from ..core.errors import ErrorCode, RpcError
from ..core.headers import (
    END_TRUE,
    RESPONSE_PROTOCOL_HEADERS,
    STREAM_BATCH,
    STREAM_COUNT,
    STREAM_END,
    STREAM_SEQ,
    check_size,
    error_headers,
    message_size,
    user_headers,
)
from ..core.batch import BATCHED_BODY_LIMIT, MAX_BATCH_BYTES, pack
from ..encoding.codec import Codec
from ..net.transport import Transport, publish, publish_now
from .first_hop import FirstHop
from .flow import SendCredit, Unlimited


class StreamWriter:
    """The sending side of one direction (see the module): numbers messages from 1 and ends with the
    count sent. When the receiver takes batched frames (`credit.batch` > 1), small messages wait in
    `_batch` until this loop turn ends (the producer awaits something that suspends) or a bound is
    reached, and leave as one NATS message."""

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

    def _take_first_headers(self, headers: dict[str, str]) -> None:
        if self.first_headers:  # a handler's dict, which it may have changed since it set it: checked again
            headers.update(user_headers(self.first_headers, allow=RESPONSE_PROTOCOL_HEADERS))
        self.first_headers = None

    async def _publish(self, body: bytes, headers: dict[str, str], position: int, reply: str = "") -> None:
        """One frame, which takes the stream to `position` (its last message, or the end marker)."""
        await publish(self.nc, self.subject, body, headers, reply)
        self._published(position)

    # --- The batch of one loop turn ------------------------------------------------------------

    def _batchable(self, size: int, reply: str = "") -> bool:
        """A message that may share a frame: batches agreed, small, not the one that carries the
        response headers or the first-hop check."""
        return self.credit.batch > 1 and size <= self._batched_body_limit and not reply and self.first_headers is None

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

    # --- The stream: numbering, sizes, the end marker ---------------------------------------------

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
