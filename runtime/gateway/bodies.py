"""HTTP bodies in and out, bounded: a JSON request read whole up to a limit, an NDJSON request read
line by line as it arrives, and the frames of a streamed answer (server-sent events or NDJSON)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Coroutine, TypeVar

from starlette.types import Receive

from ..core.errors import ErrorCode, RpcError
from ..reflection import jsonmap


T = TypeVar("T")


class ClientGone(Exception):
    """The HTTP client disconnected: the call it made is cancelled, nothing is answered."""


class PayloadTooLarge(RpcError):
    """A request body (or one NDJSON line, one WebSocket frame: `what`) beyond the gateway's limit:
    HTTP 413."""

    def __init__(self, limit: int, what: str = "request body") -> None:
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, f"{what} beyond the gateway's limit of {limit} bytes")


def parse_json(data: bytes, where: str = "request body") -> Any:
    """A JSON value from a request (an empty body is `{}`); INVALID_ARGUMENT with the position when
    it is not JSON (too deep a nesting included)."""
    if not data.strip():
        return {}
    return jsonmap.loads(data, f"{where}: invalid JSON")


def dumps(value: Any) -> bytes:
    """One JSON value on one line (SSE and NDJSON frames must not contain newlines)."""
    return jsonmap.dumps(value).encode()


class RequestBody:
    """A request's body read from ASGI `receive`, bounded; knows when it ended (so the disconnect
    watch may take over `receive`) and when the client went away."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.ended = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's chunks as they arrive; ClientGone when the client disconnects first."""
        while not self.ended.is_set():
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            if message["type"] != "http.request":
                continue
            if not message.get("more_body", False):
                self.ended.set()
            body = message.get("body", b"")
            if body:
                yield body

    async def read(self) -> bytes:
        """The whole body, at most `limit` bytes (PayloadTooLarge past it)."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > self.limit:
                raise PayloadTooLarge(self.limit)
            parts.append(chunk)
        return b"".join(parts)

    async def lines(self) -> AsyncIterator[tuple[int, bytes]]:
        """The body's non-blank lines (NDJSON) with their numbers, each yielded as soon as its newline
        (or the end of the body) arrived; a line longer than `limit` bytes, however the body was cut
        into chunks, is PayloadTooLarge (found as soon as `limit` bytes of it arrived)."""
        pending = bytearray()  # the body from the start of the line being read
        number = 0
        async for chunk in self.chunks():
            searched = len(pending)  # the bytes before had no newline
            pending += chunk
            start = 0
            while True:
                cut = pending.find(b"\n", max(start, searched))
                if cut < 0:
                    break
                number += 1
                if cut - start > self.limit:
                    raise PayloadTooLarge(self.limit, f"line {number}")
                line = bytes(pending[start:cut])
                start = cut + 1
                if line.strip():
                    yield number, line
            del pending[:start]
            if len(pending) > self.limit:
                raise PayloadTooLarge(self.limit, f"line {number + 1}")
        if pending.strip():
            yield number + 1, bytes(pending)

    async def disconnected(self) -> None:
        """Returns when the client disconnects; only once the body ended (until then `chunks` owns
        `receive`). Never returns for a client that stays."""
        await self.ended.wait()
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                return


class StreamFormat:
    """How a server stream's messages, its error and its end are framed: server-sent events or NDJSON
    (grpc-gateway's `{"result": ...}` / `{"error": ...}` lines)."""

    def __init__(self, ndjson: bool) -> None:
        self.ndjson = ndjson
        self.media_type = "application/x-ndjson" if ndjson else "text/event-stream"

    def message(self, value: Any) -> bytes:
        if self.ndjson:
            return b'{"result":' + dumps(value) + b"}\n"
        return b"data: " + dumps(value) + b"\n\n"

    def error(self, body: dict[str, str]) -> bytes:
        if self.ndjson:
            return b'{"error":' + dumps(body) + b"}\n"
        return b"event: error\ndata: " + dumps(body) + b"\n\n"

    def end(self) -> bytes:
        return b"" if self.ndjson else b"event: end\ndata: {}\n\n"


async def unless_gone(work: Awaitable[T], gone: Coroutine[Any, Any, None]) -> T:
    """`work` awaited in this task, which is cancelled if `gone` (the disconnect watch, in a task of
    its own) returns first: then ClientGone. One task per call instead of `first_of`'s two."""
    task = asyncio.current_task()
    assert task is not None
    watch = asyncio.ensure_future(gone)
    went = settled = False

    def cancel_work(done: "asyncio.Future[None]") -> None:
        # (scheduled when the watch ends: it may run after `work` finished in the same turn, and
        # then must not cancel whatever the task does next, such as sending the answer)
        nonlocal went
        if not settled and not done.cancelled() and done.exception() is None:
            went = True
            task.cancel()

    watch.add_done_callback(cancel_work)
    try:
        return await work
    except asyncio.CancelledError:
        if went and task.uncancel() == 0:
            raise ClientGone() from None
        raise
    finally:
        settled = True
        watch.remove_done_callback(cancel_work)
        if not watch.done():
            watch.cancel()


async def first_of(work: "asyncio.Future[Any]", gone: "asyncio.Future[Any]") -> Any:
    """`work`'s result, unless `gone` finishes first: then `work` is cancelled and ClientGone raised.
    Whichever is left is cancelled on the way out (also when our own task is cancelled)."""
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        raise ClientGone()
    finally:
        left = [future for future in (work, gone) if not future.done()]
        for future in left:
            future.cancel()
        if left:
            await asyncio.gather(*left, return_exceptions=True)
