"""Chunked I/O: blob helpers on both sides, atomic files, size limits, integrity up to 256 MiB."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from pathlib import Path
from typing import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError, current_call
from betterproto_nats.net.nats_fixes import flush_ordered
from gen.streaming.v1 import (
    ExportSnapshotRequest,
    ImportSnapshotResponse,
    SnapshotChunk,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)

CHUNK = 65536  # ExportSnapshot's default_chunk_size (0 in the proto)
UPLOAD_CHUNK = 131072  # ImportSnapshot's


def blob(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)  # randbytes takes at most 2**31 bits at a time
    return b"".join(rng.randbytes(min(1 << 24, size - start)) for start in range(0, size, 1 << 24))


class Snapshots(StreamDemoServiceNatsBase):
    """`id` says what to send: "<size>" raw bytes in one yield, "msgs:<size>" chunk messages,
    "fail:<size>" that many bytes then an error. Uploads report sha256 and size; header `mode`
    picks the server helper."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.chunks_seen = 0
        self.upload_totals: list[int | None] = []

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        kind, _, size = request.id.rpartition(":")
        data = blob(int(size))
        if kind == "msgs":
            for start in range(0, len(data), 1000):
                yield SnapshotChunk(data=data[start : start + 1000])
            return
        if kind == "sized":  # the handler declares the size: the client's progress gets a total
            current_call().set_blob_size(len(data))
        if kind == "huge":  # yielded in 1 MiB slices so the server does not hold it twice
            for start in range(0, len(data), 1 << 20):
                yield data[start : start + (1 << 20)]
            return
        yield data
        if kind == "fail":
            raise RpcError(ErrorCode.NOT_FOUND, "snapshot vanished")
        if kind == "hang":
            await asyncio.Event().wait()

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        mode = current_call().headers.get("mode", "bytes")
        digest = hashlib.sha256()
        size = 0
        if mode == "file":
            target = self.tmp / "uploaded.bin"
            size = await requests.recv_to_file(target)
            digest.update(target.read_bytes())
        elif mode == "progress":
            data = await requests.recv_bytes(progress=lambda done, total: self.upload_totals.append(total))
            digest.update(data)
            size = len(data)
        elif mode == "iter":
            async for piece in requests.iter_bytes():
                digest.update(piece)
                size += len(piece)
        elif mode == "messages":
            async for chunk in requests:
                self.chunks_seen += 1
                digest.update(chunk.data)
                size += len(chunk.data)
        else:
            data = await requests.recv_bytes()
            digest.update(data)
            size = len(data)
        return ImportSnapshotResponse(id=digest.hexdigest(), size=size)


@pytest.fixture
async def snapshots(server_nc: NATS, tmp_path: Path) -> AsyncIterator[Snapshots]:
    impl = Snapshots(tmp_path)
    server = await betterproto_nats.serve(server_nc, impl)
    yield impl
    await server.stop()


@pytest.fixture
def client(nc: NATS) -> StreamDemoServiceNatsClient:
    return StreamDemoServiceNatsClient(nc)


def test_default_chunk_sizes_come_from_the_proto() -> None:
    spec = StreamDemoServiceNatsBase._nats_service
    assert spec.method("export_snapshot").chunks.size == CHUNK  # type: ignore[union-attr]
    assert spec.method("import_snapshot").chunks.size == UPLOAD_CHUNK  # type: ignore[union-attr]


@pytest.mark.parametrize("size", [0, 1, CHUNK, CHUNK + 1, 5 * CHUNK + 17])
async def test_download_integrity(snapshots: Snapshots, client: StreamDemoServiceNatsClient, size: int) -> None:
    stream = await client.export_snapshot(ExportSnapshotRequest(id=str(size)))
    assert await stream.recv_bytes() == blob(size)


