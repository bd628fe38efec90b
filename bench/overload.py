"""`make bench-overload`: a service past its capacity, with its clients in other processes (issue 26).

Default settings everywhere: `serve(nc, impl)` and `StreamDemoServiceNatsClient(nc)` as a user
writes them, so clients absorb refusals (calling/refusals.py) and the bench has no retry code.
Scenarios (each with one local nats-server and fresh processes):
- `burst`: 200, then 2,000 unary calls gathered at once by one client, the handler answering at once:
  outcomes, wall time, the service's `$SRV.STATS` `refused` / `retried`;
- `streams`: 10,000 paced server streams `CountUp(count=10)` (one item per 100 ms) gathered at once:
  outcomes, wall time, peak streams open in the service, RSS growth per stream on each side; during
  it, peers that die (killed) or hang (SIGSTOP) on both sides, and how soon they are noticed; right
  after it, 2,000 idle streams (an item, `IDLE_SECONDS` of quiet, an item) opened at once; last, the
  service's stream capacity (streams/s completed by closed loops of paced streams, the best of a few
  concurrencies), to compare the burst's wall time with N / capacity;
- `flood`: the service's unary capacity (1 ms of CPU per call), then 4 client processes send 5x that
  rate for a few seconds, each call with a 1 s deadline, while an idle probe process times one call
  every 20 ms: how calls end (and whether any failed before its deadline would pass), retries
  against the `RetryBudget`, p99 of accepted calls, how soon the service answers at its normal
  latency after the flood;
- `starved`: streams open while a handler blocks the service's loop for 2 s;
- `client`, `bidi` (not in the default run): 10,000 client / bidi streams, 10 messages 100 ms apart.

Writes bench/overload.md and .json (git-ignored).

    .venv/bin/python bench/overload.py [--only burst,streams,flood,starved] [--streams N] [--idle N]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats import Overloaded, RpcError  # noqa: E402
from betterproto_nats.health.admission import MIN_RETRY_AFTER  # noqa: E402
from betterproto_nats.calling.refusals import RetryBudget  # noqa: E402
from betterproto_nats.core.heartbeats import DEFAULT_HEARTBEAT  # noqa: E402
from betterproto_nats.net.transport import transport_of  # noqa: E402
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

ITEMS = 10  # messages per paced stream (each way)
PACE = 0.1  # seconds between them
IDLE_SECONDS = 3.0  # how long an idle stream keeps quiet between its two items
IDLE_BASE = 1_000_000  # `CountUp.start` from here: an idle stream
VICTIM_BASE = 2_000_000  # from here: a stream of a client that will die (group = (start - base) // 1000)
VICTIM_STREAMS = 20  # streams per lost peer
PAUSE_HEARTBEAT = 0.3  # heartbeat of the streams whose peer is paused (3 intervals: 0.9 s)
CPU_PER_CALL = 0.001  # seconds of CPU a unary call costs the service in `flood`
FLOOD_FACTOR = 5
FLOOD_CLIENTS = 4
FLOOD_SECONDS = 4.0
UNARY_DEADLINE = 1.0
PROBE_EVERY = 0.02  # seconds between the flood probe's calls
BLOCK_SECONDS = 2.0  # `starved`: how long one handler blocks the service's loop
CAPACITY_CONCURRENCY = (1000, 2000)  # closed loops of paced streams: the service's streams/s
CAPACITY_SECONDS = 4.0
METER = "bench.meter"  # the service process's figures, asked over NATS by the client process


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory (or `VmHWM`, its peak), KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burn(seconds: float) -> None:
    """Work the CPU (a handler that computes), without giving the loop back."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile of seconds, in ms (None: no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


class Meter:
    """Peak RSS (sampled every 50 ms: VmHWM cannot be reset) and peak open streams of one process,
    since the last `reset`, so each phase of a scenario gets its own peaks."""

    def __init__(self) -> None:
        self.base = rss_kib()
        self.peak = self.base
        self.open = 0
        self.peak_open = 0
        self.task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_kib())
            await asyncio.sleep(0.05)

    def opened(self) -> None:
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)

    def figures(self) -> dict[str, Any]:
        self.peak = max(self.peak, rss_kib())
        return {"rss_kib": rss_kib(), "peak_kib": self.peak, "open": self.open, "peak_open": self.peak_open}

    def reset(self) -> None:
        self.peak, self.peak_open = rss_kib(), self.open


