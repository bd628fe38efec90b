"""Chunked I/O: whole blobs and files over a stream of one-bytes-field messages.

A chunk message is encoded and decoded on a fast path: its only field is a tag, a length and the
bytes, so no betterproto2 round trip and no copy beyond building the body; received chunks are
memoryviews into the NATS message until they are written or joined.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from pathlib import Path
from typing import IO, Any, AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Union

import betterproto2

from ..core.errors import ErrorCode, RpcError
from ..core.headers import BLOB_SIZE, message_size
from ..encoding.codec import Codec
from ..schema.spec import ChunkSpec
from ..streaming.reader import StreamReader
from ..streaming.writer import StreamWriter

Progress = Callable[[int, Union[int, None]], Any]  # (bytes done, total bytes or None)
Bytes = Union[bytes, bytearray, memoryview]
# Headers a data message may carry besides the chunk: seq, plus the first message's response headers.
HEADER_ALLOWANCE = 512


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class ChunkCodec:
    """Encodes/decodes the chunk message of one method (binary fast path; JSON via the message)."""

    def __init__(self, message_type: type[betterproto2.Message], spec: ChunkSpec, codec: Codec) -> None:
        self.message_type = message_type
        self.field = spec.field
        self.chunk_size = spec.size
        self.codec = codec
        number = getattr(message_type, "_betterproto").meta_by_field_name[spec.field].number
        self._tag = _varint((number << 3) | 2)

    def encode(self, data: Bytes) -> bytes:
        if self.codec.json:
            return self.codec.encode(self.message_type(**{self.field: bytes(data)}))
        if not data:
            return b""  # proto3 leaves an empty bytes field out
        return b"".join((self._tag, _varint(len(data)), data))

    def encode_message(self, message: object) -> bytes | None:
        """A chunk message's body on the fast path, or None when it needs the general encoder
        (another type, or unknown fields to keep). Large bytes fields are the Rust codec's slow case."""
        if type(message) is not self.message_type or getattr(message, "_unknown_fields", None):
            return None
        return self.encode(getattr(message, self.field))

    def decode(self, body: bytes, method: str) -> memoryview:
        """The chunk's bytes; any other layout (unknown fields, JSON) goes through the message codec."""
        tag = self._tag
        if not self.codec.json and body[: len(tag)] == tag:
            pos, length, shift = len(tag), 0, 0
            while pos < len(body) and shift < 64:
                byte = body[pos]
                pos += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    if pos + length == len(body):
                        return memoryview(body)[pos:]
                    break
        if not body:
            return memoryview(b"")
        message = self.codec.decode(self.message_type, body, method)
        return memoryview(getattr(message, self.field))

    def check_fits(self, chunk_size: int, max_payload: int, method: str) -> None:
        """A chunk that cannot fit max_payload fails before anything is sent."""
        worst = message_size(chunk_size + len(self._tag) + 10, {"Nats-Stream-Seq": "9" * 20}) + HEADER_ALLOWANCE
        if chunk_size <= 0 or worst > max_payload:
            raise RpcError(
                ErrorCode.INVALID_ARGUMENT,
                f"chunk size {chunk_size} does not fit the server's max_payload of {max_payload} bytes "
                f"(with headers); use at most {max_payload - (worst - chunk_size)}",
                method=method,
            )


def split(data: Bytes, size: int) -> Iterable[memoryview]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield view[start : start + size]