@pytest.mark.parametrize("size", [0, 1, UPLOAD_CHUNK, UPLOAD_CHUNK + 1, 3 * UPLOAD_CHUNK + 5])
async def test_upload_integrity(snapshots: Snapshots, client: StreamDemoServiceNatsClient, size: int) -> None:
    stream = await client.import_snapshot()
    await stream.send_bytes(blob(size))
    result = await stream.close_and_recv()
    assert (result.id, result.size) == (hashlib.sha256(blob(size)).hexdigest(), size)


async def test_raw_bytes_are_split_into_chunk_size_messages(snapshots: Snapshots, client: StreamDemoServiceNatsClient) -> None:
    sizes = [len(m.data) async for m in client.export_snapshot(ExportSnapshotRequest(id=str(3 * CHUNK + 1)))]
    assert sizes == [CHUNK, CHUNK, CHUNK, 1]


async def test_download_helpers(snapshots: Snapshots, client: StreamDemoServiceNatsClient, tmp_path: Path) -> None:
    expected = blob(300_000)
    req = ExportSnapshotRequest(id="msgs:300000")  # chunk messages from the handler work too

    target = tmp_path / "snap.bin"
    seen: list[tuple[int, int | None]] = []
    stream = await client.export_snapshot(req)
    assert await stream.recv_to_file(target, progress=lambda done, total: seen.append((done, total))) == len(expected)
    assert target.read_bytes() == expected
    assert seen[-1] == (len(expected), None) and len(seen) == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.bin"]

    sink = io.BytesIO()
    assert await (await client.export_snapshot(req)).recv_to_writer(sink) == len(expected)
    assert sink.getvalue() == expected

    class AsyncSink:
        def __init__(self) -> None:
            self.parts: list[bytes] = []

        async def write(self, data: memoryview) -> None:
            self.parts.append(bytes(data))

    async_sink = AsyncSink()
    await (await client.export_snapshot(req)).recv_to_writer(async_sink)
    assert b"".join(async_sink.parts) == expected

    pieces = [piece async for piece in (await client.export_snapshot(req)).iter_bytes()]
    assert b"".join(pieces) == expected and all(isinstance(p, bytes) for p in pieces)


async def test_recv_to_file_leaves_nothing_on_server_error(snapshots: Snapshots, client: StreamDemoServiceNatsClient, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"fail:{3 * CHUNK}"))
    with pytest.raises(RpcError) as caught:
        await stream.recv_to_file(folder / "snap.bin")
    assert caught.value.code == ErrorCode.NOT_FOUND
    assert list(folder.iterdir()) == []


async def test_recv_to_file_leaves_nothing_when_cancelled(snapshots: Snapshots, client: StreamDemoServiceNatsClient, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"hang:{CHUNK}"))
    progressed = asyncio.Event()
    task = asyncio.create_task(stream.recv_to_file(folder / "snap.bin", progress=lambda done, total: progressed.set()))
    await asyncio.wait_for(progressed.wait(), 5)  # a chunk is written to the temp file
    assert len(list(folder.iterdir())) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(folder.iterdir()) == []


async def test_recv_to_file_leaves_nothing_on_data_loss(nc: NATS, server_nc: NATS, tmp_path: Path) -> None:
    async def gap(msg: Msg) -> None:  # a raw server that loses chunk 2
        r = msg.headers["Reply-To"]
        for seq in (1, 3):
            await server_nc.publish(r, bytes(SnapshotChunk(data=b"x" * 10)), headers={"Nats-Stream-Seq": str(seq)})
        await server_nc.publish(r, b"", headers={"Nats-Stream-End": "true"})

    sub = await server_nc.subscribe("api.v1.stream.export_snapshot", cb=gap)
    await flush_ordered(server_nc)
    folder = tmp_path / "out"
    folder.mkdir()
    stream = await StreamDemoServiceNatsClient(nc).export_snapshot(ExportSnapshotRequest())
    with pytest.raises(RpcError) as caught:
        await stream.recv_to_file(folder / "snap.bin")
    assert caught.value.code == ErrorCode.DATA_LOSS
    assert list(folder.iterdir()) == []
    await sub.unsubscribe()


