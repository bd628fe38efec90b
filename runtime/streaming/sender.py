"""`FrameSender`: a stream writer's state, and the frames it hands to NATS: one frame at a time,
in order, with the response headers on the first, counting the position heartbeats report
(`handed_over`). `BatchingSender` and `StreamWriter` build on it.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Mapping

from ..core.headers import RESPONSE_PROTOCOL_HEADERS, user_headers
from ..encoding.batch import BATCHED_BODY_LIMIT, MAX_BATCH_BYTES
from ..encoding.codec import Codec
from ..net.transport import Transport, publish
from .first_hop import FirstHop
from .flow import SendCredit, Unlimited


class FrameSender:
    """One direction's sending state and its frames on the wire (see the module)."""

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
