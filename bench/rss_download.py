"""Child process of bench/run.py: a pure client downloading SIZE bytes in 64 KiB chunks from the
service the parent runs; prints this process's RSS idle and at peak (MB) as one JSON line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

from gen.streaming.v1 import ExportSnapshotRequest, StreamDemoServiceNatsClient  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def main(url: str, size: int) -> None:
    nc = await nats.connect(url)
    client = StreamDemoServiceNatsClient(nc, timeout=600)
    idle = peak = rss_mb()
    got = 0
    started = time.perf_counter()
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"{size}:{64 * 1024}"))
    async for piece in stream.iter_bytes():
        got += len(piece)
        if got % (4 << 20) < len(piece):
            peak = max(peak, rss_mb())
    elapsed = time.perf_counter() - started
    assert got == size, (got, size)
    await nc.close()
    print(json.dumps({"idle_mb": idle, "peak_mb": peak, "mb_per_s": size / elapsed / 1e6}))


asyncio.run(main(sys.argv[1], int(sys.argv[2])))
