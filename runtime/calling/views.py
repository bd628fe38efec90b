"""What users hold of an open call: the stream views of a `ClientCall` (`ServerStream`,
`ClientStream`, `BidiStream`, the blob helpers). What generated methods return before the call is
open, the awaitables, are `calling/pending.py`."""

from __future__ import annotations

import os
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Generic,
    Iterable,
    TypeVar,
)

import betterproto2

from ..core.errors import ErrorCode, RpcError
from ..core.headers import caller_headers
from ..features.chunks import BlobReceiving, ChunkCodec, ChunkReceiver, ChunkSender, Progress
from ..features.interceptors import Direction
from .call import ClientCall

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)
T = TypeVar("T")


class _View:
    """A stream object: a typed view of its `ClientCall`; `close()` and `async with` end the call."""

    def __init__(self, call: ClientCall) -> None:
        self.call = call

    async def close(self) -> None:
        """Abandon the call (a v2 server is told to stop) and release it. Idempotent."""
        await self.call.close()

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class _Receives(_View, Generic[Resp]):
    """The server's stream: `recv()`, `async for`, and the headers of its first message."""

    @property
    def headers(self) -> dict[str, str]:
        """Headers the server set on its first message (`current_call().set_response_headers`)."""
        assert self.call.reader is not None
        return self.call.reader.headers

    async def recv(self) -> Resp:
        """The next message; StopAsyncIteration at the end, RpcError on error."""
        message: Resp = await self.call.recv()
        return message

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self

    async def __anext__(self) -> Resp:
        call = self.call
        if call.info is None:  # no interceptors: the rest of a batch is taken without more coroutines
            reader = call.reader
            message: Resp | None = reader.take_nowait() if reader is not None else None
            if message is not None:
                return message
        received: Resp = await call.recv()
        return received


class ServerStream(_Receives[Resp]):
    """The client's end of a server-streaming call."""


class DownloadStream(ServerStream[Resp], BlobReceiving):
    """A chunked download (`(natsmicro.chunked_io)` server stream): the blob as bytes, a file or pieces."""

    def __init__(self, call: ClientCall) -> None:
        super().__init__(call)
        assert call.method.chunks is not None and call.reader is not None
        chunks = ChunkCodec(call.method.response, call.method.chunks, call.codec)
        self._blob = ChunkReceiver(call.reader, chunks, call.close)  # released at the blob's end


class ClientStream(_View, Generic[Req, Resp]):
    """The client's end of a client-streaming call: `send` many, then `close_and_recv` one."""

    def __init__(self, call: ClientCall, headers: dict[str, str]) -> None:
        super().__init__(call)
        self.headers = headers  # from the handshake ack, then the final response

    async def send(self, message: Req) -> None:
        """Send one message. After the server has ended the call, its error is raised here; after a
        successful early answer, further messages are no-ops."""
        await self.call.send(message)

    async def send_all(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        await self.call.send_all(messages)

    async def close_and_recv(self) -> Resp:
        """End our direction and wait for the server's single response."""
        call = self.call
        msg = await call.final_answer()
        self.headers.update(caller_headers(msg.headers))
        response: Resp = call.codec.decode(call.method.response, msg.data, call.name)
        if call.info is not None and call.chain is not None:
            response = call.chain.message(call.info, Direction.RECEIVED, response)
        return response


class UploadStream(ClientStream[Req, Resp]):
    """A chunked upload (`(natsmicro.chunked_io)` client stream): send bytes, a file or a reader."""

    def __init__(self, call: ClientCall, headers: dict[str, str]) -> None:
        super().__init__(call, headers)
        assert call.method.chunks is not None and call.writer is not None
        chunks = ChunkCodec(call.method.request, call.method.chunks, call.codec)
        self._blob = ChunkSender(call.writer, chunks, call.send_body)

    async def send_bytes(self, data: bytes | bytearray | memoryview, progress: Progress | None = None) -> None:
        """Send `data` split into the method's chunk size."""
        await self._blob.send_bytes(data, 0, progress)

    async def send_file(self, path: str | os.PathLike[str], chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send a file (0 = the method's default_chunk_size)."""
        await self._blob.send_file(path, chunk_size, progress)

    async def send_reader(self, reader: Any, chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send what a file-like object (sync or async `read`) or an (async) iterable of bytes gives."""
        await self._blob.send_reader(reader, chunk_size, progress)


class BidiStream(_Receives[Resp], Generic[Req, Resp]):
    """The client's end of a bidirectional call: `send`/`recv` freely, `close_send` ends our side."""

    async def send(self, message: Req) -> None:
        """Send one message; after the server ended the call, its error is raised here."""
        await self.call.send(message)

    async def send_all(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        await self.call.send_all(messages)

    async def close_send(self) -> None:
        """Tell the server we will send nothing more; keep receiving."""
        await self.call.end_send()

    async def _send_all_and_close(self, messages: Iterable[Req] | AsyncIterable[Req]) -> None:
        try:
            await self.send_all(messages)
            await self.close_send()
        except BaseException as error:
            failure = error if isinstance(error, RpcError) else self.call.error(
                ErrorCode.CANCELLED, f"sending requests failed: {error!r}"
            )
            self.call.fail(failure)
            raise


# --- What generated methods return ----------------------------------------------------------------
