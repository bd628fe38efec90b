"""The responders of the three stream shapes (server stream, client stream, bidi): how each opens,
serves and finishes; `RESPONDERS` picks one by cardinality."""

from __future__ import annotations

import asyncio
from typing import Any

from ..core.errors import ErrorCode, RpcError
from ..core.headers import REPLY_TO, STREAM_INBOX
from ..core.negotiation import Window
from ..features.chunks import ChunkCodec, split
from ..features.interceptors import Direction
from ..schema.spec import Cardinality
from ..streaming.deadline import Deadline
from ..streaming.inbox import Inbox
from ..streaming.reader import StreamReader
from .request_streams import RequestStream, UploadRequests
from .responder import NoAnswer, Responder

# A v1 client-streaming client (the Go one) subscribes to its reply inbox only after sending its end
# marker, so the final answer is held until that marker arrives: at most this long without a deadline.
V1_HOLD_LIMIT = 30.0
# Old-style server streams (no Reply-To): how long the first message is retried while the client has
# not yet subscribed to the inbox we named in the ack (it subscribes only once the ack arrived).
OLD_STYLE_SUBSCRIBE_WAIT = 2.0


class _SendsStream(Responder):
    """A shape whose server direction is a stream to the client's inbox `R`."""

    __slots__ = ()

    async def send_all(self, responses: Any) -> None:
        if not hasattr(responses, "__aiter__"):
            if asyncio.iscoroutine(responses):
                responses.close()
            raise self.error(ErrorCode.INTERNAL, f"{self.method.py_name} must be an async generator (use yield)")
        assert self.writer is not None
        chunks = None
        if self.method.chunks is not None:
            chunks = ChunkCodec(self.method.response, self.method.chunks, self.codec)
            chunks.check_fits(chunks.chunk_size, self.nc.max_payload, self.name)
        try:
            async for response in responses:
                if chunks is not None:
                    if isinstance(response, (bytes, bytearray, memoryview)):
                        for piece in split(response, chunks.chunk_size):  # raw bytes of any size
                            if self.blob is not None:
                                self.blob.feed(piece)
                            await self.writer.send_body(chunks.encode(piece))
                        continue
                    if self.blob is not None and isinstance(response, self.method.response):
                        self.blob.feed(getattr(response, chunks.field))
                    body = chunks.encode_message(response)
                    if body is not None:  # a chunk message, on the fast path too
                        await self.writer.send_body(body)
                        continue
                if not isinstance(response, self.method.response):
                    raise self.error(
                        ErrorCode.INTERNAL,
                        f"handler yielded {type(response).__name__}, not {self.method.response.__name__}",
                    )
                if self.info is not None:
                    response = self.intercept(Direction.SENT, response)
                body = self.codec.encode(response)
                if not self.writer.queue_nowait(body):
                    await self.writer.send_body(body)
                elif self.writer.turn_due:
                    await self.writer.take_turn()
        except asyncio.CancelledError:
            # The handler is suspended at a `yield` while we send: it must see the cancellation too.
            if hasattr(responses, "athrow"):
                try:
                    await responses.athrow(asyncio.CancelledError())
                except BaseException:
                    pass
            raise
        finally:
            if hasattr(responses, "aclose"):
                await responses.aclose()  # run the handler's cleanup now, not at garbage collection

    async def finish(self, error: RpcError | None) -> None:
        if self.blob is not None:
            self.blob.finish(error is None)
        if self.writer is not None:
            await self.writer.end(error)
        elif error is not None and self.reply:
            await self.respond_error(self.reply, error)

    async def release(self) -> None:
        if self.blob is not None:
            self.blob.finish(False)  # a call that never finished (cancelled) leaves no object behind
        await super().release()


