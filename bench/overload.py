"""`make bench-overload`: a service past its capacity, with its clients in another process.

Scenarios (each: one local nats-server, the service in one process, the client in another):
- `server`: N concurrent server streams `CountUp(count=10)`, the handler yields one item every 100 ms;
- `client`: N concurrent client streams, 10 messages each, 100 ms apart;
- `bidi`: N concurrent bidi streams, 10 messages each way, 100 ms apart;
- `unary`: the service's unary capacity measured (a handler that works 1 ms of CPU), then a flood at
  5x that rate for a few seconds, each call with a 1 s deadline, then calls at a normal rate;
- `starved`: streams open while a handler blocks the service's loop for 2 s (a CPU-bound handler).

Every call ends as `ok` (all its items), `refused` (RESOURCE_EXHAUSTED before it started: the
service's admission control) or `failed: <code>`. Printed per scenario: those counts, p50/p99 latency
of the accepted calls and of the refusals, and the peak RSS of each process (and its growth per
stream). Writes bench/overload.md and .json.

    .venv/bin/python bench/overload.py [--streams N] [--only server,unary] [--max-streams N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextvars
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
from betterproto_nats import Overloaded, RpcError  # noqa: E402
from betterproto_nats.health.admission import OpenGate  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import (  # noqa: E402
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)

ITEMS = 10  # messages per stream (each way)
PACE = 0.1  # seconds between them
CPU_PER_CALL = 0.001  # seconds of CPU a unary call costs the service
FLOOD_FACTOR = 5
FLOOD_SECONDS = 4.0
UNARY_DEADLINE = 1.0
BLOCK_SECONDS = 2.0  # `starved`: how long one handler blocks the service's loop

# Seconds this task's last stream waited at the client's open gate (admission.OpenGate): calls are
# timed from when they passed it (what the service sees), and the waits are reported on their own.
GATE_WAIT: contextvars.ContextVar[list[float]] = contextvars.ContextVar("gate_wait")


def time_the_gate() -> None:
    enter = OpenGate.enter

    async def timed_enter(self: OpenGate, wait: float | None, method: str) -> None:
        started = time.perf_counter()
        try:
            await enter(self, wait, method)
        finally:
            GATE_WAIT.get().append(time.perf_counter() - started)

    OpenGate.enter = timed_enter  # type: ignore[method-assign]


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def burn(seconds: float) -> None:
    """Work the CPU (a handler that computes), without giving the loop back."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class Paced(StreamDemoServiceNatsBase):
    """The service under load: streams paced at `PACE`, unary calls that cost `CPU_PER_CALL`."""

    def __init__(self) -> None:
        self.blocked = False

    async def ping(self, request: PingRequest) -> PingResponse:
        if request.payload == "block" and not self.blocked:
            self.blocked = True
            burn(BLOCK_SECONDS)
            return PingResponse(payload="blocked")
        burn(CPU_PER_CALL)
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for i in range(request.count):
            yield CountUpResponse(number=request.start + i)
            await asyncio.sleep(PACE)

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        total = count = 0
        async for request in requests:
            total += request.value
            count += 1
        return SumResponse(total=total, count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield ChatMessage(user="server", text=message.text)


async def serve(url: str, options: dict[str, Any]) -> None:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    service = await betterproto_nats.serve(nc, Paced(), **options)
    print(json.dumps({"ready": True, "rss_kib": rss_kib()}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):  # the parent asks for figures, then closes stdin
        if line.strip() == "stats":
            refused = dict(service.refused)
            print(json.dumps({"rss_kib": rss_kib(), "peak_kib": rss_kib(field="VmHWM"), "refused": refused}), flush=True)
    await service.stop(grace_period=1)


class Tally:
    """Outcomes and latencies of one scenario's calls."""

    def __init__(self) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.latencies: list[float] = []  # accepted calls, start to end
        self.refusals: list[float] = []  # refused calls, start to refusal
        self.retry_after: list[float] = []
        self.gate_waits: list[float] = []

    def _since(self, started: float) -> float:
        """Seconds since `started`, not counting the wait at the client's gate."""
        waits = GATE_WAIT.get([])
        waited = sum(waits)
        if waits:
            self.gate_waits.append(waited)
            waits.clear()
        return time.perf_counter() - started - waited

    def ok(self, started: float) -> None:
        self.outcomes["ok"] += 1
        self.latencies.append(self._since(started))

    def error(self, error: RpcError, started: float, opened: bool) -> None:
        if isinstance(error, Overloaded) and not opened:
            self.outcomes["refused"] += 1
            self.refusals.append(self._since(started))
            self.retry_after.append(error.retry_after)
        else:
            self._since(started)
            self.outcomes[f"failed: {error.code}{'' if opened else ' at open'}: {error.message[:70]}"] += 1

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {
            "outcomes": dict(self.outcomes),
            "accepted_p50_ms": pct(self.latencies, 0.5),
            "accepted_p99_ms": pct(self.latencies, 0.99),
            "refused_p50_ms": pct(self.refusals, 0.5),
            "refused_p99_ms": pct(self.refusals, 0.99),
            "retry_after_p50_ms": pct(self.retry_after, 0.5),
            "gate_wait_p50_ms": pct(self.gate_waits, 0.5),
            "gate_wait_p99_ms": pct(self.gate_waits, 0.99),
        }


async def server_stream(client: StreamDemoServiceNatsClient, tally: Tally, i: int) -> None:
    GATE_WAIT.set([])
    started, got = time.perf_counter(), 0
    try:
        async for _ in client.count_up(CountUpRequest(start=i, count=ITEMS)):
            got += 1
        if got == ITEMS:
            tally.ok(started)
        else:
            tally.outcomes[f"short: {got}"] += 1
    except RpcError as error:
        tally.error(error, started, got > 0)


async def client_stream(client: StreamDemoServiceNatsClient, tally: Tally, i: int) -> None:
    GATE_WAIT.set([])
    started, opened = time.perf_counter(), False
    try:
        async with await client.sum() as stream:
            opened = True
            for k in range(ITEMS):
                await stream.send(SumRequest(value=i * ITEMS + k))
                await asyncio.sleep(PACE)
            result = await stream.close_and_recv()
        if result.count == ITEMS:
            tally.ok(started)
        else:
            tally.outcomes[f"short: {result.count}"] += 1
    except RpcError as error:
        tally.error(error, started, opened)


async def bidi_stream(client: StreamDemoServiceNatsClient, tally: Tally, i: int) -> None:
    GATE_WAIT.set([])
    started, opened, got = time.perf_counter(), False, 0
    try:
        async with await client.chat() as stream:
            opened = True

            async def send() -> None:
                for k in range(ITEMS):
                    await stream.send(ChatMessage(user="c", text=f"{i}:{k}"))
                    await asyncio.sleep(PACE)
                await stream.close_send()

            sender = asyncio.create_task(send())
            try:
                async for _ in stream:
                    got += 1
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
        if got == ITEMS:
            tally.ok(started)
        else:
            tally.outcomes[f"short: {got}"] += 1
    except RpcError as error:
        tally.error(error, started, opened)


STREAMS = {"server": server_stream, "client": client_stream, "bidi": bidi_stream}


async def run_streams(url: str, kind: str, n: int) -> dict[str, Any]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    tally = Tally()
    base = rss_kib()
    started = time.perf_counter()
    await asyncio.gather(*(STREAMS[kind](client, tally, i) for i in range(n)))
    wall = time.perf_counter() - started
    await nc.close()
    return {"wall_s": round(wall, 2), "client_base_kib": base, "client_peak_kib": rss_kib(field="VmHWM"), **tally.summary()}


async def unary_rate(client: StreamDemoServiceNatsClient, seconds: float, in_flight: int) -> float:
    """Calls per second with `in_flight` calls at a time (the service's capacity, when it is the limit)."""
    done = 0
    until = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        k = 0
        while time.perf_counter() < until:
            await client.ping(PingRequest(payload=f"c{w}-{k}"), timeout=10)
            done += 1
            k += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return done / (time.perf_counter() - started)


async def open_loop(client: StreamDemoServiceNatsClient, rate: float, seconds: float, tally: Tally, tag: str) -> None:
    """Calls started at `rate` per second whatever happens to them (as independent users send them)."""
    calls: list[asyncio.Task[None]] = []

    async def one(k: int) -> None:
        started = time.perf_counter()
        try:
            await client.ping(PingRequest(payload=f"{tag}{k}"), timeout=UNARY_DEADLINE)
            tally.ok(started)
        except RpcError as error:
            tally.error(error, started, opened=False)

    begun = time.perf_counter()
    for k in range(int(rate * seconds)):
        delay = begun + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(asyncio.create_task(one(k)))
    await asyncio.gather(*calls)


async def run_unary(url: str) -> dict[str, Any]:
    nc = await nats.connect(url, max_reconnect_attempts=0, pending_size=64 << 20)
    client = StreamDemoServiceNatsClient(nc)
    await unary_rate(client, 0.5, 8)  # warm up
    capacity = await unary_rate(client, 2.0, 16)
    before, flood, after = Tally(), Tally(), Tally()
    await open_loop(client, capacity / 2, 2.0, before, "b")
    base = rss_kib()
    await open_loop(client, capacity * FLOOD_FACTOR, FLOOD_SECONDS, flood, "f")
    recovered_at = time.perf_counter()
    await open_loop(client, capacity / 2, 2.0, after, "a")
    await nc.close()
    return {
        "capacity_per_s": round(capacity),
        "flood_per_s": round(capacity * FLOOD_FACTOR),
        "before": before.summary(),
        "flood": flood.summary(),
        "after": after.summary(),
        "client_base_kib": base,
        "client_peak_kib": rss_kib(field="VmHWM"),
        "after_started_s": round(recovered_at, 3),
    }


async def run_starved(url: str, n: int) -> dict[str, Any]:
    """`n` server streams open, then one call blocks the service's loop for `BLOCK_SECONDS`."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    tally = Tally()
    streams = [asyncio.create_task(server_stream(client, tally, i)) for i in range(n)]
    await asyncio.sleep(0.3)
    await client.ping(PingRequest(payload="block"), timeout=30)
    await asyncio.gather(*streams)
    await nc.close()
    return tally.summary()


PROBE_EVERY = 0.02  # seconds between the probe's calls


async def probe_once(client: StreamDemoServiceNatsClient, scenario: str, k: int) -> tuple[str, float]:
    """One call of the scenario's kind from an idle process: ("refused" | "opened" | "failed", seconds
    from sending it to the service's first answer: the refusal, the first item, the handshake)."""
    started = time.perf_counter()
    try:
        if scenario == "server":
            stream = await client.count_up(CountUpRequest(start=k, count=1))
            async with stream:
                await stream.recv()
        elif scenario == "unary":
            await client.ping(PingRequest(payload=f"probe{k}"), timeout=UNARY_DEADLINE)
        else:
            opened = await (client.sum() if scenario == "client" else client.chat())
            await opened.close()
        return "opened", time.perf_counter() - started
    except Overloaded:
        return "refused", time.perf_counter() - started
    except RpcError:
        return "failed", time.perf_counter() - started


async def probe_main(url: str, scenario: str) -> None:
    """`--probe`: while the load runs, a call every `PROBE_EVERY` s from this otherwise idle process:
    how fast the service answers, without the loaded client's own queues in the figure. Stops when
    stdin closes; prints p50/p99 of refusals and of accepted calls' first answers."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    print("ready", flush=True)
    seen: dict[str, list[float]] = collections.defaultdict(list)
    calls: set[asyncio.Task[tuple[str, float]]] = set()
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    k = 0
    while not stdin_closed.done():
        task = asyncio.create_task(probe_once(client, scenario, k))
        calls.add(task)
        task.add_done_callback(calls.discard)
        task.add_done_callback(lambda t: seen[t.result()[0]].append(t.result()[1]))
        k += 1
        await asyncio.sleep(PROBE_EVERY)
    await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
    await nc.close()

    def pct(values: list[float], q: float) -> float | None:
        return round(sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000, 1) if values else None

    print(json.dumps({kind: {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for kind, v in seen.items()}), flush=True)


async def client_main(url: str, scenario: str, n: int) -> None:
    time_the_gate()
    if scenario in STREAMS:
        result = await run_streams(url, scenario, n)
    elif scenario == "unary":
        result = await run_unary(url)
    else:
        result = await run_starved(url, n)
    print(json.dumps(result), flush=True)


def run_scenario(url: str, scenario: str, n: int, service_options: dict[str, Any]) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    service = subprocess.Popen(
        [sys.executable, me, "--serve", url, json.dumps(service_options)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    probe: subprocess.Popen[str] | None = None
    try:
        assert service.stdin is not None and service.stdout is not None
        ready = json.loads(service.stdout.readline())
        if scenario != "starved":  # an idle third process times the service's answers during the load
            probe = subprocess.Popen([sys.executable, me, "--probe", url, scenario], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert probe.stdout is not None
            probe.stdout.readline()
        client = subprocess.run(
            [sys.executable, me, "--client", url, scenario, str(n)], capture_output=True, text=True, timeout=600
        )
        if probe is not None:
            probe_out, _ = probe.communicate("", timeout=60)
            result_probe = json.loads(probe_out.strip().splitlines()[-1])
        if client.returncode != 0:
            raise RuntimeError(f"client of {scenario} failed:\n{client.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(client.stdout.strip().splitlines()[-1])
        service.stdin.write("stats\n")
        service.stdin.flush()
        figures = json.loads(service.stdout.readline())
        if probe is not None:
            result["probe"] = result_probe
        result["service_base_kib"] = ready["rss_kib"]
        result["service_peak_kib"] = figures["peak_kib"]
        result["service_refused"] = figures["refused"]
        service.stdin.close()
        service.wait(timeout=30)
        return result
    finally:
        for process in (service, probe):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def report(scenario: str, n: int, result: dict[str, Any]) -> list[str]:
    lines = [f"### {scenario}" + (f" ({n} calls)" if scenario != "unary" else "")]
    phases = [("", result)] if scenario != "unary" else [(f"{p}: ", result[p]) for p in ("before", "flood", "after")]
    if scenario == "unary":
        lines.append(f"capacity {result['capacity_per_s']} calls/s (1 ms of CPU each), flood {result['flood_per_s']} calls/s for {FLOOD_SECONDS:g} s, deadline {UNARY_DEADLINE:g} s")
    for label, phase in phases:
        lines.append(
            f"{label}{phase['outcomes']}; accepted p50/p99 {phase['accepted_p50_ms']}/{phase['accepted_p99_ms']} ms; "
            f"refused p50/p99 {phase['refused_p50_ms']}/{phase['refused_p99_ms']} ms (retry hint p50 {phase['retry_after_p50_ms']} ms); "
            f"waited at the client's gate p50/p99 {phase['gate_wait_p50_ms']}/{phase['gate_wait_p99_ms']} ms"
        )
    if "wall_s" in result:
        lines.append(f"wall {result['wall_s']} s")
    for side in ("client", "service"):
        if f"{side}_peak_kib" in result:
            growth = result[f"{side}_peak_kib"] - result[f"{side}_base_kib"]
            per = f", {growth / n:.1f} KiB per stream" if scenario in STREAMS else ""
            lines.append(f"{side}: peak RSS {result[f'{side}_peak_kib'] / 1024:.0f} MiB (+{growth / 1024:.0f} MiB{per})")
    if "probe" in result:
        seen = result["probe"]
        lines.append(
            f"probe (a call every {PROBE_EVERY * 1000:.0f} ms from an idle process), first answer: "
            + "; ".join(f"{kind} {v['n']}: p50/p99 {v['p50_ms']}/{v['p99_ms']} ms" for kind, v in sorted(seen.items()))
        )
    if result.get("service_refused"):
        lines.append(f"service refusals by reason: {result['service_refused']}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--only", default="server,client,bidi,unary,starved")
    parser.add_argument("--max-streams", type=int, default=25_000, help="the service's max_concurrent_streams")
    parser.add_argument("--max-loop-lag", type=float, default=None, help="the service's max_loop_lag (default: the runtime's)")
    args = parser.parse_args()
    options: dict[str, Any] = {"max_concurrent_streams": args.max_streams}
    if args.max_loop_lag is not None:
        options["max_loop_lag"] = args.max_loop_lag
    results: dict[str, Any] = {"options": options, "streams": args.streams}
    lines = ["# Overload (bench/overload.py)", "", f"service options: {options}", ""]
    with NatsServer() as server:
        for scenario in args.only.split(","):
            n = args.streams if scenario in STREAMS else 200
            result = run_scenario(server.url, scenario, n, options)
            results[scenario] = result
            section = report(scenario, n, result)
            print("\n".join(section), flush=True)
            lines += [*section, ""]
    (Path(__file__).parent / "overload.md").write_text("\n".join(lines) + "\n")
    (Path(__file__).parent / "overload.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        asyncio.run(serve(sys.argv[2], json.loads(sys.argv[3])))
    elif sys.argv[1:2] == ["--probe"]:
        asyncio.run(probe_main(sys.argv[2], sys.argv[3]))
    elif sys.argv[1:2] == ["--client"]:
        asyncio.run(client_main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        main()
