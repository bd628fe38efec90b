"""`StreamWriter`: the driver of one direction's sending rules (`core.sender.Sender`: numbering,
the window, the frames' and the end marker's headers), on either side: the frames it hands to NATS
(one at a time, in order, response headers on the first, counting the position heartbeats report:
`handed_over`), size checks, waiting for credit, the first hop; small messages of one loop turn
leave as one batched frame when the receiver takes them, with `queue_nowait`, no coroutine per
message: queued at once where the transport can, else by a task, in order; never later than they
would have been written to the socket one by one."""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping

import betterproto2

from ..core.errors import ErrorCode, RpcError
from ..core.batch import BATCHED_BODY_LIMIT, MAX_BATCH_BYTES, pack
from ..core.headers import RESPONSE_PROTOCOL_HEADERS, check_size, user_headers
from ..core.sender import Sender, data_headers
from ..encoding.codec import Codec
from ..net.transport import Transport, publish, publish_now
from .first_hop import FirstHop
from .flow import FlowWindow, SendCredit, Unlimited


class StreamWriter:
    """Moves one direction's frames from the producer to NATS under its `Sender` (see the module).
    When the receiver takes batched frames (`rules.batch` > 1), small messages wait in `_batch` until
    this loop turn ends (the producer awaits something that suspends) or a bound is reached, and
    leave as one NATS message."""

    __slots__ = (
        "nc", "subject", "codec", "method", "rules", "first_headers", "credit", "first_hop",
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
    ) -> None:
        self.nc = nc
        self.subject = subject
        self.codec = codec
        self.method = method
        self.rules = Sender()  # numbering, the window once v2 is confirmed (`limit`), the frames' headers
        # Sent once, with the first message of this direction (data or end): response headers.
        self.first_headers: Mapping[str, str] | None = None
        self.credit: SendCredit = credit if credit is not None else Unlimited()  # v2: waits for the rules' window
        self.first_hop: FirstHop | None = None  # set when the subject is an inbox the peer just created
        self.on_sent: Callable[[], None] | None = None  # v2: heartbeats count what we send (`start_v2`)
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

    def limit(self, window: FlowWindow) -> None:
        """v2: sending waits for `window`, the credit of the window the receiver granted our rules."""
        self.credit = window

    @property
    def sent(self) -> int:
        """The last sequence number given out (sent, or waiting in the batch)."""
        return self.rules.sent

    @property
    def bytes_sent(self) -> int:
        return self.rules.bytes_sent

    @property
    def ended(self) -> bool:
        return self.rules.ended

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
        return self.rules.batch > 1 and size <= self._batched_body_limit and not reply and self.first_headers is None

    def _would_overflow(self, size: int, rules: Sender) -> bool:
        """One more message of `size` would break the batch's bounds (count, bytes)."""
        return len(self._batch) >= rules.batch or self._batch_bytes + size + 3 > self._batch_byte_limit

    def _append(self, body: bytes, size: int, rules: Sender) -> None:
        """Count a message and add it to the batch (within its bounds: callers checked). A full
        batch leaves now if it can; any other at the end of this loop turn."""
        rules.add(size)
        batch = self._batch
        batch.append(body)
        self._batch_bytes += size + 3
        if len(batch) >= rules.batch:
            self.turn_due = True
            self._flush_without_waiting()
        elif not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush_soon)

    def _take_batch(self) -> tuple[bytes, dict[str, str], int]:
        """The waiting messages as one NATS message (a single one as a plain data message), and the
        sequence number of its last message."""
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        last = self.rules.sent
        headers = data_headers(last - len(batch) + 1, len(batch))
        body = batch[0] if len(batch) == 1 else pack(batch)
        if self.first_headers is not None:
            self._take_first_headers(headers)
        return body, headers, last

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

    async def send(self, message: betterproto2.Message) -> None:
        body = self.codec.encode(message)
        if not self.queue_nowait(body):
            await self.send_body(body)

    def queue_nowait(self, body: bytes) -> bool:
        """Put a small message into the batch when nothing needs waiting for (batches agreed, the
        first message sent, credit there); False: `send_body` it. The hot path of a stream: no
        coroutine per message."""
        rules = self.rules
        size = len(body)
        if (
            not self._batchable(size)
            or rules.ended
            or self._flush_error is not None
            or (self.first_hop is not None and not self.first_hop.done)
            or not self.credit.ready(size)
        ):
            return False
        if self._batch and self._would_overflow(size, rules):
            self._flush_without_waiting()
            if self._batch:  # a flush is still under way: this one waits for it in `send_body`
                return False
        self._append(body, size, rules)
        return True

    async def send_body(self, body: bytes, reply: str = "") -> None:
        rules = self.rules
        first_hop = self.first_hop
        if first_hop is not None and not first_hop.done and not reply:
            sent, sent_bytes, first_headers = rules.sent, rules.bytes_sent, self.first_headers

            def undo() -> None:
                rules.sent, rules.bytes_sent, self.first_headers = sent, sent_bytes, first_headers

            return await first_hop.send(lambda own: self.send_body(body, reply=own), undo)
        if rules.ended:
            raise RpcError(ErrorCode.INTERNAL, "send after the stream was ended", method=self.method)
        if self._batchable(len(body), reply):
            return await self._add_to_batch(body)
        if self._batch or self._flushing is not None:
            await self.flush()
        seq = rules.sent + 1
        headers = data_headers(seq, 1)
        if self.first_headers is not None:
            self._take_first_headers(headers)
        check_size(len(body), headers, self.nc.max_payload, self.method)
        await self.credit.acquire(len(body))
        await self._publish(body, headers, seq, reply)
        rules.add(len(body))

    async def _add_to_batch(self, body: bytes) -> None:
        """Queue a small message for the next batched frame; flow control counts it now."""
        size = len(body)
        credit = self.credit
        if not credit.ready(size):
            await credit.acquire(size)  # out of credit: we suspend here, and the scheduled flush runs
        if self._flush_error is not None:
            raise self._flush_error
        if self._batch and self._would_overflow(size, self.rules):
            await self.flush()
        self._append(body, size, self.rules)

    async def end(self, error: RpcError | None = None) -> None:
        """Send the end marker (with the error pair when failing); only the first call sends."""
        rules = self.rules
        if rules.ended:
            return
        first_hop = self.first_hop
        if first_hop is not None and not first_hop.done:  # nothing was sent: the end marker goes first
            first_headers = self.first_headers

            def undo() -> None:
                rules.ended, self.first_headers = False, first_headers

            return await first_hop.send(lambda own: self._end(error, own), undo)
        if self._batch or self._flushing is not None:
            try:
                await self.flush()
            except Exception:
                if error is None:
                    raise
        await self._end(error)

    async def _end(self, error: RpcError | None, reply: str = "") -> None:
        rules = self.rules
        rules.ended = True  # before anything can fail: one end marker at most
        first: dict[str, str] = {}
        if self.first_headers is not None:
            self._take_first_headers(first)
        await self._publish(b"", rules.end(error, first, self.nc.max_payload), rules.sent + 1, reply)