async def test_upload_helpers(snapshots: Snapshots, client: StreamDemoServiceNatsClient, tmp_path: Path) -> None:
    data = blob(400_000, seed=3)
    digest = hashlib.sha256(data).hexdigest()
    source = tmp_path / "source.bin"
    source.write_bytes(data)

    seen: list[tuple[int, int | None]] = []
    stream = await client.import_snapshot(headers={"mode": "file"})
    await stream.send_file(source, progress=lambda done, total: seen.append((done, total)))
    assert (await stream.close_and_recv()).id == digest
    assert seen[-1] == (len(data), len(data)) and len(seen) == 4  # 131072-byte chunks
    assert (tmp_path / "uploaded.bin").read_bytes() == data  # the server's recv_to_file

    stream = await client.import_snapshot(headers={"mode": "iter"})
    with open(source, "rb") as f:
        await stream.send_reader(f, chunk_size=10_000)
    assert (await stream.close_and_recv()).size == len(data)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 150_000):
            yield data[start : start + 150_000]

    stream = await client.import_snapshot(headers={"mode": "messages"})
    await stream.send_reader(pieces())
    assert (await stream.close_and_recv()).id == digest
    assert snapshots.chunks_seen == 5  # pieces of 150 000, 150 000, 100 000: the first two split at 131 072

    stream = await client.import_snapshot()
    await stream.send_reader([data[:5], data[5:]])
    assert (await stream.close_and_recv()).id == digest


async def test_chunk_too_large_fails_before_sending(snapshots: Snapshots, client: StreamDemoServiceNatsClient, nc: NATS) -> None:
    stream = await client.import_snapshot(headers={"mode": "messages"})
    with pytest.raises(RpcError) as caught:
        await stream.send_reader([b"x" * 10], chunk_size=nc.max_payload)
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT and "max_payload" in caught.value.message
    assert (await stream.close_and_recv()).size == 0  # nothing was sent
    assert snapshots.chunks_seen == 0


N256 = 256 * 1024 * 1024


async def test_256_mib_download(snapshots: Snapshots, client: StreamDemoServiceNatsClient) -> None:
    digest = hashlib.sha256()
    size = 0
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"huge:{N256}"), timeout=240)
    async for piece in stream.iter_bytes():
        digest.update(piece)
        size += len(piece)
    assert (size, digest.hexdigest()) == (N256, hashlib.sha256(blob(N256)).hexdigest())


async def test_256_mib_upload(snapshots: Snapshots, client: StreamDemoServiceNatsClient) -> None:
    data = blob(N256, seed=9)
    stream = await client.import_snapshot(headers={"mode": "iter"}, timeout=240)
    await stream.send_bytes(data)
    result = await stream.close_and_recv()
    assert (result.size, result.id) == (N256, hashlib.sha256(data).hexdigest())


async def test_blob_size_reaches_progress_both_ways(snapshots: Snapshots, client: StreamDemoServiceNatsClient, tmp_path: Path) -> None:
    """A download whose handler declares its size, and an upload by send_file: the receiver's progress
    callback gets the total (`Nats-Blob-Size` on the first chunk; a Go peer ignores it)."""
    seen: list[tuple[int, int | None]] = []
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"sized:{3 * CHUNK}"))
    assert len(await stream.recv_bytes(progress=lambda done, total: seen.append((done, total)))) == 3 * CHUNK
    assert seen == [(CHUNK, 3 * CHUNK), (2 * CHUNK, 3 * CHUNK), (3 * CHUNK, 3 * CHUNK)]
    assert "Nats-Blob-Size" not in stream.headers  # a protocol header, not the handler's

    source = tmp_path / "source.bin"
    source.write_bytes(blob(2 * UPLOAD_CHUNK + 5))
    upload = await client.import_snapshot(headers={"mode": "progress"})
    await upload.send_file(source)
    assert (await upload.close_and_recv()).size == 2 * UPLOAD_CHUNK + 5
    assert snapshots.upload_totals == [2 * UPLOAD_CHUNK + 5] * 3
