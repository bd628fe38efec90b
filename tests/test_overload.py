"""Under load nothing healthy dies (issue 19): liveness judged against what a side has read, admission
control that refuses new calls quickly (RESOURCE_EXHAUSTED with a retry hint) instead of slowing
or killing accepted ones, the client's gate at open, and retries of refused and idempotent calls.

Services that must be busy run in another process (tests/procs/busy_server.py), as deployed: a
busy loop in the same process would slow the test's client too. The full-size runs (10,000 streams,
a unary flood at 5x capacity) are `make bench-overload`; these are small versions of each.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Awaitable, Callable

import nats
import pytest
from conftest import helper_process, lose, needs_fast_paths, noticed_within, settle
from demo_service import Demo
from nats.aio.client import Client as NATS
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import betterproto_nats
from betterproto_nats import ErrorCode, Interceptor, Overloaded, RetryPolicy, RpcError
from betterproto_nats.health.admission import MAX_CALLERS, Admission, Callers, caller_of
from betterproto_nats.calling.refusals import RetryBudget
from betterproto_nats.net.transport import transport_of
from betterproto_nats.otel import MetricsInterceptor
from betterproto_nats.core.headers import RETRY_AFTER, error_from_headers, error_headers
from betterproto_nats.testing import NatsServer
from gen.fixtures.options.v1 import InventoryNatsMethods
from gen.streaming.v1 import (
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


def burn(seconds: float) -> None:
    """Work the CPU without giving the loop back (a handler or an application that computes)."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


@asynccontextmanager
async def busy_service(url: str, **options: Any) -> AsyncIterator[int]:
    """tests/procs/busy_server.py with `options`; yields its pid."""
    async with helper_process("busy_server.py", url, json.dumps(options), ready=b"ready") as proc:
        yield proc.pid


@asynccontextmanager
async def ballast(seconds: float) -> AsyncIterator[None]:
    """This process's loop works `seconds` of CPU in every turn while the block runs."""

    async def work() -> None:
        while True:
            burn(seconds)
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(work())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


async def count_up(client: StreamDemoServiceNatsClient, count: int, outcomes: Counter[str]) -> None:
    """One server stream, its outcome counted: ok, refused (before any message) or the error."""
    got = 0
    try:
        async for _ in client.count_up(CountUpRequest(count=count)):
            got += 1
        outcomes["ok" if got == count else f"short {got}"] += 1
    except Overloaded:
        outcomes["refused" if got == 0 else "refused late"] += 1
    except RpcError as error:
        outcomes[f"{error.code}: {error.message}"] += 1


# --- Liveness judged against what we have read --------------------------------------------------


async def test_heartbeats_queued_behind_a_backlog_are_not_silence(nats_server: NatsServer, nc: NATS) -> None:
    """A service whose loop reads slowly (it computes 20 ms in every turn) gets a flood of 3 MB from
    another connection: the client's heartbeats wait behind it on the service's socket for seconds,
    far beyond 3 intervals (0.3 s). The service judges silence only against what it has read, so no
    stream ends (before: every stream ended UNAVAILABLE "the client is unreachable")."""
    async with busy_service(nats_server.url, ballast=0.02, pace=0.05, serve={"max_loop_lag": None}):
        client = StreamDemoServiceNatsClient(nc, heartbeat=0.1)
        outcomes: Counter[str] = Counter()
        streams = [asyncio.create_task(count_up(client, 40, outcomes)) for _ in range(20)]
        flood = await nats.connect(nats_server.url, pending_size=64 << 20)
        try:
            await asyncio.sleep(0.2)
            junk = b"x" * 8192
            for _ in range(400):  # unanswerable requests (no reply subject) to an endpoint of the service
                await flood.publish("api.v1.stream.ping", junk)
            await flood.flush()
            await asyncio.wait_for(asyncio.gather(*streams), 60)
        finally:
            await flood.close()
        assert outcomes == {"ok": 20}


async def test_a_handler_that_blocks_the_service_for_2_s_ends_no_stream(nats_server: NatsServer, nc: NATS) -> None:
    """A CPU-bound handler keeps the service's loop from running for 2 s (no heartbeats go out, none
    are read) while 20 streams are open at the default heartbeat: a busy peer is not a dead one."""
    async with busy_service(nats_server.url, pace=0.05, block=2.0):
        client = StreamDemoServiceNatsClient(nc)
        outcomes: Counter[str] = Counter()
        streams = [asyncio.create_task(count_up(client, 60, outcomes)) for _ in range(20)]
        await asyncio.sleep(0.3)
        assert (await client.ping(PingRequest(payload="block"), timeout=30)).payload == "block"
        await asyncio.wait_for(asyncio.gather(*streams), 60)
        assert outcomes == {"ok": 20}


