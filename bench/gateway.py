"""`make bench-gateway`: the HTTP gateway's cost (issue 30), service, gateway and clients in separate
processes against one local nats-server.

- unary: calls/s (16 keep-alive connections) and latency (one connection, p50) through the gateway,
  against a direct generated client and raw nats-py request/reply (the same sizes, in this run);
- a server stream over server-sent events: messages/s, against the direct client;
- memory: the gateway process's RSS while a reader reads a 1 GiB chunked download at 8 MiB/s, then
  while it takes the rest at full speed (the bytes alone, `Accept: application/octet-stream`).

The HTTP client is a minimal HTTP/1.1 keep-alive client on asyncio streams (not httpx), so that the
numbers are the gateway's more than a Python client's. Writes bench/gateway.md and .json.

    .venv/bin/python bench/gateway.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import (  # noqa: E402
    CountUpRequest,
    CountUpResponse,
    ExportSnapshotRequest,
    PingRequest,
    PingResponse,
    SnapshotChunk,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)

SERVICE = "streaming.v1.StreamDemoService"
CHUNK = 64 * 1024
QUICK = "--quick" in sys.argv


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Bench(StreamDemoServiceNatsBase):
    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for i in range(request.count):
            yield CountUpResponse(number=i)

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk]:
        chunk = SnapshotChunk(data=b"x" * CHUNK)
        for _ in range(int(request.id)):
            yield chunk


async def service(url: str) -> None:
    """The service process: the demo service and a raw nats-py echo responder (the baseline)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    await betterproto_nats.serve(nc, Bench())

    async def echo(msg: Any) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("raw.echo", cb=echo)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


class Http:
    """One keep-alive HTTP/1.1 connection: POST with a JSON body, the answer's status and body."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> "Http":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, path: str, body: bytes, accept: str = "application/json") -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {len(body)}\r\n\r\n"
        self.writer.write(head.encode() + body)

    async def head(self) -> tuple[int, dict[str, str]]:
        status = int((await self.reader.readline()).split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    async def post(self, path: str, body: bytes) -> bytes:
        self.send(path, body)
        status, headers = await self.head()
        data = await self.reader.readexactly(int(headers["content-length"]))
        assert status == 200, (status, data)
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        """A chunked (transfer-encoding) body's chunks as they come."""
        while True:
            size = int((await self.reader.readline()).strip(), 16)
            if size == 0:
                await self.reader.readline()
                return
            data = await self.reader.readexactly(size)
            await self.reader.readexactly(2)
            yield data

    def close(self) -> None:
        self.writer.close()


async def rate(make_call: Any, connections: int, seconds: float) -> float:
    """Calls/s with `connections` concurrent callers for `seconds`."""
    done = 0
    stop = time.perf_counter() + seconds

    async def caller(index: int) -> None:
        nonlocal done
        call = await make_call(index)
        while time.perf_counter() < stop:
            await call()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(connections)))
    return done / (time.perf_counter() - started)


async def latency(call: Any, n: int) -> float:
    """Median seconds of one call, one at a time."""
    for _ in range(50):
        await call()
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def measure(url: str, port: int, gateway_pid: int) -> dict[str, Any]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    seconds = 1.5 if QUICK else 4.0
    body = json.dumps({"payload": "x" * 32}).encode()
    raw_body = bytes(PingRequest(payload="x" * 32))
    results: dict[str, Any] = {}

    async def direct(_: int) -> Any:
        return lambda: client.ping(PingRequest(payload="x" * 32))

    async def raw(_: int) -> Any:
        return lambda: nc.request("raw.echo", raw_body, timeout=5)

    connections: list[Http] = []

    async def http(_: int) -> Any:
        conn = await Http.connect(port)
        connections.append(conn)
        return lambda: conn.post(f"/{SERVICE}/Ping", body)

    for name, make in (("raw nats-py", raw), ("direct client", direct), ("gateway (HTTP)", http)):
        results[f"unary {name} calls/s"] = await rate(make, 16, seconds)
        results[f"unary {name} p50 ms"] = 1000 * await latency(await make(0), 500 if QUICK else 2000)
    for conn in connections:
        conn.close()

    # A server stream: messages/s over SSE against the direct client.
    count = 50_000 if QUICK else 200_000
    started = time.perf_counter()
    got = 0
    async for _ in client.count_up(CountUpRequest(count=count)):
        got += 1
    results["server stream direct msgs/s"] = got / (time.perf_counter() - started)
    conn = await Http.connect(port)
    conn.send(f"/{SERVICE}/CountUp", json.dumps({"count": count}).encode(), accept="text/event-stream")
    started = time.perf_counter()
    status, _ = await conn.head()
    events = 0
    async for data in conn.chunks():
        events += data.count(b"data: ")
    results["server stream SSE msgs/s"] = (events - 1) / (time.perf_counter() - started)  # (the end event)
    assert status == 200 and events - 1 == count, (status, events)
    conn.close()

    # Memory: a 1 GiB download read slowly, then at full speed.
    chunks = (256 if QUICK else 1024) * 1024 * 1024 // CHUNK
    idle = rss_mb(gateway_pid)
    conn = await Http.connect(port)
    conn.send(f"/{SERVICE}/ExportSnapshot", json.dumps({"id": str(chunks)}).encode(), accept="application/octet-stream")
    status, headers = await conn.head()
    assert status == 200, status
    chunked = headers.get("transfer-encoding") == "chunked"
    got = 0
    slow_peak = idle
    slow_until = time.perf_counter() + (2 if QUICK else 5)
    while time.perf_counter() < slow_until:  # 8 MiB/s: 64 KiB every 1/128 s
        got += len(await conn.reader.read(CHUNK))
        await asyncio.sleep(1 / 128)
        slow_peak = max(slow_peak, rss_mb(gateway_pid))
    fast_peak = slow_peak
    started = time.perf_counter()
    total = chunks * CHUNK
    while True:
        data = await conn.reader.read(1 << 20)
        if not data:
            break
        got += len(data)
        if got % (16 << 20) < len(data):
            fast_peak = max(fast_peak, rss_mb(gateway_pid))
        if got >= total and not chunked:
            break
        if chunked and data.endswith(b"0\r\n\r\n"):
            break
    elapsed = time.perf_counter() - started
    conn.close()
    results["download bytes"] = total
    results["gateway RSS idle MB"] = idle
    results["gateway RSS peak MB, slow reader (8 MiB/s)"] = slow_peak
    results["gateway RSS peak MB, full speed"] = fast_peak
    results["download MB/s through the gateway"] = (got - 8 * 1024 * 1024 * (2 if QUICK else 5)) / elapsed / 1e6
    await nc.close()
    return results