class ServerStreamResponder(_SendsStream):
    """Request in; data to `R` numbered from 1, then the end marker (with the error pair on failure)."""

    __slots__ = ("old_style",)

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.old_style = False

    async def open(self) -> None:
        if REPLY_TO not in (self.msg.headers or {}):
            if not self.reply:
                raise NoAnswer
            # Old style: we name R in an ack on the reply subject; the client subscribes to it only
            # then, so the first message waits until R is known (`FirstHop`, answers on `probe`).
            reply_to = self.nc.new_inbox()
            self.old_style = True
            # Undecodable: answer on the reply subject, since nobody knows R yet.
            self.request = self.codec.decode(self.method.request, self.msg.data, self.name)
        else:
            reply_to = self.peer_inbox()  # invalid: refused on the reply subject, nothing sent to it
        own_inbox: Inbox | None = None
        if self.v2:
            own_inbox = await self.open_inbox()
            await self.start_session(reply_to, own_inbox)
        elif self.old_style:
            own_inbox = await self.open_inbox()
        if own_inbox is not None:
            own_inbox.watcher = self.watch_control  # only control and statuses belong here
        self.writer = self.new_writer(reply_to, None if own_inbox is None else own_inbox.subject)
        if self.old_style and self.writer.first_hop is not None:
            self.writer.first_hop.wait = OLD_STYLE_SUBSCRIBE_WAIT
        if not self.old_style:  # undecodable: the error ends the stream on R
            self.request = self.codec.decode(self.method.request, self.msg.data, self.name)
        else:
            await self.nc.publish(self.reply, b"", headers={STREAM_INBOX: reply_to})
        if self.session is not None and own_inbox is not None:
            # Confirm v2 with an empty open message naming our control inbox, before any data.
            await self.nc.publish(reply_to, b"", headers=self.confirmation(own_inbox, None))
            self.session.start()

    async def serve(self) -> None:
        request = self.intercept(Direction.RECEIVED, self.request) if self.info is not None else self.request
        persistence = self.policy.persistence
        if persistence is not None and self.method.persists:  # a chunked download kept in the object store
            self.blob = persistence.copy_blob(self.method, persistence.keys(self.method, request, self.name), self.name)
        await self.send_all(self.handler(request))


class _Handshaking(Responder):
    """Client-streaming and bidi opening: subscribe `S`, ack with `Nats-Stream-Inbox: S`."""

    __slots__ = ("inbox", "reader", "reply_to")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.inbox: Inbox | None = None
        self.reader: StreamReader[Any]
        self.reply_to = ""

    async def open(self) -> None:
        if not self.reply:
            raise NoAnswer
        if REPLY_TO not in (self.msg.headers or {}):
            raise self.error(ErrorCode.INVALID_ARGUMENT, f"streaming request without {REPLY_TO} header")
        self.reply_to = reply_to = self.peer_inbox()
        inbox = self.inbox = await self.open_inbox()  # subscribed before the ack names it
        self.reader = StreamReader(inbox, self.codec, self.method.request, self.name, self.deadline)
        if self.v2:
            session = await self.start_session(reply_to, inbox)
            session.receiving = inbox
            window = Window.for_method(self.method.max_inflight)
            self.reader.acknowledge(window, session.send_ack)
            inbox.limit(window.messages + 2, window.max_bytes)  # + the end marker and a stray status
            ack = self.confirmation(inbox, window)
        else:
            ack = {STREAM_INBOX: inbox.subject}
            inbox.watcher = self.watch
        self.before_ack()
        # The ack names S as its reply subject: if the requester is already gone, the NATS server
        # answers S with no-responders and the call ends at once instead of idling out.
        await self.nc.publish(self.reply, b"", reply=inbox.subject, headers=ack)
        if self.session is not None:
            self.session.start()

    def before_ack(self) -> None:
        """Set up what must exist before the client learns `S`."""

    def requests(self) -> RequestStream[Any]:
        if self.method.chunks is not None:
            return UploadRequests(self.reader, ChunkCodec(self.method.request, self.method.chunks, self.codec))
        if self.info is not None:
            return RequestStream(self.reader, lambda message: self.intercept(Direction.RECEIVED, message))
        return RequestStream(self.reader)


class ClientStreamResponder(_Handshaking):
    """Messages in on `S`; one response (or error) out on `R` once the client's end marker is in."""

    __slots__ = ()

    async def serve(self) -> None:
        self.response = await self.handler(self.requests())

    async def finish(self, error: RpcError | None) -> None:
        if self.inbox is None:  # failed before the handshake: answer the request itself
            if error is not None and self.reply:
                await self.respond_error(self.reply, error)
            return
        if not self.v2 and not self.stopping:  # a v1 (Go) client listens on R only after its end marker
            await self.reader.drain_to_end(self.deadline or Deadline(V1_HOLD_LIMIT))
        await self.answer(self.reply_to, self.response, error)


class BidiResponder(_Handshaking, _SendsStream):
    """Messages in on `S` and out on `R`, each direction numbered and ended on its own."""

    __slots__ = ()

    def before_ack(self) -> None:
        assert self.inbox is not None
        self.writer = self.new_writer(self.reply_to, self.inbox.subject)

    async def serve(self) -> None:
        await self.send_all(self.handler(self.requests()))


RESPONDERS: dict[Cardinality, type[Responder]] = {
    Cardinality.SERVER_STREAM: ServerStreamResponder,
    Cardinality.CLIENT_STREAM: ClientStreamResponder,
    Cardinality.BIDI: BidiResponder,
}