async def test_a_client_that_blocks_its_loop_for_2_s_loses_no_stream(nats_server: NatsServer, nc: NATS) -> None:
    """The other way round: the client's own loop is blocked for 2 s while its streams flow in."""
    async with busy_service(nats_server.url, pace=0.02):
        client = StreamDemoServiceNatsClient(nc)
        outcomes: Counter[str] = Counter()
        streams = [asyncio.create_task(count_up(client, 100, outcomes)) for _ in range(20)]
        await asyncio.sleep(0.3)
        burn(2.0)
        await asyncio.wait_for(asyncio.gather(*streams), 60)
        assert outcomes == {"ok": 20}


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_a_lost_service_is_noticed_while_the_client_is_saturated(nats_server: NatsServer, nc: NATS, how: str) -> None:
    """Dead-peer detection keeps its bounds while the survivor's loop computes 20 ms in every turn:
    a killed service is noticed at the next heartbeat, a paused one after three intervals."""
    async with helper_process("demo_server.py", nats_server.url, "idle", ready=b"ready") as proc:
        interval = 0.3
        client = StreamDemoServiceNatsClient(nc, heartbeat=interval) if how == "pause" else StreamDemoServiceNatsClient(nc)
        streams = [await client.count_up(CountUpRequest(count=1)) for _ in range(20)]
        for stream in streams:
            await stream.recv()

        async def ends(stream: Any) -> tuple[str, float]:
            try:
                while True:
                    await stream.recv()
            except RpcError as error:
                return error.code, time.monotonic()

        async with ballast(0.02):
            lost = lose(proc, how)
            ended = await asyncio.wait_for(asyncio.gather(*(ends(stream) for stream in streams)), 30)
        assert {code for code, _ in ended} == {ErrorCode.UNAVAILABLE}
        noticed = max(at for _, at in ended) - lost
        print(f"{how}: 20 streams ended after {noticed:.2f} s with the client saturated")
        assert noticed < noticed_within(how, interval) + 0.5  # + what the ballast holds each turn up
        for stream in streams:
            await stream.close()


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_a_lost_client_is_noticed_while_the_service_is_saturated(nats_server: NatsServer, server_nc: NATS, how: str) -> None:
    """The other way round: 20 streams of a client process that is killed or paused, the service's
    loop computing 20 ms in every turn: it frees them all within the same bounds."""

    class Idle(StreamDemoServiceNatsBase):
        def __init__(self) -> None:
            self.open = 0

        async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
            self.open += 1
            try:
                yield CountUpResponse(number=0)
                await asyncio.Event().wait()
            finally:
                self.open -= 1

    impl = Idle()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    try:
        interval = 0.3
        args = (str(interval) if how == "pause" else "1.0", "20")
        async with helper_process("demo_client.py", nats_server.url, *args, ready=b"streaming") as proc:
            assert impl.open == 20
            async with ballast(0.02):
                lost = lose(proc, how)
                await settle(lambda: impl.open == 0, timeout=10)
                freed = time.monotonic() - lost
        print(f"{how}: 20 streams freed after {freed:.2f} s with the service saturated")
        assert freed < noticed_within(how, interval) + 0.5
    finally:
        await server.stop(grace_period=0)


async def test_streams_that_keep_sending_carry_no_counts_in_heartbeats(nc: NATS, server_nc: NATS) -> None:
    """A shared heartbeat counts only the streams that went quiet: a stream that keeps sending needs no
    count (a lost message shows as a gap in the next), so 10,000 busy streams do not make every beat
    carry 10,000 lines. Once the streams are quiet, their counts follow."""
    release = asyncio.Event()

    class Paced(StreamDemoServiceNatsBase):
        async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
            for i in range(request.count):
                yield CountUpResponse(number=i)
                await asyncio.sleep(0.01)
            await release.wait()

    bodies: list[tuple[float, bytes]] = []

    async def record(msg: Any) -> None:
        if msg.headers and "Nats-Stream-Peer" in msg.headers and "Nats-Stream-Heartbeat" in msg.headers and msg.data:
            bodies.append((time.monotonic(), msg.data))

    tap = await server_nc.subscribe(">", cb=record)
    server = await betterproto_nats.serve(server_nc, Paced())
    try:
        client = StreamDemoServiceNatsClient(nc, heartbeat=0.2)  # beats every 0.1 s
        streams = [await client.count_up(CountUpRequest(count=60)) for _ in range(10)]
        started = time.monotonic()
        for stream in streams:  # 0.6 s of sending, a message every 10 ms per stream
            for _ in range(60):
                await stream.recv()
        quiet = time.monotonic()
        await settle(lambda: any(at > quiet + 0.1 for at, _ in bodies), timeout=5)
        sending = [body for at, body in bodies if started + 0.15 < at < quiet - 0.05]
        after = [body for at, body in bodies if at > quiet]
        assert not any(b" s" in body for body in sending), sending
        assert any(body.count(b" s") >= 10 for body in after), after
        release.set()
        for stream in streams:
            await stream.close()
    finally:
        release.set()
        await server.stop()
        await tap.unsubscribe()


