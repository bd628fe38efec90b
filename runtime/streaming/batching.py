"""`BatchingSender`: small messages of one loop turn leave as one batched frame (`Nats-Stream-Batch`),
when the receiver takes them: queued at once where the transport can, else by a task, in order;
never later than they would have been written to the socket one by one.
"""

from __future__ import annotations

import asyncio

from ..core.headers import STREAM_BATCH, STREAM_SEQ
from ..encoding.batch import pack
from ..net.transport import publish_now
from .flow import SendCredit
from .sender import FrameSender


class BatchingSender(FrameSender):
    """The batch of a stream writer (see the module)."""

    __slots__ = ()

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
