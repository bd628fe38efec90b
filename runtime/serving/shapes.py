"""How each stream shape (server stream, client stream, bidi) opens, serves and finishes: a `Shape`
each, held by the call's `Responder` (composition: the responder owns the call, its shape says what
the call does in its three steps). What shapes share are functions of the responder here: the
stream to the client's `R` (`send_all`, `finish_sending`) and the handshake that names our inbox
`S` (`open_handshake`). `SHAPES` picks one by cardinality."""

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
from .responder import NoAnswer, Responder, Shape

# A v1 client-streaming client (the Go one) subscribes to its reply inbox only after sending its end
# marker, so the final answer is held until that marker arrives: at most this long without a deadline.
V1_HOLD_LIMIT = 30.0
# Old-style server streams (no Reply-To): how long the first message is retried while the client has
# not yet subscribed to the inbox we named in the ack (it subscribes only once the ack arrived).
OLD_STYLE_SUBSCRIBE_WAIT = 2.0


# --- The stream to the client's `R` (server streams, bidi) ---------------------------------------------


async def send_all(call: Responder, responses: Any) -> None:
    """What the handler yields, to the client's `R` (chunked downloads split; the blob copied)."""
    if not hasattr(responses, "__aiter__"):
        if asyncio.iscoroutine(responses):
            responses.close()
        raise call.error(ErrorCode.INTERNAL, f"{call.method.py_name} must be an async generator (use yield)")
    writer = call.writer
    assert writer is not None
    method = call.method
    chunks = None
    if method.chunks is not None:
        chunks = ChunkCodec(method.response, method.chunks, call.codec)
        chunks.check_fits(chunks.chunk_size, call.nc.max_payload, call.name)
    try:
        async for response in responses:
            if chunks is not None:
                if isinstance(response, (bytes, bytearray, memoryview)):
                    for piece in split(response, chunks.chunk_size):  # raw bytes of any size
                        if call.blob is not None:
                            call.blob.feed(piece)
                        await writer.send_body(chunks.encode(piece))
                    continue
                if call.blob is not None and isinstance(response, method.response):
                    call.blob.feed(getattr(response, chunks.field))
                body = chunks.encode_message(response)
                if body is not None:  # a chunk message, on the fast path too
                    await writer.send_body(body)
                    continue
            if not isinstance(response, method.response):
                raise call.error(ErrorCode.INTERNAL, f"handler yielded {type(response).__name__}, not {method.response.__name__}")
            if call.info is not None:
                response = call.intercept(Direction.SENT, response)
            body = call.codec.encode(response)
            if not writer.queue_nowait(body):
                await writer.send_body(body)
            elif writer.turn_due:
                await writer.take_turn()
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


async def finish_sending(call: Responder, error: RpcError | None) -> None:
    """The end marker on `R` (the error pair when failing); before `R` existed, the error answers
    the request itself."""
    if call.blob is not None:
        call.blob.finish(error is None)
    if call.writer is not None:
        await call.writer.end(error)
    elif error is not None and call.reply:
        await call.respond_error(call.reply, error)


# --- The handshake (client streams, bidi) ---------------------------------------------------------------


async def open_handshake(call: Responder, sends: bool) -> None:
    """Subscribe `S`, then ack the request with `Nats-Stream-Inbox: S` (our v2 confirmation in v2);
    `sends`: we stream back to the client's `R` too (bidi)."""
    if not call.reply:
        raise NoAnswer
    if REPLY_TO not in (call.msg.headers or {}):
        raise call.error(ErrorCode.INVALID_ARGUMENT, f"streaming request without {REPLY_TO} header")
    call.reply_to = reply_to = call.peer_inbox()
    inbox = call.inbox = await call.open_inbox()  # subscribed before the ack names it
    reader = call.reader = StreamReader(inbox, call.codec, call.method.request, call.name, call.deadline)
    if sends:  # exists before the client learns `S`
        call.writer = call.new_writer(reply_to, inbox.subject)
    if call.v2:
        window = Window.for_method(call.method.max_inflight)
        await call.start_session(reply_to, inbox, receive=(reader, window), send=call.writer)
        ack = call.confirmation(inbox, window)
    else:
        ack = {STREAM_INBOX: inbox.subject}
        inbox.watcher = call.watch
    # The ack names S as its reply subject: if the requester is already gone, the NATS server
    # answers S with no-responders and the call ends at once instead of idling out.
    await call.nc.publish(call.reply, b"", reply=inbox.subject, headers=ack)
    if call.session is not None:
        call.session.start()