# --- Admission control: refused at once, with a hint; accepted calls untouched ----------------------


class Holding(StreamDemoServiceNatsBase):
    """Every handler waits until `release` is set (so calls stay in progress); counts its calls."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered: Counter[str] = Counter()

    async def ping(self, request: PingRequest) -> PingResponse:
        self.entered["ping"] += 1
        await self.release.wait()
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        self.entered["count_up"] += 1
        await self.release.wait()
        yield CountUpResponse(number=1)

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        self.entered["sum"] += 1
        await self.release.wait()
        return SumResponse(total=sum([r.value async for r in requests]))

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        self.entered["chat"] += 1
        await self.release.wait()
        async for message in requests:
            yield message


async def _first_count(client: StreamDemoServiceNatsClient) -> Any:
    async with client.count_up(CountUpRequest(count=1), timeout=10) as stream:
        return await stream.recv()


async def _first_echo(client: StreamDemoServiceNatsClient) -> Any:
    async with await client.chat(timeout=10) as stream:
        await stream.send(ChatMessage(text="x"))
        return await stream.recv()


SHAPES: dict[str, Callable[[StreamDemoServiceNatsClient], Awaitable[Any]]] = {
    "ping": lambda c: c.ping(PingRequest(payload="p"), timeout=10),
    "count_up": _first_count,
    "sum": lambda c: c.sum([SumRequest(value=1)], timeout=10),
    "chat": _first_echo,
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_call_past_the_limit_is_refused_at_once_with_a_retry_hint(nc: NATS, server_nc: NATS, shape: str) -> None:
    """One call of each kind in progress fills the budget: the next is refused before its handler
    runs, as `Overloaded` (RESOURCE_EXHAUSTED) with a retry hint, at once (client streams and bidi
    used to wait a second in close for a confirmation that never comes); the first still completes."""
    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_streams=1, max_concurrent_unary=1)
    try:
        client = StreamDemoServiceNatsClient(nc, absorb_refusals=False)
        first = asyncio.create_task(SHAPES[shape](client))
        await settle(lambda: impl.entered[shape] == 1)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await SHAPES[shape](client)
        took = time.monotonic() - started
        assert refused.value.code == ErrorCode.RESOURCE_EXHAUSTED
        assert 0.05 <= refused.value.retry_after <= 5.0
        assert "in progress" in refused.value.message
        assert took < 0.5, took
        assert impl.entered[shape] == 1  # the refused call never reached the handler
        impl.release.set()
        await asyncio.wait_for(first, 10)
    finally:
        impl.release.set()
        await server.stop()


async def test_a_refusal_on_the_wire(nc: NATS, server_nc: NATS) -> None:
    """What a raw (Go) requester gets: the micro error pair and `Nats-Retry-After` in milliseconds."""
    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_unary=1)
    try:
        held = asyncio.create_task(StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="p")))
        await settle(lambda: impl.entered["ping"] == 1)
        answer = await nc.request("api.v1.stream.ping", bytes(PingRequest(payload="q")), timeout=5)
        assert answer.data == b""
        assert answer.headers is not None
        assert answer.headers["Nats-Service-Error-Code"] == "RESOURCE_EXHAUSTED"
        assert answer.headers["Nats-Service-Error"] == "1 unary calls already in progress"
        assert 50 <= int(answer.headers[RETRY_AFTER]) <= 5000
        impl.release.set()
        await held
    finally:
        impl.release.set()
        await server.stop()


class Echo(StreamDemoServiceNatsBase):
    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload)


async def test_a_lagging_service_refuses_new_calls_and_recovers_at_once(nc: NATS, server_nc: NATS) -> None:
    """While the service's loop runs 80 ms behind in every turn (something in the process computes),
    new calls are refused with a hint instead of waiting in line; once the loop is idle again, calls
    are taken at once. `$SRV` STATS and the metrics interceptor show the refusals."""
    reader = InMemoryMetricReader()
    metrics = MetricsInterceptor(meter_provider=MeterProvider(metric_readers=[reader]))
    server = await betterproto_nats.serve(server_nc, Echo(), interceptors=[metrics])
    try:
        client = StreamDemoServiceNatsClient(nc, absorb_refusals=False)
        outcomes: Counter[str] = Counter()
        async with ballast(0.08):
            await asyncio.sleep(0.2)  # the lag shows in the samples
            for i in range(5):
                try:
                    await client.ping(PingRequest(payload=str(i)), timeout=10)
                    outcomes["ok"] += 1
                except Overloaded as refused:
                    assert "event loop runs" in refused.message and refused.retry_after >= 0.1
                    outcomes["refused"] += 1
        assert outcomes == {"refused": 5}
        await asyncio.sleep(0.1)  # idle: the loop's lag samples come back down
        assert (await client.ping(PingRequest(payload="after"), timeout=5)).payload == "after"
        stats = json.loads((await nc.request(f"$SRV.STATS.{server.name}.{server.id}", b"", timeout=5)).data)
        data = next(e["data"] for e in stats["endpoints"] if e["name"] == "ping")
        assert data["refused"] == outcomes["refused"]
        assert data["max_loop_lag_ms"] == 50.0 and data["in_progress"] == 0 and data["max_concurrent"] == 10_000
        assert sum(server.refused.values()) == outcomes["refused"]
    finally:
        await server.stop()
    points = [
        point
        for resource in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "rpc.nats.calls.refused"
        for point in metric.data.data_points
    ]
    assert sum(p.value for p in points) == outcomes["refused"]
    assert {(p.attributes["rpc.nats.overloaded"], p.attributes["rpc.nats.refusal"]) for p in points} == {(True, "loop_lag")}


class Burning(StreamDemoServiceNatsBase):
    """A unary handler that computes for 20 ms without giving the loop back; counts its calls."""

    def __init__(self) -> None:
        self.ran = 0

    async def ping(self, request: PingRequest) -> PingResponse:
        self.ran += 1
        burn(0.02)
        return PingResponse(payload=request.payload)


async def test_a_burst_of_costly_calls_is_cut_once_it_has_kept_the_loop(nc: NATS, server_nc: NATS) -> None:
    """Twelve calls that each compute for 20 ms, read in one loop turn (the loop's lag cannot show
    them yet): the first run; once they have kept the loop for `max_loop_lag` (50 ms) the rest are
    refused before they start (`Overloaded`, never run). A client that absorbs refusals (the default)
    sends those again after the hint: all twelve answer, each run exactly once."""
    impl = Burning()
    server = await betterproto_nats.serve(server_nc, impl)
    try:
        for absorbing in (False, True):
            client = StreamDemoServiceNatsClient(nc, absorb_refusals=absorbing)
            assert (await client.ping(PingRequest(payload="warm"), timeout=5)).payload == "warm"
            impl.ran = 0
            server.refused.clear()
            outcomes = await asyncio.gather(
                *(client.ping(PingRequest(payload=str(k)), timeout=10) for k in range(12)), return_exceptions=True
            )
            answered = [o for o in outcomes if isinstance(o, PingResponse)]
            refused = [o for o in outcomes if isinstance(o, Overloaded)]
            assert len(answered) + len(refused) == 12, outcomes
            assert server.refused["loop_lag"] >= 1 and impl.ran == len(answered)  # a refused call never ran
            if absorbing:
                assert not refused and impl.ran == 12
            else:
                assert refused and all("kept its event loop" in o.message for o in refused), outcomes
                assert 3 <= len(answered) and server.refused["loop_lag"] == len(refused)
    finally:
        await server.stop()


async def test_a_unary_flood_at_5x_capacity(nats_server: NatsServer, nc: NATS) -> None:
    """Calls that cost the service 2 ms of CPU each (at most ~500/s) arrive at 2,500/s for 1.5 s,
    each with a 1 s deadline, from a default client (refusals absorbed): every call answers or fails
    only because its deadline passes (the next try would come too late, or no answer came); the
    retries stay within the connection's retry budget; the service's memory stays bounded, and once
    the flood stops it answers every call."""
    async with busy_service(nats_server.url, cpu_per_call=0.002) as pid:
        client = StreamDemoServiceNatsClient(nc)
        for _ in range(20):  # warm
            await client.ping(PingRequest(payload="w"), timeout=5)
        rss_before = rss_kib(pid)
        budget = RetryBudget.of(transport_of(nc))
        retries_before, taken_before = budget.retries, budget.taken
        outcomes: Counter[str] = Counter()
        answered: list[float] = []

        async def one(k: int) -> None:
            started = time.monotonic()
            try:
                await client.ping(PingRequest(payload=str(k)), timeout=1.0)
                outcomes["ok"] += 1
                answered.append(time.monotonic() - started)
            except Overloaded:
                outcomes["refused"] += 1
            except RpcError as error:
                outcomes[error.code] += 1

        calls = []
        begun = time.monotonic()
        for k in range(3750):
            delay = begun + k / 2500 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            calls.append(asyncio.create_task(one(k)))
        await asyncio.gather(*calls)
        took = time.monotonic() - begun
        rss_after = rss_kib(pid)
        retries, taken = budget.retries - retries_before, budget.taken - taken_before
        print(f"flood: {dict(outcomes)}, {retries} retries, {taken} calls taken, in {took:.1f} s, "
              f"answered p99 {sorted(answered)[len(answered) * 99 // 100] * 1000:.0f} ms, service RSS +{(rss_after - rss_before) / 1024:.1f} MiB")
        assert set(outcomes) <= {"ok", "refused", ErrorCode.DEADLINE_EXCEEDED}, outcomes  # only the deadline ends a call
        assert outcomes["ok"] >= 200
        assert retries <= RetryBudget.MAX_TOKENS + RetryBudget.PER_TAKEN * taken + RetryBudget.PER_SECOND * took
        assert rss_after - rss_before < 50 * 1024
        await asyncio.sleep(0.2)
        for k in range(20):  # recovered
            assert (await client.ping(PingRequest(payload=f"a{k}"), timeout=2)).payload == f"a{k}"


async def _server_stream(client: StreamDemoServiceNatsClient, i: int) -> bool:
    return [r.number async for r in client.count_up(CountUpRequest(start=i, count=10))] == list(range(i, i + 10))


async def _client_stream(client: StreamDemoServiceNatsClient, i: int) -> bool:
    async with await client.sum() as stream:
        for k in range(10):
            await stream.send(SumRequest(value=k))
            await asyncio.sleep(0.05)
        return (await stream.close_and_recv()).total == 45


async def _bidi(client: StreamDemoServiceNatsClient, i: int) -> bool:
    async with await client.chat() as stream:
        echoes = []
        for k in range(10):
            await stream.send(ChatMessage(text=f"{i}:{k}"))
            echoes.append((await stream.recv()).text)
            await asyncio.sleep(0.05)
        await stream.close_send()
        return echoes == [f"{i}:{k}" for k in range(10)]


@pytest.mark.parametrize("shape", [_server_stream, _client_stream, _bidi], ids=["server", "client", "bidi"])
async def test_many_paced_streams_all_complete(
    nats_server: NatsServer, nc: NATS, shape: Callable[[StreamDemoServiceNatsClient, int], Awaitable[bool]]
) -> None:
    """600 streams at once, 10 messages each way 50 ms apart, from a default client against a service
    in another process: every stream completes with all its messages (a refusal at open is absorbed
    by the client: sent again after the hint); none fails."""
    async with busy_service(nats_server.url, pace=0.05, serve={"max_concurrent_streams": 25_000}):
        client = StreamDemoServiceNatsClient(nc)
        outcomes: Counter[str] = Counter()

        async def one(i: int) -> None:
            try:
                outcomes["ok" if await shape(client, i) else "wrong"] += 1
            except RpcError as error:
                outcomes[f"{error.code}: {error.message}"] += 1

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(600))), 120)
        print(dict(outcomes))
        assert outcomes == {"ok": 600}, outcomes


async def service_stats(nc: NATS) -> dict[str, dict[str, Any]]:
    """The `data` of each endpoint in `$SRV` STATS of the (one) service on the NATS server."""
    stats = json.loads((await nc.request("$SRV.STATS", b"", timeout=5)).data)
    return {e["name"]: e["data"] for e in stats["endpoints"]}


@pytest.mark.parametrize("count", [200, 2000])
async def test_a_burst_of_cheap_unary_calls_is_taken_whole(nats_server: NatsServer, nc: NATS, count: int) -> None:
    """A default client gathers `count` unary calls at once against a service in another process
    whose handler answers at once: all succeed, and the service refuses none, or next to none when
    the machine is busy elsewhere (a healthy service is not at capacity because many calls are in
    progress)."""
    async with busy_service(nats_server.url):
        client = StreamDemoServiceNatsClient(nc)
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.ping(PingRequest(payload=str(i)), timeout=30) for i in range(count))), 60
        )
        assert [r.payload for r in replies] == [str(i) for i in range(count)]
        ping = (await service_stats(nc))["ping"]
        print(ping)
        # None refused on a machine that runs only this (`make bench-overload`: 0 of 2,000); another
        # process on the two cores lags the service's loop now and then: a few, all absorbed.
        assert ping["refused"] <= count // 20 and ping["retried"] == ping["refused"], ping


async def test_idle_streams_after_a_burst_are_all_taken(nats_server: NatsServer, nc: NATS) -> None:
    """Right after a burst of 500 paced streams, 300 idle ones (a message, then a second of silence,
    as watch streams are) open at once from a default client: all end correctly, with their messages,
    and the service refuses none, or next to none when the machine is busy elsewhere. An idle stream
    costs the loop nothing, so nothing counts it against the service's capacity, and the client's
    opens wait for the service's answers (`OpenWindow`) instead of lagging its loop all at once;
    what a busy machine still makes the service refuse, the client absorbs. Full size and the
    refusal counts: `make bench-overload`."""
    async with busy_service(nats_server.url, pace=0.05, idle=1.0, serve={"max_concurrent_streams": 25_000}):
        client = StreamDemoServiceNatsClient(nc)
        burst = await asyncio.wait_for(asyncio.gather(*(_server_stream(client, i) for i in range(500))), 60)
        assert all(burst)

        async def idle(i: int) -> list[int]:
            return [r.number async for r in client.count_up(CountUpRequest(start=1_000_000 + i, count=2), timeout=30)]

        idled = await asyncio.wait_for(asyncio.gather(*(idle(i) for i in range(300))), 60)
        assert idled == [[1_000_000 + i, 1_000_001 + i] for i in range(300)]
        count_up = (await service_stats(nc))["count_up"]
        print(count_up)
        # 0 measured (was 100-500 of 2,000 before the window); a few, all absorbed, on a busy machine
        assert count_up["refused"] <= 15 and count_up["retried"] == count_up["refused"], count_up


async def test_the_client_waits_at_open_while_its_own_loop_lags(nc: NATS, server_nc: NATS) -> None:
    """A client with a stream open whose loop runs far behind opens no more streams: opening waits,
    and within a short deadline ends as `Overloaded` raised by the client itself, with nothing sent;
    once the loop is idle again, streams open at once."""
    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    try:
        client = StreamDemoServiceNatsClient(nc)
        first = await client.count_up(CountUpRequest(count=1), timeout=10)
        await settle(lambda: impl.entered["count_up"] == 1)
        async with ballast(0.08):
            await asyncio.sleep(0.2)  # the lag shows in the samples
            with pytest.raises(Overloaded) as refused:
                await client.count_up(CountUpRequest(count=1), timeout=0.3)
            assert "the client is overloaded" in refused.value.message
            assert impl.entered["count_up"] == 1
        impl.release.set()
        assert [r.number async for r in first] == [1]
        await asyncio.sleep(0.1)
        assert [r.number async for r in client.count_up(CountUpRequest(count=1), timeout=5)] == [1]
    finally:
        impl.release.set()
        await server.stop()


# --- Retries of refused and idempotent calls --------------------------------------------------------


class Attempts(Interceptor):
    """Counts the tries a client makes."""

    def __init__(self) -> None:
        self.started = 0

    async def start(self, call: Any) -> None:
        self.started += 1


@pytest.mark.parametrize("trusted", [False, True])
async def test_a_refused_call_is_retried_after_the_hint(nc: NATS, server_nc: NATS, trusted: bool) -> None:
    """A client with a RetryPolicy sends a refused call again after the service's hint (plus jitter):
    it succeeds once the call in progress is done. Only a call safe to repeat: an idempotent one, or
    any call of a queue group's when the policy trusts refusals (tests/test_forged_refusals.py)."""
    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_unary=1)
    try:
        attempts = Attempts()
        policy = RetryPolicy(attempts=10, initial_backoff=0.01, trust_refusals=trusted)
        client = StreamDemoServiceNatsClient(nc, retry=policy, interceptors=[attempts], absorb_refusals=False)
        held = asyncio.create_task(client.ping(PingRequest(payload="held"), timeout=10))
        await settle(lambda: impl.entered["ping"] == 1)
        retried = asyncio.create_task(client.ping(PingRequest(payload="again"), timeout=10, idempotent=not trusted))
        await settle(lambda: attempts.started >= 3)  # the held call and two tries of the other
        impl.release.set()
        assert (await retried).payload == "again"
        assert (await held).payload == "held"
        assert impl.entered["ping"] == 2
    finally:
        impl.release.set()
        await server.stop()


