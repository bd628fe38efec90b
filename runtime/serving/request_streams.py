"""What client-streaming and bidi handlers iterate: `RequestStream`, and `UploadRequests` for chunked
uploads (the messages, or the blob as bytes, a file or pieces)."""

from __future__ import annotations

from typing import AsyncIterator, Callable, Generic, TypeVar

import betterproto2

from ..features.chunks import BlobReceiving, ChunkCodec, ChunkReceiver
from ..streaming.reader import StreamReader

M = TypeVar("M", bound=betterproto2.Message)


class RequestStream(Generic[M]):
    """What a client-streaming or bidi handler iterates: the client's messages, in order, once."""

    def __init__(self, reader: StreamReader[M], intercept: Callable[[M], M] | None = None) -> None:
        self._reader = reader
        self._intercept = intercept

    def __aiter__(self) -> AsyncIterator[M]:
        return self

    async def __anext__(self) -> M:
        if self._intercept is None:  # the rest of a batch without more coroutines
            message = self._reader.take_nowait()
            if message is not None:
                return message
        return await self.recv()

    async def recv(self) -> M:
        """The next message; StopAsyncIteration when the client has ended its side."""
        message = await self._reader.recv()
        return message if self._intercept is None else self._intercept(message)


class UploadRequests(RequestStream[M], BlobReceiving):
    """A chunked upload's requests: the messages, or the blob as bytes, a file or pieces."""

    def __init__(self, reader: StreamReader[M], chunks: ChunkCodec) -> None:
        super().__init__(reader)
        self._blob = ChunkReceiver(reader, chunks, _nothing)  # the responder releases the stream


async def _nothing() -> None:
    pass