def report(results: dict[str, Any]) -> str:
    ratio = lambda a, b: results[a] / results[b]  # noqa: E731
    lines = [
        "| measure | value | ratio |",
        "|---|---|---|",
        f"| unary calls/s, raw nats-py request/reply (16 concurrent) | {results['unary raw nats-py calls/s']:,.0f} | 1.00 |",
        f"| unary calls/s, direct generated client (16 concurrent) | {results['unary direct client calls/s']:,.0f} | {ratio('unary direct client calls/s', 'unary raw nats-py calls/s'):.2f} of raw |",
        f"| unary calls/s through the gateway (16 keep-alive HTTP connections) | {results['unary gateway (HTTP) calls/s']:,.0f} | {ratio('unary gateway (HTTP) calls/s', 'unary direct client calls/s'):.2f} of direct |",
        f"| unary p50 latency ms: raw / direct / gateway | {results['unary raw nats-py p50 ms']:.3f} / {results['unary direct client p50 ms']:.3f} / {results['unary gateway (HTTP) p50 ms']:.3f} | +{results['unary gateway (HTTP) p50 ms'] - results['unary direct client p50 ms']:.3f} ms added |",
        f"| server stream msgs/s: direct client | {results['server stream direct msgs/s']:,.0f} | 1.00 |",
        f"| server stream msgs/s: SSE through the gateway | {results['server stream SSE msgs/s']:,.0f} | {ratio('server stream SSE msgs/s', 'server stream direct msgs/s'):.2f} of direct |",
        f"| gateway RSS MB: idle / {results['download bytes'] >> 20} MiB download read at 8 MiB/s / then at full speed | {results['gateway RSS idle MB']:.0f} / {results['gateway RSS peak MB, slow reader (8 MiB/s)']:.0f} / {results['gateway RSS peak MB, full speed']:.0f} | |",
        f"| download MB/s through the gateway (octet-stream) | {results['download MB/s through the gateway']:,.0f} | |",
    ]
    return "\n".join(lines)


async def main() -> None:
    with NatsServer() as server:
        procs = []
        try:
            svc = subprocess.Popen([sys.executable, __file__, "service", server.url], stdout=subprocess.PIPE)
            procs.append(svc)
            assert svc.stdout is not None and svc.stdout.readline().strip() == b"ready"
            gateway = subprocess.Popen([sys.executable, "-m", "betterproto_nats", "gateway", "-s", server.url, "--port", "0"], stdout=subprocess.PIPE)
            procs.append(gateway)
            assert gateway.stdout is not None
            line = gateway.stdout.readline().decode()
            port = int(line.split()[2].rstrip("/").rsplit(":", 1)[1])
            results = await measure(server.url, port, gateway.pid)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
    table = report(results)
    print(table)
    (ROOT / "bench" / "gateway.md").write_text(table + "\n")
    (ROOT / "bench" / "gateway.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["service"]:
        asyncio.run(service(sys.argv[2]))
    else:
        asyncio.run(main())