@pytest.mark.parametrize("idempotent", [False, True])
async def test_only_idempotent_calls_are_retried_when_unavailable(nc: NATS, idempotent: bool) -> None:
    """Nobody serves: UNAVAILABLE may mean the call never arrived, or that it ran and the answer was
    lost, so only a call marked idempotent is tried again (here: all 3 tries), and never past its
    deadline."""
    attempts = Attempts()
    client = StreamDemoServiceNatsClient(nc, retry=RetryPolicy(attempts=3, initial_backoff=0.01), interceptors=[attempts])
    with pytest.raises(RpcError) as failed:
        await client.ping(PingRequest(payload="p"), timeout=5, idempotent=idempotent)
    assert failed.value.code == ErrorCode.UNAVAILABLE
    assert attempts.started == (3 if idempotent else 1)


def test_the_idempotency_option_reaches_the_method_descriptors() -> None:
    """`option idempotency_level = IDEMPOTENT` (or NO_SIDE_EFFECTS) marks a unary method; on a stream
    it changes nothing (streams are never retried by the runtime)."""
    assert InventoryNatsMethods.echo.idempotent and InventoryNatsMethods.slow.idempotent
    assert not InventoryNatsMethods.slower.idempotent
    assert not InventoryNatsMethods.slow_stream.idempotent