class Paced(StreamDemoServiceNatsBase):
    """The service under load: paced, idle and victim streams (by `CountUp.start`), unary calls
    that cost `cpu` seconds of CPU (or block the loop once, `starved`)."""

    def __init__(self, meter: Meter, cpu: float) -> None:
        self.meter = meter
        self.cpu = cpu
        self.blocked = False
        self.victims: collections.Counter[int] = collections.Counter()  # open, by group
        self.victims_gone: dict[int, float] = {}  # group -> when its last stream ended (monotonic)

    async def ping(self, request: PingRequest) -> PingResponse:
        if request.payload == "block" and not self.blocked:
            self.blocked = True
            burn(BLOCK_SECONDS)
            return PingResponse(payload="blocked")
        if self.cpu:
            burn(self.cpu)
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        meter = self.meter
        meter.opened()
        group = (request.start - VICTIM_BASE) // 1000 if request.start >= VICTIM_BASE else None
        if group is not None:
            self.victims[group] += 1
        try:
            if group is not None:  # a stream of a client that will be lost: open until it is noticed
                yield CountUpResponse(number=request.start)
                await asyncio.Event().wait()
            pace = IDLE_SECONDS if request.start >= IDLE_BASE else PACE
            for i in range(request.count):
                yield CountUpResponse(number=request.start + i)
                if i + 1 < request.count:
                    await asyncio.sleep(pace)
        finally:
            meter.open -= 1
            if group is not None:
                self.victims[group] -= 1
                if self.victims[group] == 0:
                    self.victims_gone[group] = time.monotonic()

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
    """`--serve`: the service, default settings but for `options["serve"]`; answers `METER` requests
    (its figures, then its peaks reset) and prints its figures when the parent writes a line."""
    logging.getLogger("betterproto_nats").setLevel(logging.ERROR)  # refusals are counted, not logged one by one
    nc = await nats.connect(url, max_reconnect_attempts=0)
    meter = Meter()
    impl = Paced(meter, options.get("cpu", 0.0))
    service = await betterproto_nats.serve(nc, impl, **options.get("serve", {}))

    def figures() -> dict[str, Any]:
        return {
            **meter.figures(),
            "name": service.name,
            "id": service.id,
            "refused": dict(service.refused),
            "victims_gone": impl.victims_gone,
        }

    async def on_meter(msg: Any) -> None:
        await msg.respond(json.dumps(figures()).encode())
        meter.reset()

    if not options.get("victim"):
        await nc.subscribe(METER, cb=on_meter)
    meter.reset()
    print(json.dumps({"ready": True, **figures()}), flush=True)
    while await asyncio.to_thread(sys.stdin.readline):
        print(json.dumps(figures()), flush=True)
    await service.stop(grace_period=1)


async def service_meter(nc: NATS) -> dict[str, Any]:
    """The service process's figures since the last ask (its peaks reset after answering)."""
    return json.loads((await nc.request(METER, b"", timeout=30)).data)  # type: ignore[no-any-return]