async def write_atomically(path: str | os.PathLike[str], pieces: AsyncIterator[memoryview]) -> int:
    """Write to a temp file beside `path`, fsync, rename over `path`. On any error or cancellation
    neither `path` nor the temp file is left behind. Returns the bytes written."""
    target = Path(path)
    fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent or ".")
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for piece in pieces:
                out.write(piece)
                written += len(piece)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(target.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return written


class BlobReader:
    """A blob that arrives piece by piece, whatever its source (a chunked stream, a stored object):
    as pieces, whole, into a writer or atomically into a file."""

    def _pieces(self) -> AsyncGenerator[memoryview, None]:
        raise NotImplementedError

    def _total(self) -> int | None:
        """The blob's size when known (for progress)."""
        return None

    async def _views(self, progress: Progress | None) -> AsyncIterator[memoryview]:
        done = 0
        pieces = self._pieces()
        try:
            async for piece in pieces:
                done += len(piece)
                if progress is not None:
                    progress(done, self._total())
                yield piece
        finally:
            await pieces.aclose()  # the source's cleanup now, also when the reader stops early

    async def iter_bytes(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The blob piece by piece, as it arrives."""
        async for piece in self._views(progress):
            yield bytes(piece)

    async def recv_bytes(self, progress: Progress | None = None) -> bytes:
        """The whole blob in memory."""
        return b"".join([piece async for piece in self._views(progress)])

    async def recv_to_writer(self, writer: Any, progress: Progress | None = None) -> int:
        """Write the blob to anything with `write()` (sync or async); returns the bytes written."""
        written = 0
        async for piece in self._views(progress):
            result = writer.write(piece)
            if inspect.isawaitable(result):
                await result
            written += len(piece)
        return written

    async def recv_to_file(self, path: str | os.PathLike[str], progress: Progress | None = None) -> int:
        """Write the blob to `path` atomically (temp file in the same folder, fsync, rename): on any
        error no file and no temp file remain. Returns the bytes written."""
        return await write_atomically(path, self._views(progress))


class ChunkReceiver(BlobReader):
    """Receiving a blob in chunk messages: what download streams (client) and upload requests (server) offer."""

    def __init__(self, reader: StreamReader[Any], chunks: ChunkCodec, on_done: Callable[[], Awaitable[None]]) -> None:
        self._reader = reader
        self._chunks = chunks
        self._on_done = on_done  # release the stream once the blob ended or failed

    async def _pieces(self) -> AsyncGenerator[memoryview, None]:
        try:
            while True:
                try:
                    body = await self._reader.recv_body()
                except StopAsyncIteration:
                    return
                yield self._chunks.decode(body, self._reader.method)
        finally:
            await self._on_done()

    def _total(self) -> int | None:
        return self._reader.blob_size


class BlobReceiving:
    """The blob helpers of a blob being received: client downloads, server uploads, stored objects."""

    _blob: BlobReader

    async def recv_bytes(self, progress: Progress | None = None) -> bytes:
        """The whole blob in memory."""
        return await self._blob.recv_bytes(progress)

    async def recv_to_file(self, path: str | os.PathLike[str], progress: Progress | None = None) -> int:
        """Write the blob to `path` atomically: a temp file in the same folder, fsync, rename; on any
        error (peer error, cancellation, DATA_LOSS) neither file remains. Returns the size."""
        return await self._blob.recv_to_file(path, progress)

    async def recv_to_writer(self, writer: Any, progress: Progress | None = None) -> int:
        """Write the blob to anything with `write()` (sync or async). Returns the size."""
        return await self._blob.recv_to_writer(writer, progress)

    def iter_bytes(self, progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The blob piece by piece."""
        return self._blob.iter_bytes(progress)


class ChunkSender:
    """Sending a blob in chunk messages: what upload streams (client) offer."""

    def __init__(self, writer: StreamWriter, chunks: ChunkCodec, send: Callable[[bytes], Awaitable[None]]) -> None:
        self._writer = writer
        self._chunks = chunks
        self._send = send  # sends one encoded chunk body
        self._checked: set[int] = set()

    def _size(self, chunk_size: int) -> int:
        size = chunk_size or self._chunks.chunk_size
        if size not in self._checked:
            self._chunks.check_fits(size, self._writer.nc.max_payload, self._writer.method)
            self._checked.add(size)
        return size

    async def _send_pieces(self, data: Bytes, size: int, done: int, total: int | None, progress: Progress | None) -> int:
        if total is not None and self._writer.sent == 0 and done == 0:  # the receiver's progress gets the total
            self._writer.first_headers = {**(self._writer.first_headers or {}), BLOB_SIZE: str(total)}
        for piece in split(data, size):
            await self._send(self._chunks.encode(piece))
            done += len(piece)
            if progress is not None:
                progress(done, total)
        return done

    async def send_bytes(self, data: Bytes, chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send `data` split into chunk-size pieces (0 = the method's default_chunk_size)."""
        await self._send_pieces(data, self._size(chunk_size), 0, len(data), progress)

    async def send_file(self, path: str | os.PathLike[str], chunk_size: int = 0, progress: Progress | None = None) -> None:
        """Send a file's contents, read chunk by chunk."""
        size = self._size(chunk_size)
        total = os.path.getsize(path)
        with open(path, "rb") as source:
            await self._send_reader(source, size, total, progress)

    async def send_reader(
        self,
        reader: IO[bytes] | AsyncIterable[Bytes] | Iterable[Bytes],
        chunk_size: int = 0,
        progress: Progress | None = None,
    ) -> None:
        """Send what a file-like object (sync or async `read`) or an (async) iterable of bytes gives."""
        await self._send_reader(reader, self._size(chunk_size), None, progress)

    async def _send_reader(self, reader: Any, size: int, total: int | None, progress: Progress | None) -> None:
        done = 0
        if hasattr(reader, "read"):
            while True:
                data = reader.read(size)
                if inspect.isawaitable(data):
                    data = await data
                if not data:
                    return
                done = await self._send_pieces(data, size, done, total, progress)
        elif isinstance(reader, AsyncIterable):
            async for data in reader:
                done = await self._send_pieces(data, size, done, total, progress)
        else:
            for data in reader:
                done = await self._send_pieces(data, size, done, total, progress)