# --- The pieces, on plain values ----------------------------------------------------------------------


def test_the_heaviest_callers_are_refused_first() -> None:
    """While the service sheds load, a caller that sent at least its share of the requests is heavy;
    a lighter one still gets in; one caller alone is heavy; past MAX_CALLERS a new one is heavy."""
    callers = Callers()
    assert callers.heavy("_INBOX.a")  # alone: its share is everything
    for _ in range(50):
        assert callers.heavy("_INBOX.a")
    assert not callers.heavy("_INBOX.b")  # 1 of 52 requests, 2 callers: under its share
    assert callers.heavy("_INBOX.a")
    callers.clear()
    for k in range(MAX_CALLERS):
        callers.heavy(f"_INBOX.c{k}")
    assert callers.heavy("_INBOX.new") and "_INBOX.new" not in callers.counts
    assert caller_of("_INBOX.abc.17") == "_INBOX.abc" and caller_of("") == ""


class FakeLag:
    """A `LoopLag` whose recent samples say what the test sets (and no sample is overdue)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.due = 0.0

    @property
    def recent(self) -> float:
        return self.seconds

    def clock(self) -> float:
        return 0.0


def test_admission_refuses_only_what_would_hurt() -> None:
    """Calls in progress are no measure of load: thousands are taken while the loop keeps up (only a
    configured ceiling refuses); while it lags past `max_loop_lag` the heaviest caller is refused and
    a light one taken; past twice that, everybody is refused; once it keeps up, everyone is taken."""
    admission = Admission(object(), max_streams=25_000, max_unary=1000, max_loop_lag=0.05, max_outbound_bytes=0)  # type: ignore[arg-type]
    lag = FakeLag(0.001)
    admission.lag = lag  # type: ignore[assignment]
    typical = lambda: 0.001  # noqa: E731
    assert admission.refusal(False, 10_000, typical, "_INBOX.a.1") is None
    assert admission.refusal(True, 999, typical, "_INBOX.a.1") is None
    refused = admission.refusal(True, 1000, typical, "_INBOX.a.1")
    assert refused is not None and refused.reason == "concurrency"
    lag.seconds = 0.08
    for k in range(20):
        refused = admission.refusal(True, 10, typical, f"_INBOX.heavy.{k}")
        assert refused is not None and refused.reason == "loop_lag"
    assert admission.refusal(True, 10, typical, "_INBOX.light.1") is None
    lag.seconds = 0.11
    assert admission.refusal(True, 10, typical, "_INBOX.other.1") is not None
    lag.seconds = 0.01
    assert admission.refusal(True, 10, typical, "_INBOX.heavy.99") is None and not admission.callers.counts


def test_retry_hints_from_the_wire_are_parsed_strictly() -> None:
    def error(value: str) -> RpcError | None:
        return error_from_headers({"Nats-Service-Error-Code": "RESOURCE_EXHAUSTED", "Nats-Service-Error": "busy", RETRY_AFTER: value})

    hinted = error("250")
    assert isinstance(hinted, Overloaded) and hinted.retry_after == 0.25
    capped = error("9" * 18)
    assert isinstance(capped, Overloaded) and capped.retry_after == 5.0
    for junk in ("", "-1", "1.5", "²", "1" * 19, "0x10"):
        plain = error(junk)
        assert type(plain) is RpcError and plain.retry_after is None, junk
    other = error_from_headers({"Nats-Service-Error-Code": "INTERNAL", RETRY_AFTER: "100"})
    assert type(other) is RpcError and other.retry_after is None
    assert error_headers("RESOURCE_EXHAUSTED", "x", 0.0504)[RETRY_AFTER] == "50"
    assert RETRY_AFTER not in error_headers("RESOURCE_EXHAUSTED", "x")


def test_retry_policy_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.3)
    assert all(0.0 <= policy.delay(1, None) <= 0.1 for _ in range(100))
    assert all(0.5 <= policy.delay(5, 0.5) <= 0.8 for _ in range(100))  # the hint, plus at most the cap
    assert policy.retries(Overloaded("busy", retry_after=0.1), idempotent=True)
    assert not policy.retries(Overloaded("busy", retry_after=0.1), idempotent=False)  # a peer's claim only
    assert not policy.retries(RpcError(ErrorCode.UNAVAILABLE), idempotent=False)
    assert policy.retries(RpcError(ErrorCode.UNAVAILABLE), idempotent=True)
    assert not policy.retries(RpcError(ErrorCode.DEADLINE_EXCEEDED), idempotent=True)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# --- The outgoing buffer: a backlog only while the network takes no more ------------------------------


@needs_fast_paths
async def test_a_buffer_filled_within_one_turn_is_no_backlog(server_nc: NATS) -> None:
    """A producer that queues more than `max_outbound_bytes` within one loop turn (a fast download
    does every turn) on a healthy connection: nats-py writes it at the next turn, and new calls are
    taken meanwhile (counted as a backlog, it refused every other call during large downloads)."""
    from betterproto_nats.net.nats_fast import publish_nowait

    server = await betterproto_nats.serve(server_nc, Demo(), max_loop_lag=None)
    try:
        limit = server.admission.max_outbound_bytes
        assert limit is not None
        chunk = b"x" * 60_000
        while server_nc._pending_data_size <= limit:
            assert publish_nowait(server_nc, "nobody.listens", chunk, None)
        assert server.admission.refusal(True, 0, lambda: 0.0) is None
        await StreamDemoServiceNatsClient(server_nc).ping(PingRequest(payload="p"), timeout=5)
    finally:
        await server.stop()


@needs_fast_paths
async def test_a_backlog_the_network_does_not_take_refuses_new_calls() -> None:
    """The NATS server stops reading (paused): what the service publishes backs up behind its socket,
    and new calls are refused ("outbound") until the server reads again and the backlog is written."""
    from betterproto_nats.net.nats_fast import publish_nowait

    paused = NatsServer().start()
    conn = await nats.connect(paused.url, ping_interval=60)
    server = await betterproto_nats.serve(conn, Demo(), max_loop_lag=None)
    assert paused.process is not None
    try:
        limit = server.admission.max_outbound_bytes
        assert limit is not None
        paused.process.send_signal(signal.SIGSTOP)
        chunk = b"x" * 60_000
        give_up = time.monotonic() + 20
        while (refusal := server.admission.refusal(True, 0, lambda: 0.0)) is None:
            assert time.monotonic() < give_up, "the socket never backed up"
            publish_nowait(conn, "nobody.listens", chunk, None)  # False once nats-py's buffer is full
            await asyncio.sleep(0)  # the flusher writes what it can
        assert refusal.reason == "outbound" and conn._pending_data_size > limit
        paused.process.send_signal(signal.SIGCONT)
        await settle(lambda: server.admission.refusal(True, 0, lambda: 0.0) is None, timeout=20)
    finally:
        paused.process.send_signal(signal.SIGCONT)
        await server.stop()
        await conn.close()
        paused.stop()