def requests(call: Responder) -> RequestStream[Any]:
    """What a client-streaming or bidi handler iterates."""
    assert call.reader is not None
    if call.method.chunks is not None:
        return UploadRequests(call.reader, ChunkCodec(call.method.request, call.method.chunks, call.codec))
    if call.info is not None:
        return RequestStream(call.reader, lambda message: call.intercept(Direction.RECEIVED, message))
    return RequestStream(call.reader)


# --- The shapes -----------------------------------------------------------------------------------------


class ServerStreaming:
    """Request in; data to `R` numbered from 1, then the end marker (with the error pair on failure)."""

    async def open(self, call: Responder) -> None:
        if REPLY_TO not in (call.msg.headers or {}):
            if not call.reply:
                raise NoAnswer
            # Old style: we name R in an ack on the reply subject; the client subscribes to it only
            # then, so the first message waits until R is known (`FirstHop`, answers on `probe`).
            reply_to = call.nc.new_inbox()
            call.old_style = True
            # Undecodable: answer on the reply subject, since nobody knows R yet.
            call.request = call.codec.decode(call.method.request, call.msg.data, call.name)
        else:
            reply_to = call.peer_inbox()  # invalid: refused on the reply subject, nothing sent to it
        own_inbox: Inbox | None = None
        if call.v2 or call.old_style:
            own_inbox = await call.open_inbox()
        writer = call.writer = call.new_writer(reply_to, None if own_inbox is None else own_inbox.subject)
        if call.v2 and own_inbox is not None:
            await call.start_session(reply_to, own_inbox, send=writer)
        if own_inbox is not None:
            own_inbox.watcher = call.watch_control  # only control and statuses belong here
        if call.old_style and writer.first_hop is not None:
            writer.first_hop.wait = OLD_STYLE_SUBSCRIBE_WAIT
        if not call.old_style:  # undecodable: the error ends the stream on R
            call.request = call.codec.decode(call.method.request, call.msg.data, call.name)
        else:
            await call.nc.publish(call.reply, b"", headers={STREAM_INBOX: reply_to})
        if call.session is not None and own_inbox is not None:
            # Confirm v2 with an empty open message naming our control inbox, before any data.
            await call.nc.publish(reply_to, b"", headers=call.confirmation(own_inbox, None))
            call.session.start()

    async def serve(self, call: Responder) -> None:
        request = call.intercept(Direction.RECEIVED, call.request) if call.info is not None else call.request
        persistence = call.policy.persistence
        if persistence is not None and call.method.persists:  # a chunked download kept in the object store
            call.blob = persistence.copy_blob(call.method, persistence.keys(call.method, request, call.name), call.name)
        await send_all(call, call.handler(request))

    async def finish(self, call: Responder, error: RpcError | None) -> None:
        await finish_sending(call, error)


class ClientStreaming:
    """Messages in on `S`; one response (or error) out on `R` once the client's end marker is in."""

    async def open(self, call: Responder) -> None:
        await open_handshake(call, sends=False)

    async def serve(self, call: Responder) -> None:
        call.response = await call.handler(requests(call))

    async def finish(self, call: Responder, error: RpcError | None) -> None:
        if call.inbox is None or call.reader is None:  # failed before the handshake: answer the request itself
            if error is not None and call.reply:
                await call.respond_error(call.reply, error)
            return
        if not call.v2 and not call.stopping:  # a v1 (Go) client listens on R only after its end marker
            await call.reader.drain_to_end(call.deadline or Deadline(V1_HOLD_LIMIT))
        await call.answer(call.reply_to, call.response, error)


class Bidi:
    """Messages in on `S` and out on `R`, each direction numbered and ended on its own."""

    async def open(self, call: Responder) -> None:
        await open_handshake(call, sends=True)

    async def serve(self, call: Responder) -> None:
        await send_all(call, call.handler(requests(call)))

    async def finish(self, call: Responder, error: RpcError | None) -> None:
        await finish_sending(call, error)


SHAPES: dict[Cardinality, Shape] = {
    Cardinality.SERVER_STREAM: ServerStreaming(),
    Cardinality.CLIENT_STREAM: ClientStreaming(),
    Cardinality.BIDI: Bidi(),
}