async def srv_stats(nc: NATS, service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The `data` of each endpoint in the service's `$SRV` STATS (`refused`, `retried`, ...)."""
    stats = json.loads((await nc.request(f"$SRV.STATS.{service['name']}.{service['id']}", b"", timeout=30)).data)
    return {e["name"]: e["data"] for e in stats["endpoints"]}


def delta(after: dict[str, Any], before: dict[str, Any], keys: tuple[str, ...] = ("refused", "retried")) -> dict[str, int]:
    return {k: after[k] - before[k] for k in keys}


# --- burst: many cheap unary calls at once ---------------------------------------------------------


async def run_burst(url: str, sizes: list[int]) -> dict[str, Any]:
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    service = await service_meter(nc)
    for k in range(20):  # warm
        await client.ping(PingRequest(payload=f"w{k}"), timeout=5)
    results: dict[int, Any] = {}
    for n in sizes:
        before = (await srv_stats(nc, service))["ping"]
        outcomes: collections.Counter[str] = collections.Counter()

        async def one(i: int) -> None:
            try:
                reply = await client.ping(PingRequest(payload=str(i)), timeout=30)
                outcomes["ok" if reply.payload == str(i) else "wrong"] += 1
            except RpcError as error:
                outcomes[f"{error.code}: {error.message[:60]}"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
        after = (await srv_stats(nc, service))["ping"]
        results[n] = {"outcomes": dict(outcomes), "wall_ms": round(wall * 1000, 1), "stats": delta(after, before)}
    await nc.close()
    return {"sizes": results}


# --- streams: 10,000 paced, lost peers meanwhile, 2,000 idle right after, capacity -----------------


async def paced(client: StreamDemoServiceNatsClient, i: int, outcomes: collections.Counter[str]) -> None:
    """One paced server stream; its outcome counted (ok: all items, in order)."""
    got: list[int] = []
    try:
        async for item in client.count_up(CountUpRequest(start=i, count=ITEMS)):
            got.append(item.number)
        outcomes["ok" if got == list(range(i, i + ITEMS)) else f"wrong: {len(got)} items"] += 1
    except RpcError as error:
        outcomes[f"{error.code}{' after items' if got else ''}: {error.message[:60]}"] += 1


async def idle(client: StreamDemoServiceNatsClient, i: int, outcomes: collections.Counter[str]) -> None:
    """One idle server stream: an item, `IDLE_SECONDS` of quiet, an item."""
    start = IDLE_BASE + i
    try:
        got = [item.number async for item in client.count_up(CountUpRequest(start=start, count=2))]
        outcomes["ok" if got == [start, start + 1] else f"wrong: {got}"] += 1
    except RpcError as error:
        outcomes[f"{error.code}: {error.message[:60]}"] += 1


async def watch_lost(streams: list[Any]) -> list[tuple[str, float]]:
    """Read victim streams until each ends: (error code, when) per stream."""

    async def ends(stream: Any) -> tuple[str, float]:
        try:
            while True:
                await stream.recv()
        except RpcError as error:
            return str(error.code), time.monotonic()
        except StopAsyncIteration:
            return "ended", time.monotonic()

    return list(await asyncio.gather(*(ends(stream) for stream in streams)))


async def victim_streams(client: StreamDemoServiceNatsClient, group: int) -> list[Any]:
    """`VICTIM_STREAMS` streams of `group` opened and past their first item."""
    streams = []
    for k in range(VICTIM_STREAMS):
        stream = await client.count_up(CountUpRequest(start=VICTIM_BASE + group * 1000 + k, count=1))
        await stream.recv()
        streams.append(stream)
    return streams


async def capacity(client: StreamDemoServiceNatsClient) -> dict[str, float]:
    """The service's stream capacity: paced streams completed per second by `c` closed loops (a
    stream opened as the last one ends), for each `c` of `CAPACITY_CONCURRENCY`, counted after the
    first stream's duration (the ramp). Refusals are not absorbed here (`raise_refusals`): a refused
    loop waits the hint and opens again, so the client's retry budget does not bound the figure."""
    rates: dict[str, float] = {}
    for c in CAPACITY_CONCURRENCY:
        done: list[float] = []
        begun = time.monotonic()
        until = begun + ITEMS * PACE + CAPACITY_SECONDS

        async def loop(w: int) -> None:
            k = 0
            while time.monotonic() < until:
                try:
                    with betterproto_nats.raise_refusals():
                        async for _ in client.count_up(CountUpRequest(start=w * 100 + k % 100, count=ITEMS)):
                            pass
                    done.append(time.monotonic())
                except Overloaded as refused:
                    await asyncio.sleep(refused.retry_after)
                except RpcError:
                    pass
                k += 1

        await asyncio.gather(*(loop(w) for w in range(c)))
        window = [t for t in done if begun + ITEMS * PACE <= t < until]
        rates[str(c)] = round(len(window) / CAPACITY_SECONDS, 1)
    return rates


async def run_streams(url: str, n: int, n_idle: int, victims: dict[str, str]) -> None:
    """The `streams` client: prints "paced" when the burst starts (the parent then loses peers),
    then a JSON line with everything measured."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    meter = Meter()
    outcomes: collections.Counter[str] = collections.Counter()
    await asyncio.gather(*(paced(client, i, outcomes) for i in range(20)))  # warm: imports, shared subscriptions
    lost: dict[str, list[Any]] = {}
    for how, prefix in victims.items():  # streams to services that will be lost (their own subjects)
        heartbeat = PAUSE_HEARTBEAT if how == "pause" else DEFAULT_HEARTBEAT
        lost[how] = await victim_streams(StreamDemoServiceNatsClient(nc, subject_prefix=prefix, heartbeat=heartbeat), 0)
    service = await service_meter(nc)  # (resets its peaks)
    stats_before = (await srv_stats(nc, service))["count_up"]
    meter.reset()
    base = meter.figures()
    watching = asyncio.create_task(asyncio.wait_for(asyncio.gather(*(watch_lost(s) for s in lost.values())), 120))

    outcomes = collections.Counter()
    budget = RetryBudget.of(transport_of(nc))
    retries_before, taken_before = budget.retries, budget.taken
    timeline: list[list[float]] = []  # every 2 s: seconds, streams done, retries so far, retries waiting for a token

    async def watch() -> None:
        while True:
            await asyncio.sleep(2.0)
            timeline.append([round(time.perf_counter() - started, 1), sum(outcomes.values()), budget.retries - retries_before, budget.waiting])

    print("paced", flush=True)
    started = time.perf_counter()
    watcher = asyncio.create_task(watch())
    burst = [asyncio.create_task(paced(client, i, outcomes)) for i in range(n)]
    meter.peak_open = n  # all are calls in progress on the client at once
    await asyncio.gather(*burst)
    wall = time.perf_counter() - started
    watcher.cancel()
    client_side = meter.figures()
    service_side = await service_meter(nc)
    stats_paced = (await srv_stats(nc, service))["count_up"]
    result: dict[str, Any] = {
        "paced": {
            "n": n,
            "outcomes": dict(outcomes),
            "wall_s": round(wall, 2),
            "stats": delta(stats_paced, stats_before),
            "budget": {"retries": budget.retries - retries_before, "taken": budget.taken - taken_before},
            "timeline": timeline,
            "client": {"base_kib": base["rss_kib"], "peak_kib": client_side["peak_kib"], "peak_open": n},
            "service": {"base_kib": service["rss_kib"], "peak_kib": service_side["peak_kib"], "peak_open": service_side["peak_open"]},
            "service_refused": {k: v - service["refused"].get(k, 0) for k, v in service_side["refused"].items()},
        }
    }

    idle_outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    await asyncio.gather(*(idle(client, i, idle_outcomes) for i in range(n_idle)))
    after_idle = await service_meter(nc)
    stats_idle = (await srv_stats(nc, service))["count_up"]
    result["idle"] = {
        "n": n_idle,
        "outcomes": dict(idle_outcomes),
        "wall_s": round(time.perf_counter() - started, 2),
        "stats": delta(stats_idle, stats_paced),
        "service_peak_open": after_idle["peak_open"],
        "service_refused": {k: v - service_side["refused"].get(k, 0) for k, v in after_idle["refused"].items()},
    }

    ended = await watching
    result["lost_service"] = {how: ends for how, ends in zip(lost, ended)}
    result["lost_client"] = after_idle["victims_gone"]
    result["capacity_streams_per_s"] = await capacity(client)
    print(json.dumps(result), flush=True)
    await nc.close()


async def run_victim_client(url: str, group: int, heartbeat: float) -> None:
    """`--victim-client`: `VICTIM_STREAMS` streams to the loaded service, then nothing (until it is
    killed or paused by the parent)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    streams = await victim_streams(StreamDemoServiceNatsClient(nc, heartbeat=heartbeat), group)
    print("ready", flush=True)
    await asyncio.Event().wait()
    del streams


# --- flood: unary calls at 5x capacity from several processes ---------------------------------------


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


async def run_capacity(url: str) -> None:
    """`--unary-capacity`: the service's unary calls per second (16 in flight)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    await unary_rate(client, 0.5, 8)  # warm up
    print(json.dumps({"capacity_per_s": await unary_rate(client, 2.0, 16)}), flush=True)
    await nc.close()


async def run_flood(url: str, rate: float, seconds: float, tag: str) -> None:
    """`--flood`: prints "ready", waits for the start time (monotonic) on stdin, then starts calls
    at `rate` per second whatever happens to them (as independent users send them)."""
    nc = await nats.connect(url, max_reconnect_attempts=0, pending_size=64 << 20)
    client = StreamDemoServiceNatsClient(nc)
    for k in range(10):
        await client.ping(PingRequest(payload=f"w{k}"), timeout=5)
    budget = RetryBudget.of(transport_of(nc))
    print("ready", flush=True)
    start_at = float(await asyncio.to_thread(sys.stdin.readline))
    retries_before, taken_before = budget.retries, budget.taken
    outcomes: collections.Counter[str] = collections.Counter()
    accepted: list[float] = []
    early: list[dict[str, float]] = []  # failures before the deadline's rule allowed them
    failed_at: dict[str, list[float]] = collections.defaultdict(list)

    async def one(k: int) -> None:
        started = time.monotonic()
        try:
            await client.ping(PingRequest(payload=f"{tag}{k}"), timeout=UNARY_DEADLINE)
            outcomes["ok"] += 1
            accepted.append(time.monotonic() - started)
        except Overloaded as error:
            took = time.monotonic() - started
            outcomes["Overloaded"] += 1
            failed_at["Overloaded"].append(took)
            # Raised only when the next try could not be answered in time (the wait: the hint and up
            # to a quarter again; then the hint again, what a call waits there now) or a budget
            # token's wait of at most 0.1 s would pass the deadline: not before deadline - that.
            hint = max(MIN_RETRY_AFTER, error.retry_after)
            if took < UNARY_DEADLINE - max(2.25 * hint, 1 / RetryBudget.PER_SECOND) - 0.005:
                early.append({"took": took, "hint": error.retry_after})
        except RpcError as error:
            took = time.monotonic() - started
            outcomes[str(error.code)] += 1
            failed_at[str(error.code)].append(took)
            if str(error.code) != "DEADLINE_EXCEEDED" or took < UNARY_DEADLINE - 0.005:
                early.append({"took": took, "code": str(error.code)})  # type: ignore[dict-item]

    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    cpu_before = sum(os.times()[:2])
    calls: list[asyncio.Task[None]] = []
    begun = time.monotonic()
    last_sent = begun
    for k in range(int(rate * seconds)):
        delay = begun + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        calls.append(asyncio.create_task(one(k)))
        last_sent = time.monotonic()
    await asyncio.gather(*calls)
    took = time.monotonic() - begun
    retries, taken = budget.retries - retries_before, budget.taken - taken_before
    print(
        json.dumps(
            {
                "outcomes": dict(outcomes),
                "accepted": accepted,
                "early": early,
                "failed_min_ms": {k: pct(v, 0.0) for k, v in failed_at.items()},
                "retries": retries,
                "taken": taken,
                "budget_bound": round(RetryBudget.MAX_TOKENS + RetryBudget.PER_TAKEN * taken + RetryBudget.PER_SECOND * took),
                "cpu_s": round(sum(os.times()[:2]) - cpu_before, 2),
                "wall_s": round(took, 2),
                "first_sent": begun,
                "last_sent": last_sent,
            }
        ),
        flush=True,
    )
    await nc.close()


async def run_probe(url: str) -> None:
    """`--probe`: a call every `PROBE_EVERY` s from an otherwise idle process (default client, 1 s
    deadline) until stdin closes; prints (sent at, seconds, outcome) of each."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    for k in range(10):
        await client.ping(PingRequest(payload=f"w{k}"), timeout=5)
    print("ready", flush=True)
    seen: list[tuple[float, float, str]] = []
    calls: set[asyncio.Task[None]] = set()

    async def one(k: int) -> None:
        started = time.monotonic()
        try:
            await client.ping(PingRequest(payload=f"probe{k}"), timeout=UNARY_DEADLINE)
            outcome = "ok"
        except RpcError as error:
            outcome = str(error.code)
        seen.append((started, time.monotonic() - started, outcome))

    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    k = 0
    while not stdin_closed.done():
        task = asyncio.create_task(one(k))
        calls.add(task)
        task.add_done_callback(calls.discard)
        k += 1
        await asyncio.sleep(PROBE_EVERY)
    await asyncio.gather(*calls)
    await nc.close()
    print(json.dumps(seen), flush=True)


# --- starved, client, bidi ---------------------------------------------------------------------------


async def client_stream(client: StreamDemoServiceNatsClient, i: int, outcomes: collections.Counter[str]) -> None:
    try:
        async with await client.sum() as stream:
            for k in range(ITEMS):
                await stream.send(SumRequest(value=i * ITEMS + k))
                await asyncio.sleep(PACE)
            result = await stream.close_and_recv()
        outcomes["ok" if result.count == ITEMS else f"short: {result.count}"] += 1
    except RpcError as error:
        outcomes[f"{error.code}: {error.message[:60]}"] += 1


async def bidi_stream(client: StreamDemoServiceNatsClient, i: int, outcomes: collections.Counter[str]) -> None:
    got = 0
    try:
        async with await client.chat() as stream:

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
        outcomes["ok" if got == ITEMS else f"short: {got}"] += 1
    except RpcError as error:
        outcomes[f"{error.code}: {error.message[:60]}"] += 1


SHAPES: dict[str, Callable[[StreamDemoServiceNatsClient, int, collections.Counter[str]], Awaitable[None]]] = {
    "client": client_stream,
    "bidi": bidi_stream,
    "starved": paced,
}


async def run_shape(url: str, kind: str, n: int) -> None:
    """`n` streams of one shape at once (`starved`: then one call blocks the service's loop)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    client = StreamDemoServiceNatsClient(nc)
    meter = Meter()
    service = await service_meter(nc)
    meter.reset()
    base = meter.figures()
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    calls = [asyncio.create_task(SHAPES[kind](client, i, outcomes)) for i in range(n)]
    if kind == "starved":
        await asyncio.sleep(0.3)
        await client.ping(PingRequest(payload="block"), timeout=30)
    await asyncio.gather(*calls)
    wall = time.perf_counter() - started
    service_side = await service_meter(nc)
    print(
        json.dumps(
            {
                "n": n,
                "outcomes": dict(outcomes),
                "wall_s": round(wall, 2),
                "client": {"base_kib": base["rss_kib"], "peak_kib": meter.figures()["peak_kib"], "peak_open": n},
                "service": {"base_kib": service["rss_kib"], "peak_kib": service_side["peak_kib"], "peak_open": service_side["peak_open"]},
                "service_refused": service_side["refused"],
            }
        ),
        flush=True,
    )
    await nc.close()


# --- the parent ---------------------------------------------------------------------------------------

ME = str(Path(__file__).resolve())


class Procs:
    """The child processes of one scenario, ended (killed if need be) when it is over."""

    def __init__(self) -> None:
        self.all: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, ME, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.all.append(proc)
        return proc

    def service(self, url: str, options: dict[str, Any]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
        proc = self.start("--serve", url, json.dumps(options))
        assert proc.stdout is not None
        return proc, json.loads(proc.stdout.readline())

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()


def last_json(proc: subprocess.Popen[str], timeout: float) -> Any:
    """The last line a child prints before it ends, as JSON."""
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{proc.args} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def scenario_burst(url: str) -> dict[str, Any]:
    with Procs() as procs:
        procs.service(url, {})
        return last_json(procs.start("--client", url, "burst", json.dumps({"sizes": [200, 2000]})), 300)  # type: ignore[no-any-return]


def scenario_streams(url: str, n: int, n_idle: int) -> dict[str, Any]:
    """The loaded service and client, two victim services (killed, paused) with streams from the
    loaded client, two victim clients (killed, paused) with streams to the loaded service."""
    with Procs() as procs:
        procs.service(url, {})
        victims = {how: procs.service(url, {"victim": True, "serve": {"subject_prefix": f"victim_{how}"}})[0] for how in ("kill", "pause")}
        victim_clients = {}
        for group, how in enumerate(("kill", "pause"), start=1):
            heartbeat = PAUSE_HEARTBEAT if how == "pause" else DEFAULT_HEARTBEAT
            proc = procs.start("--victim-client", url, str(group), str(heartbeat))
            assert proc.stdout is not None
            proc.stdout.readline()
            victim_clients[how] = proc
        client = procs.start("--client", url, "streams", json.dumps({"n": n, "idle": n_idle, "victims": {how: f"victim_{how}" for how in victims}}))
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "paced"
        time.sleep(2.0)  # into the burst: both loaded processes busy
        lost_at: dict[str, float] = {}
        for how, sig in (("kill", signal.SIGKILL), ("pause", signal.SIGSTOP)):
            lost_at[how] = time.monotonic()
            victims[how].send_signal(sig)
            victim_clients[how].send_signal(sig)
            time.sleep(3.0)
        result: dict[str, Any] = last_json(client, 600)
    noticed: dict[str, Any] = {}
    for how in ("kill", "pause"):
        ends = result["lost_service"][how]
        gone = result["lost_client"].get(str(("kill", "pause").index(how) + 1))
        noticed[how] = {
            "service_lost": {"codes": sorted({code for code, _ in ends}), "noticed_s": round(max(at for _, at in ends) - lost_at[how], 2)},
            "client_lost": None if gone is None else round(gone - lost_at[how], 2),
        }
    result["lost"] = noticed
    del result["lost_service"], result["lost_client"]
    return result


def scenario_flood(url: str) -> dict[str, Any]:
    with Procs() as procs:
        service, ready = procs.service(url, {"cpu": CPU_PER_CALL})
        cap = last_json(procs.start("--unary-capacity", url), 60)["capacity_per_s"]
        probe = procs.start("--probe", url)
        assert probe.stdout is not None and probe.stdin is not None
        probe.stdout.readline()
        rate = cap * FLOOD_FACTOR / FLOOD_CLIENTS
        floods = [procs.start("--flood", url, str(rate), str(FLOOD_SECONDS), f"f{k}-") for k in range(FLOOD_CLIENTS)]
        for proc in floods:
            assert proc.stdout is not None
            proc.stdout.readline()
        rss_before = rss_kib(service.pid)
        cpu_before = cpu_s(service.pid)
        start_at = time.monotonic() + 1.0  # the probe sees a second of normal service first
        for proc in floods:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        results = [last_json(proc, 120) for proc in floods]
        service_cpu = cpu_s(service.pid) - cpu_before
        assert service.stdin is not None and service.stdout is not None
        service.stdin.write("figures\n")
        service.stdin.flush()
        refused = json.loads(service.stdout.readline())["refused"]
        time.sleep(2.0)
        samples = last_json(probe, 60)
        service_peak = rss_kib(service.pid, "VmHWM")
    outcomes: collections.Counter[str] = collections.Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    accepted = [t for r in results for t in r["accepted"]]
    flood_end = max(r["last_sent"] for r in results)
    normal = [s for at, s, outcome in samples if at < start_at - 0.05]
    normal_p99 = sorted(normal)[int(0.99 * len(normal))] if normal else 0.0
    slow = max(2 * normal_p99, normal_p99 + 0.002)
    # Back to normal: the first moment after which every probe call answers within `slow`.
    late = [at for at, s, outcome in samples if at >= start_at and (s > slow or outcome != "ok")]
    recovered = max(0.0, (max(late) + PROBE_EVERY if late else start_at) - flood_end)
    after = [s for at, s, outcome in samples if at > flood_end + 1.0]
    during = [s for at, s, outcome in samples if start_at <= at <= flood_end]
    return {
        "capacity_per_s": round(cap),
        "flood_per_s": round(cap * FLOOD_FACTOR),
        "clients": FLOOD_CLIENTS,
        "outcomes": dict(outcomes),
        "accepted_p50_ms": pct(accepted, 0.5),
        "accepted_p99_ms": pct(accepted, 0.99),
        "accepted_max_ms": pct(accepted, 1.0),
        "early_failures": [e for r in results for e in r["early"]][:20],
        "early_count": sum(len(r["early"]) for r in results),
        "failed_min_ms": [r["failed_min_ms"] for r in results],
        "retries": [[r["retries"], r["budget_bound"], r["taken"]] for r in results],
        "probe_normal_p50_ms": pct(normal, 0.5),
        "probe_normal_p99_ms": pct(normal, 0.99),
        "probe_during_p50_ms": pct(during, 0.5),
        "probe_during_p99_ms": pct(during, 0.99),
        "probe_after_1s_p50_ms": pct(after, 0.5),
        "probe_after_1s_p99_ms": pct(after, 0.99),
        "recovered_after_s": round(recovered, 3),
        "service_rss_kib": [rss_before, service_peak],
        "service_refused": refused,
        "cpu_s": {"service": round(service_cpu, 2), "flood clients": [r["cpu_s"] for r in results], "flood wall": max(r["wall_s"] for r in results)},
    }


def scenario_shape(url: str, kind: str, n: int) -> dict[str, Any]:
    with Procs() as procs:
        procs.service(url, {})
        return last_json(procs.start("--client", url, kind, json.dumps({"n": n})), 600)  # type: ignore[no-any-return]


def per_stream(side: dict[str, Any]) -> str:
    growth = side["peak_kib"] - side["base_kib"]
    return f"peak RSS +{growth / 1024:.1f} MiB over {side['peak_open']} open: {growth / max(1, side['peak_open']):.1f} KiB per stream"


def report(scenario: str, r: dict[str, Any]) -> list[str]:
    """A few lines of text per scenario (bench/overload.md)."""
    lines = [f"### {scenario}"]
    if scenario == "burst":
        for n, x in r["sizes"].items():
            lines.append(f"{n} unary calls at once: {x['outcomes']} in {x['wall_ms']} ms; service STATS {x['stats']}")
    elif scenario == "streams":
        p, i = r["paced"], r["idle"]
        cap = max(r["capacity_streams_per_s"].values())
        lines.append(
            f"{p['n']} paced streams: {p['outcomes']} in {p['wall_s']} s; N / capacity = {p['n'] / cap:.1f} s "
            f"(capacity {cap} streams/s, by concurrency {r['capacity_streams_per_s']}): {p['wall_s'] / (p['n'] / cap):.2f}x"
        )
        lines.append(f"  service STATS {p['stats']}, refusals by reason {p['service_refused']}; client retry budget {p['budget']}")
        lines.append(f"  [s, done, retries, waiting for a token] every 2 s: {p['timeline']}")
        lines.append(f"  client: {per_stream(p['client'])}; service: {per_stream(p['service'])}")
        lines.append(
            f"{i['n']} idle streams right after: {i['outcomes']} in {i['wall_s']} s; service STATS {i['stats']}, "
            f"peak open {i['service_peak_open']}, refusals by reason {i['service_refused']}"
        )
        for how, x in r["lost"].items():
            lines.append(f"lost peer ({how}) during the burst: the client noticed its service after {x['service_lost']}, the service freed its client's streams after {x['client_lost']} s")
    elif scenario == "flood":
        lines.append(
            f"capacity {r['capacity_per_s']} calls/s (1 ms CPU each), flood {r['flood_per_s']} calls/s from {r['clients']} processes for {FLOOD_SECONDS:g} s, deadline {UNARY_DEADLINE:g} s"
        )
        lines.append(
            f"{r['outcomes']}; accepted p50/p99/max {r['accepted_p50_ms']}/{r['accepted_p99_ms']}/{r['accepted_max_ms']} ms; "
            f"failed before the deadline's rule allowed: {r['early_count']} {r['early_failures'][:3]}; earliest failures (ms) {r['failed_min_ms']}"
        )
        lines.append(f"retries / budget bound / calls taken per client: {r['retries']}; service refusals by reason {r['service_refused']}")
        lines.append(
            f"probe p50/p99: before {r['probe_normal_p50_ms']}/{r['probe_normal_p99_ms']} ms, during {r['probe_during_p50_ms']}/{r['probe_during_p99_ms']} ms, "
            f"from 1 s after {r['probe_after_1s_p50_ms']}/{r['probe_after_1s_p99_ms']} ms; back to normal {r['recovered_after_s']} s after the last call was sent"
        )
        lines.append(f"service RSS {r['service_rss_kib'][0] / 1024:.0f} -> peak {r['service_rss_kib'][1] / 1024:.0f} MiB; CPU seconds during the flood {r['cpu_s']}")
    else:
        lines.append(f"{r['n']} streams: {r['outcomes']} in {r['wall_s']} s; refusals by reason {r['service_refused']}")
        lines.append(f"  client: {per_stream(r['client'])}; service: {per_stream(r['service'])}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="burst,streams,flood,starved")
    parser.add_argument("--streams", type=int, default=10_000, help="paced streams (and client/bidi streams)")
    parser.add_argument("--idle", type=int, default=2_000, help="idle streams right after the paced ones")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    lines = ["# Overload (bench/overload.py)", "", "default settings on both sides", ""]
    with NatsServer() as server:
        for scenario in args.only.split(","):
            started = time.monotonic()
            if scenario == "burst":
                result = scenario_burst(server.url)
            elif scenario == "streams":
                result = scenario_streams(server.url, args.streams, args.idle)
            elif scenario == "flood":
                result = scenario_flood(server.url)
            else:
                result = scenario_shape(server.url, scenario, 200 if scenario == "starved" else args.streams)
            result["scenario_s"] = round(time.monotonic() - started, 1)
            results[scenario] = result
            section = [*report(scenario, result), f"(scenario took {result['scenario_s']} s)"]
            print("\n".join(section), flush=True)
            lines += [*section, ""]
    (Path(__file__).parent / "overload.md").write_text("\n".join(lines) + "\n")
    (Path(__file__).parent / "overload.json").write_text(json.dumps(results, indent=2) + "\n")


CHILD_ROLES = ("--serve", "--victim-client", "--unary-capacity", "--flood", "--probe", "--client")


def child() -> None:
    """The child processes' entry points (the first argument says which)."""
    role, url, *rest = sys.argv[1:]
    if role == "--serve":
        asyncio.run(serve(url, json.loads(rest[0])))
    elif role == "--victim-client":
        asyncio.run(run_victim_client(url, int(rest[0]), float(rest[1])))
    elif role == "--unary-capacity":
        asyncio.run(run_capacity(url))
    elif role == "--flood":
        asyncio.run(run_flood(url, float(rest[0]), float(rest[1]), rest[2]))
    elif role == "--probe":
        asyncio.run(run_probe(url))
    elif role == "--client":
        scenario, options = rest[0], json.loads(rest[1])
        if scenario == "burst":
            print(json.dumps(asyncio.run(run_burst(url, options["sizes"]))), flush=True)
        elif scenario == "streams":
            asyncio.run(run_streams(url, options["n"], options["idle"], options["victims"]))
        else:
            asyncio.run(run_shape(url, scenario, options["n"]))


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in CHILD_ROLES:
        child()
    else:
        main()
