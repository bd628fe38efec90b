"""Export a file from a service and import it back, with a progress bar: chunked I/O end to end.

    make snapshots            # or: .venv/bin/python examples/snapshots/snapshots.py [SIZE_MIB]

Starts an embedded nats-server, serves a snapshot store that keeps files in a temp folder, uploads a
random file, downloads it again atomically, and checks both copies with sha256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import AsyncIterator

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the generated `gen` package

import betterproto_nats  # noqa: E402
from betterproto_nats import ErrorCode, RpcError, current_call  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import (  # noqa: E402
    ExportSnapshotRequest,
    ImportSnapshotResponse,
    SnapshotChunk,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)


class SnapshotStore(StreamDemoServiceNatsBase):
    """Keeps uploaded snapshots as files; the id travels in the `snapshot-id` header."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        snapshot_id = current_call().headers.get("snapshot-id", "unnamed")
        size = await requests.recv_to_file(self.folder / snapshot_id)  # atomic: all or nothing
        return ImportSnapshotResponse(id=snapshot_id, size=size)

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        path = self.folder / request.id
        if not path.is_file():
            raise RpcError(ErrorCode.NOT_FOUND, f"no snapshot {request.id!r}")
        with open(path, "rb") as source:
            while piece := source.read(1 << 20):
                yield piece  # raw bytes: split into the method's chunk size for us


class ProgressBar:
    """A one-line progress bar on stderr: `progress=bar` on any chunk helper."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.started = label, total, time.monotonic()
        self.drawn = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        total = total or self.total
        now = time.monotonic()
        if now - self.drawn < 0.1 and done != total:
            return  # ten redraws a second are enough
        self.drawn = now
        rate = done / max(time.monotonic() - self.started, 1e-6) / 1e6
        if total:
            filled = int(30 * done / total)
            bar = "#" * filled + "." * (30 - filled)
            sys.stderr.write(f"\r{self.label:8} [{bar}] {done / 1e6:7.1f}/{total / 1e6:.1f} MB {rate:6.1f} MB/s")
        else:
            sys.stderr.write(f"\r{self.label:8} {done / 1e6:7.1f} MB {rate:6.1f} MB/s")
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def main(size_mib: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, NatsServer() as server:
        work = Path(tmp)
        (store := work / "store").mkdir()
        original = work / "original.bin"
        with open(original, "wb") as f:
            for _ in range(size_mib):
                f.write(os.urandom(1 << 20))
        service_nc, client_nc = await nats.connect(server.url), await nats.connect(server.url)
        service = await betterproto_nats.serve(service_nc, SnapshotStore(store))
        client = StreamDemoServiceNatsClient(client_nc)
        try:
            upload = await client.import_snapshot(headers={"snapshot-id": "snap-1"})
            bar = ProgressBar("import", original.stat().st_size)
            await upload.send_file(original, progress=bar)
            result = await upload.close_and_recv()
            bar.done()
            print(f"imported {result.id}: {result.size} bytes")

            download = await client.export_snapshot(ExportSnapshotRequest(id="snap-1"))
            copy = work / "copy.bin"
            bar = ProgressBar("export", result.size)
            await download.recv_to_file(copy, progress=bar)
            bar.done()
            same = sha256(original) == sha256(store / "snap-1") == sha256(copy)
            print(f"exported to {copy.name}: sha256 {'matches' if same else 'DIFFERS'} on all three copies")
            if not same:
                raise SystemExit(1)
        finally:
            await service.stop()
            await client_nc.close()
            await service_nc.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 64))
