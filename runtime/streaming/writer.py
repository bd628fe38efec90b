"""`StreamWriter`: the sending side of one direction of a stream, on either side: numbering from 1,
size checks, credit, the first hop, the end marker with the count; small messages go into the batch
(`BatchingSender`) with `queue_nowait`, no coroutine per message."""

from __future__ import annotations

from typing import Any

import betterproto

from ..core.errors import ErrorCode, RpcError
from ..core.headers import END_TRUE, STREAM_COUNT, STREAM_END, STREAM_SEQ, check_size, error_headers, message_size
from .batching import BatchingSender
from .flow import SendCredit


class StreamWriter(BatchingSender):
    """The sending side of one direction: numbers messages from 1 and ends with the count sent.

    When the receiver takes batched frames (`credit.batch` > 1), small messages wait in `_batch`
    until this loop turn ends (the producer awaits something that suspends) or a bound is reached,
    and leave as one NATS message: never later than they would have been written to the socket.
    """

    __slots__ = ()

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
