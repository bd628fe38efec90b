"""`make bench-streams`: 10,000 concurrent idle server streams between a client process and a service
process (one NATS connection each), against one local nats-server.

Reports the memory each stream costs on each side (RSS growth of that process / streams) and the
heartbeat messages per second seen on the wire while the streams idle (a wiretap subscribed to `>`
in this process). Runs 10 streams, then 10,000 (`--streams N` for another size; `--quick`: 1,000).
Writes bench/streams10k.md and .json.

    .venv/bin/python bench/streams10k.py [--streams N] [--idle SECONDS]
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.net.nats_fixes import flush_ordered  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import CountUpRequest, CountUpResponse, StreamDemoServiceNatsBase, StreamDemoServiceNatsClient  # noqa: E402

HEARTBEAT = 1.0  # seconds: the default interval
WARM_UP = 20  # streams opened and closed before the baseline, so imports and caches are paid


def rss_kib(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Idle(StreamDemoServiceNatsBase):
    """Each stream sends one message, then idles until the client goes. The handlers wait on one
    shared event: the numbers are what a stream costs the runtime, not what a handler allocates
    (an `asyncio.Event` of its own would add about 1 KiB per stream)."""

    def __init__(self) -> None:
        self.forever = asyncio.Event()

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        yield CountUpResponse(number=0)
        await self.forever.wait()


async def serve(url: str) -> None:
    nc = await nats.connect(url, pending_size=256 << 20, max_reconnect_attempts=0)
    await betterproto_nats.serve(nc, Idle(), max_concurrent_streams=1_000_000, stream_idle_timeout=600)
    print("ready", flush=True)
    await asyncio.Event().wait()  # until the parent ends this process


async def open_streams(client: StreamDemoServiceNatsClient, n: int) -> list[Any]:
    streams: list[Any] = []

    async def one() -> None:
        stream = await client.count_up(CountUpRequest(count=1))
        await stream.recv()
        streams.append(stream)

    for start in range(0, n, 500):
        await asyncio.gather(*(one() for _ in range(min(500, n - start))))
    return streams


async def client(url: str, n: int) -> None:
    nc = await nats.connect(url, pending_size=256 << 20, max_reconnect_attempts=0)
    stub = StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT)
    for stream in await open_streams(stub, WARM_UP):
        await stream.close()
    await asyncio.sleep(0.5)
    gc.collect()
    print(json.dumps({"phase": "baseline", "rss_kib": rss_kib()}), flush=True)
    started = time.perf_counter()
    streams = await open_streams(stub, n)
    opened = time.perf_counter() - started
    gc.collect()
    print(json.dumps({"phase": "open", "rss_kib": rss_kib(), "open_s": opened}), flush=True)
    await asyncio.Event().wait()  # idle until the parent, having measured, ends this process


class Tap:
    """Counts heartbeat messages (v2 per-stream or shared) and all messages through the server."""

    def __init__(self) -> None:
        self.heartbeats = 0
        self.messages = 0

    async def start(self, url: str) -> Any:
        nc = await nats.connect(url, pending_size=256 << 20)

        async def record(msg: Any) -> None:
            self.messages += 1
            if msg.headers and "Nats-Stream-Heartbeat" in msg.headers:
                self.heartbeats += 1

        await nc.subscribe(">", cb=record, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await flush_ordered(nc)
        return nc


async def measure(url: str, n: int, idle: float) -> dict[str, Any]:
    tap = Tap()
    tap_nc = await tap.start(url)
    me = Path(__file__).resolve()
    service = subprocess.Popen([sys.executable, str(me), "--serve", url], stdout=subprocess.PIPE, text=True)
    caller = None
    try:
        assert service.stdout is not None
        assert (await asyncio.to_thread(service.stdout.readline)).strip() == "ready"
        caller = subprocess.Popen([sys.executable, str(me), "--client", url, str(n)], stdout=subprocess.PIPE, text=True)
        assert caller.stdout is not None
        base = json.loads(await asyncio.to_thread(caller.stdout.readline))
        service_base = rss_kib(service.pid)
        opened = json.loads(await asyncio.to_thread(caller.stdout.readline))
        await asyncio.sleep(2 * HEARTBEAT)  # the service side settles; heartbeats reach their rhythm
        service_open = rss_kib(service.pid)
        beats, messages = tap.heartbeats, tap.messages
        started = time.perf_counter()
        await asyncio.sleep(idle)
        elapsed = time.perf_counter() - started
        beats, messages = tap.heartbeats - beats, tap.messages - messages
        client_after = rss_kib(caller.pid)
    finally:  # measured: no need to wait for 10,000 streams to wind down
        for proc in (caller, service):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        await tap_nc.close()
    return {
        "streams": n,
        "open_s": opened["open_s"],
        "client_kib_per_stream": (opened["rss_kib"] - base["rss_kib"]) / n,
        "client_kib_per_stream_idle": (client_after - base["rss_kib"]) / n,
        "service_kib_per_stream": (service_open - service_base) / n,
        "heartbeats_per_s": beats / elapsed,
        "heartbeats_per_interval": beats / elapsed * HEARTBEAT,
        "messages_per_s": messages / elapsed,
    }


async def main() -> None:
    args = sys.argv[1:]
    idle = float(args[args.index("--idle") + 1]) if "--idle" in args else 5.0
    if "--streams" in args:
        sizes = [int(args[args.index("--streams") + 1])]
    else:
        sizes = [10, 1000 if "--quick" in args else 10_000]
    results = []
    with NatsServer() as server:
        for n in sizes:
            result = await measure(server.url, n, idle)
            results.append(result)
            print(
                f"{n:6} streams: client {result['client_kib_per_stream']:5.1f} KiB/stream "
                f"(after idling {result['client_kib_per_stream_idle']:5.1f}), service {result['service_kib_per_stream']:5.1f} KiB/stream, "
                f"heartbeats {result['heartbeats_per_s']:8.1f}/s ({result['heartbeats_per_interval']:.1f} per {HEARTBEAT:g} s interval), "
                f"all messages {result['messages_per_s']:8.1f}/s, opened in {result['open_s']:.1f} s",
                flush=True,
            )
    lines = [
        "# 10,000 idle streams",
        "",
        f"Heartbeat interval {HEARTBEAT:g} s; client and service in separate processes, one connection each.",
        "",
        "| streams | client KiB/stream | service KiB/stream | heartbeats/s | heartbeats per interval | all messages/s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['streams']:,} | {r['client_kib_per_stream']:.1f} | {r['service_kib_per_stream']:.1f} | "
            f"{r['heartbeats_per_s']:,.1f} | {r['heartbeats_per_interval']:,.1f} | {r['messages_per_s']:,.1f} |"
        )
    out = Path(__file__).parent
    (out / "streams10k.md").write_text("\n".join(lines) + "\n")
    (out / "streams10k.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(sys.argv[2]))
    elif sys.argv[1:2] == ["--client"]:
        asyncio.run(client(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(main())
