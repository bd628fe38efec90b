"""Refusals re-run nothing (issue 25, item 5): a `RESOURCE_EXHAUSTED` + `Nats-Retry-After` answer is
a peer's claim that the call did not run. NATS gives a request to one member of each queue group and
to every other subscriber, so a third party (or a busy instance without a queue group) may refuse a
call that another receiver runs. A `RetryPolicy` therefore sends a refused call again only when it is
idempotent, or when the deployment vouches for one receiver (`trust_refusals`) and the proto keeps the
queue group; every wait between tries is capped, with or without a deadline; a hint from the wire is
clamped where it is parsed, and one in a request means nothing to a service.

Everything runs against a real nats-server; the forger is a raw nats-py subscriber.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
from conftest import connect, settle
from demo_service import Demo
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import betterproto_nats
from betterproto_nats import ErrorCode, Overloaded, RetryPolicy, RpcError, current_call
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.core.headers import MAX_RETRY_AFTER_MS, RETRY_AFTER, error_from_headers, error_headers
from betterproto_nats.testing import NatsServer
from gen.fixtures.options.v1 import Delay, EchoMessage, InventoryNatsClient
from gen.streaming.v1 import (
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)

PING = "api.v1.stream.ping"


class Counted(Demo):
    """Ping takes 30 ms of work and counts how often it ran; records the headers it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0
        self.running = 0
        self.work = 0.03

    async def ping(self, request: PingRequest) -> PingResponse:
        self.runs += 1
        self.running += 1
        self.headers.append(dict(current_call().headers))
        try:
            await asyncio.sleep(self.work)  # the handler's work
            return PingResponse(payload=request.payload)
        finally:
            self.running -= 1


class Forger:
    """A raw subscriber (no queue group) that answers every request at once with a refusal."""

    def __init__(self, conn: NATS, retry_after: str = "0") -> None:
        self.conn = conn
        self.seen = 0
        self.headers = error_headers(ErrorCode.RESOURCE_EXHAUSTED, "forged: busy")
        self.headers[RETRY_AFTER] = retry_after

    async def answer(self, msg: Msg) -> None:
        self.seen += 1
        if msg.reply:
            await self.conn.publish(msg.reply, b"", headers=self.headers)


@asynccontextmanager
async def forging(nats_server: NatsServer, subject: str, retry_after: str = "0") -> AsyncIterator[Forger]:
    """A `Forger` on its own connection, subscribed to `subject` before the block runs."""
    conn = await connect(nats_server.url)
    forger = Forger(conn, retry_after)
    try:
        await conn.subscribe(subject, cb=forger.answer)
        assert await flush_ordered(conn)  # (nats-py's flush() may overtake the SUB)
        yield forger
    finally:
        await conn.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_forged_refusal_beside_a_real_service_reruns_no_call(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, idempotent: bool
) -> None:
    """The forger refuses instantly while the real service (queue group on) runs each call for 30 ms.
    With the client's `RetryPolicy` alone (absorbing refusals turned off), 10 non-idempotent calls
    run at most 10 times (none is sent again); an idempotent call is still retried after a refusal,
    as before (so the forger does win the race here)."""
    impl = Counted()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)  # (never refuses by itself)
    try:
        async with forging(nats_server, PING) as forger:
            client = StreamDemoServiceNatsClient(nc, retry=RetryPolicy(attempts=3, initial_backoff=0.0), absorb_refusals=False)
            calls = [client.ping(PingRequest(payload=str(i)), timeout=5, idempotent=idempotent) for i in range(10)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            refused = [o for o in outcomes if isinstance(o, Overloaded)]
            assert all(isinstance(o, (PingResponse, Overloaded)) for o in outcomes), outcomes
            # every request the client sent reached the service too: wait until all have run
            await settle(lambda: impl.runs == forger.seen and impl.running == 0, timeout=10)
            if idempotent:
                assert forger.seen > 10  # refusals were retried
            else:
                assert forger.seen == 10 and len(refused) >= 1  # the forger won, and nothing was re-sent
                assert impl.runs <= 10
    finally:
        await server.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("work", [0.03, 0.3])
async def test_a_default_client_absorbs_a_forged_refusal_and_runs_each_call_once(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, work: float
) -> None:
    """A default client (refusals absorbed) beside the forger: each of 10 non-idempotent calls gets
    the real service's answer, and the handler runs exactly once per call. With 30 ms of work the real
    answer comes while the client waits out the forger's hint (nothing is sent again); with 300 ms the
    client sends again to the same reply subject, marked `Nats-Retry`, and the service, which took
    the call, drops the retry."""
    impl = Counted()
    impl.work = work  # type: ignore[attr-defined]
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    try:
        async with forging(nats_server, PING) as forger:
            client = StreamDemoServiceNatsClient(nc)
            outcomes = await asyncio.gather(*(client.ping(PingRequest(payload=str(i)), timeout=10) for i in range(10)), return_exceptions=True)
            assert [o.payload for o in outcomes if isinstance(o, PingResponse)] == [str(i) for i in range(10)], outcomes
            await settle(lambda: impl.running == 0)
            assert impl.runs == 10
            await flush_ordered(nc)  # every retry reached the NATS server: both receivers get each
            stats = json.loads((await nc.request(f"$SRV.STATS.{server.name}.{server.id}", b"", timeout=5)).data)
            retried = next(e["data"]["retried"] for e in stats["endpoints"] if e["name"] == "ping")
            await settle(lambda: forger.seen - 10 >= retried)  # (the forger reads on a connection of its own)
            assert retried == forger.seen - 10  # each retry reached the service too, which dropped it
            if work > 0.1:
                assert retried > 0  # the real answer came after the forger's hint: sent again
    finally:
        await server.stop()


@pytest.mark.timeout(30)
async def test_a_refused_call_is_not_absorbed_where_the_proto_turns_the_queue_group_off(nats_server: NatsServer, nc: NATS) -> None:
    """`Solo` serves without a queue group (every instance runs every call): a refusal of its
    non-idempotent call is raised at once, never sent again; a client or a call may opt out too."""
    async with forging(nats_server, "shop.inventory.solo") as forger:
        client = InventoryNatsClient(nc)
        with pytest.raises(Overloaded):
            await client.solo(EchoMessage(text="x"), timeout=5)
        assert forger.seen == 1
    async with forging(nats_server, PING) as forger:
        with betterproto_nats.raise_refusals(), pytest.raises(Overloaded):
            await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="p"), timeout=5)
        with pytest.raises(Overloaded):
            await StreamDemoServiceNatsClient(nc, absorb_refusals=False).ping(PingRequest(payload="p"), timeout=5)
        assert forger.seen == 2


@pytest.mark.timeout(30)
async def test_an_absorbed_refusal_gives_up_before_the_deadline(nats_server: NatsServer, nc: NATS) -> None:
    """Only the forger answers: a default client sends the call again (same reply subject, marked
    `Nats-Retry`) until a wait would pass the call's deadline, then raises the last refusal."""
    async with forging(nats_server, PING) as forger:
        started = time.monotonic()
        with pytest.raises(Overloaded):
            await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="p"), timeout=1.0)
        assert time.monotonic() - started < 1.1
        assert 2 <= forger.seen <= 21  # a try at most every MIN_RETRY_AFTER (50 ms)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("method, resent", [("slower", True), ("solo", False)])
async def test_trusted_refusals_are_retried_only_where_the_proto_keeps_the_queue_group(
    nats_server: NatsServer, nc: NATS, method: str, resent: bool
) -> None:
    """With `trust_refusals` the deployment vouches for one receiver per call: a refused call that is
    not idempotent is sent again when its service serves it in a queue group (`Slower`), never when the
    proto turns the queue group off (`Solo`: every instance gets every call)."""
    async with forging(nats_server, f"shop.inventory.{method}") as forger:
        client = InventoryNatsClient(nc, retry=RetryPolicy(attempts=3, initial_backoff=0.0, trust_refusals=True), absorb_refusals=False)
        with pytest.raises(Overloaded):
            if method == "slower":
                await client.slower(Delay(seconds=0.0), timeout=5)
            else:
                await client.solo(EchoMessage(text="x"), timeout=5)
        assert forger.seen == (3 if resent else 1)


@pytest.mark.timeout(30)
async def test_a_huge_hint_without_a_deadline_waits_at_most_max_delay(nats_server: NatsServer, nc: NATS) -> None:
    """A peer asks for an 11-day pause (18 digits of ms) on a call without a deadline: the hint is
    clamped where it is parsed (5 s), and the policy's `max_delay` caps the wait between tries."""
    async with forging(nats_server, PING, retry_after="9" * 18) as forger:
        client = StreamDemoServiceNatsClient(nc, retry=RetryPolicy(attempts=2, max_delay=0.2), timeout=None, absorb_refusals=False)
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            await client.ping(PingRequest(payload="p"), idempotent=True)
        elapsed = time.monotonic() - started
        assert refused.value.retry_after == MAX_RETRY_AFTER_MS / 1000 == 5.0
        assert forger.seen == 2
        assert 0.2 <= elapsed < 2.0, elapsed


@pytest.mark.timeout(30)
async def test_a_retry_hint_in_a_request_means_nothing_to_a_service(nc: NATS, server_nc: NATS) -> None:
    """A caller's `Nats-Retry-After` (with a refusal's error pair beside it) is neither obeyed nor shown
    to the handler: the call runs and is answered as any other."""
    impl = Counted()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    try:
        forged = {**error_headers(ErrorCode.RESOURCE_EXHAUSTED, "x"), RETRY_AFTER: "99999", "X-Ok": "1"}
        answer = await nc.request(PING, bytes(PingRequest(payload="hi")), timeout=5, headers=forged)
        assert error_from_headers(answer.headers) is None
        assert PingResponse.parse(answer.data).payload == "hi"
        assert impl.runs == 1 and impl.headers == [{"X-Ok": "1"}]
    finally:
        await server.stop()


# --- The pieces, on plain values ----------------------------------------------------------------------


def test_retry_hints_from_the_wire_are_clamped() -> None:
    """Huge: clamped to 5 s; negative, NaN, infinite or otherwise not plain digits: no hint at all (a
    plain `RpcError`, which no policy retries unless the call is idempotent and lists the code)."""

    def error(value: str) -> RpcError | None:
        return error_from_headers({"Nats-Service-Error-Code": "RESOURCE_EXHAUSTED", "Nats-Service-Error": "busy", RETRY_AFTER: value})

    for huge in ("9" * 18, "5001", "60000"):
        capped = error(huge)
        assert isinstance(capped, Overloaded) and capped.retry_after == 5.0, huge
    assert (hinted := error("4999")) is not None and hinted.retry_after == 4.999
    for junk in ("-1", "-0", "NaN", "nan", "inf", "-inf", "1e9", "1.5", " 5"):
        plain = error(junk)
        assert type(plain) is RpcError and plain.retry_after is None, junk
    for seconds, sent in ((math.nan, "0"), (-1.0, "0"), (math.inf, "5000"), (1e308, "5000"), (-math.inf, "0"), (0.25, "250")):
        assert error_headers("RESOURCE_EXHAUSTED", "x", seconds)[RETRY_AFTER] == sent, seconds


def test_every_wait_is_capped_whatever_the_hint() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=100.0, multiplier=1e6, max_delay=0.5)
    for hint in (None, 0.0, 0.3, 1e9, math.inf, math.nan, -5.0):
        for retry in (1, 2, 10, 10_000):
            assert 0.0 <= policy.delay(retry, hint) <= 0.5, (hint, retry)
    assert RetryPolicy().max_delay == 5.0
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(ValueError):
            RetryPolicy(max_delay=bad)
        with pytest.raises(ValueError):
            RetryPolicy(initial_backoff=bad)


def test_which_failures_are_retried() -> None:
    refused = Overloaded("busy", retry_after=0.1)
    unavailable = RpcError(ErrorCode.UNAVAILABLE)
    policy, trusting = RetryPolicy(), RetryPolicy(trust_refusals=True)
    assert policy.retries(refused, idempotent=True) and policy.retries(unavailable, idempotent=True)
    assert not policy.retries(refused, idempotent=False, queue_group=True)  # a claim the client cannot check
    assert trusting.retries(refused, idempotent=False, queue_group=True)
    assert not trusting.retries(refused, idempotent=False, queue_group=False)
    assert not trusting.retries(unavailable, idempotent=False, queue_group=True)
    assert not policy.retries(RpcError(ErrorCode.RESOURCE_EXHAUSTED), idempotent=False, queue_group=True)


class CountedStreams(Counted):
    """Counts how often the stream handlers ran."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, int] = {"count_up": 0, "sum": 0}

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        self.streams["count_up"] += 1
        async for response in super().count_up(request):
            yield response

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        self.streams["sum"] += 1
        return await super().sum(requests)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("endpoint", ["count_up", "sum"])
async def test_a_default_client_absorbs_a_forged_refusal_of_a_stream(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, endpoint: str
) -> None:
    """The forger refuses every stream at once beside the real service: a default client's server
    stream (the refusal arrives on its inbox) and client stream (on the handshake's reply) are taken
    by the real service, each handler run once per call, with all their messages."""
    impl = CountedStreams()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    try:
        async with forging(nats_server, f"api.v1.stream.{endpoint}") as forger:
            client = StreamDemoServiceNatsClient(nc)
            for i in range(5):
                if endpoint == "count_up":
                    got = [r.number async for r in client.count_up(CountUpRequest(start=i, count=3), timeout=10)]
                    assert got == [i, i + 1, i + 2]
                else:
                    assert (await client.sum([SumRequest(value=i), SumRequest(value=1)], timeout=10)).total == i + 1
            assert impl.streams[endpoint] == 5 and forger.seen >= 5
    finally:
        await server.stop()


class SteppedCountUp(Demo):
    """CountUp sends its first number, then waits for `go` before the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        yield CountUpResponse(number=request.start)
        await self.go.wait()
        for number in range(request.start + 1, request.start + request.count):
            yield CountUpResponse(number=number)


@pytest.mark.timeout(30)
async def test_a_refusal_after_the_service_took_the_stream_is_not_its_end(nats_server: NatsServer, nc: NATS, server_nc: NATS) -> None:
    """A forger's refusal that reaches a server stream's inbox after the real service's first message
    (its answer came first) is another receiver's: the stream goes on to its real end."""
    impl = SteppedCountUp()
    server = await betterproto_nats.serve(server_nc, impl, max_loop_lag=None)
    conn = await connect(nats_server.url)
    requests: list[Msg] = []
    arrived = asyncio.Event()

    async def hold(msg: Msg) -> None:
        requests.append(msg)
        arrived.set()

    try:
        await conn.subscribe("api.v1.stream.count_up", cb=hold)
        assert await flush_ordered(conn)
        stream = StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(start=7, count=3), timeout=10)
        got = []
        async for response in stream:
            got.append(response.number)
            if len(got) == 1:  # the service's answer came first: now the forger's refusal, then the rest
                await asyncio.wait_for(arrived.wait(), 5)
                forged = error_headers(ErrorCode.RESOURCE_EXHAUSTED, "forged: busy late")
                forged[RETRY_AFTER] = "0"
                inbox = (requests[0].headers or {}).get("Reply-To") or requests[0].reply
                await conn.publish(inbox, b"", headers={**forged, "Nats-Stream-End": "true", "Nats-Stream-Count": "0"})
                assert await flush_ordered(conn)
                impl.go.set()
        assert got == [7, 8, 9]
    finally:
        await conn.close()
        await server.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("endpoint", ["ping", "count_up", "sum"])
async def test_a_call_past_a_ceiling_waits_for_room_instead_of_failing(nc: NATS, server_nc: NATS, endpoint: str) -> None:
    """`max_concurrent_unary=1` / `max_concurrent_streams=1` and one call held: a default client's
    next call is refused, absorbs it and is taken once the first ends: both succeed, no error seen."""
    from test_overload import Holding

    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_streams=1, max_concurrent_unary=1)
    try:
        client = StreamDemoServiceNatsClient(nc)

        async def call() -> object:
            if endpoint == "ping":
                return (await client.ping(PingRequest(payload="p"), timeout=10)).payload
            if endpoint == "count_up":
                return [r.number async for r in client.count_up(CountUpRequest(start=1, count=1), timeout=10)]
            return (await client.sum([SumRequest(value=2)], timeout=10)).total

        first = asyncio.create_task(call())
        await settle(lambda: impl.entered[endpoint] == 1)
        second = asyncio.create_task(call())
        await settle(lambda: server.refused["concurrency"] >= 1)  # refused, and waiting to try again
        assert not second.done()
        impl.release.set()
        assert await asyncio.wait_for(first, 10) == await asyncio.wait_for(second, 10)
        assert impl.entered[endpoint] == 2
    finally:
        impl.release.set()
        await server.stop()


@pytest.mark.timeout(30)
async def test_absorbed_refusals_show_in_the_metrics_and_stats(nc: NATS, server_nc: NATS) -> None:
    """The client's `MetricsInterceptor` counts the retries (`rpc.nats.client.retries`), the
    service's `$SRV` STATS the refusals and the retries it saw."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from test_overload import Holding

    from betterproto_nats.otel import MetricsInterceptor

    reader = InMemoryMetricReader()
    metrics = MetricsInterceptor(meter_provider=MeterProvider(metric_readers=[reader]))
    impl = Holding()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_unary=1)
    try:
        client = StreamDemoServiceNatsClient(nc, interceptors=[metrics])
        first = asyncio.create_task(client.ping(PingRequest(payload="a"), timeout=10))
        await settle(lambda: impl.entered["ping"] == 1)
        second = asyncio.create_task(client.ping(PingRequest(payload="a"), timeout=10))
        await settle(lambda: server.refused["concurrency"] >= 1)
        impl.release.set()
        assert [(await first).payload, (await second).payload] == ["a", "a"]
        stats = json.loads((await nc.request(f"$SRV.STATS.{server.name}.{server.id}", b"", timeout=5)).data)
        data = next(e["data"] for e in stats["endpoints"] if e["name"] == "ping")
        assert data["refused"] >= 1 and data["retried"] == data["refused"]
    finally:
        impl.release.set()
        await server.stop()
    retries = [
        point.value
        for resource in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "rpc.nats.client.retries"
        for point in metric.data.data_points
    ]
    assert sum(retries) == data["retried"]


@pytest.mark.timeout(30)
async def test_an_answer_right_behind_a_refusal_is_not_lost(nc: NATS, server_nc: NATS) -> None:
    """Two receivers answer one request back to back, a refusal first and the real answer right
    behind it (read in the same loop turn, before the caller can listen again): the caller gets the
    real answer, with nothing sent again (the raw peer answers only the first request)."""
    seen: list[Msg] = []

    async def both(msg: Msg) -> None:
        seen.append(msg)
        if len(seen) == 1:
            refusal = {**error_headers(ErrorCode.RESOURCE_EXHAUSTED, "busy"), RETRY_AFTER: "50"}
            await server_nc.publish(msg.reply, b"", headers=refusal)
            await server_nc.publish(msg.reply, bytes(PingResponse(payload="real")))

    sub = await server_nc.subscribe(PING, cb=both)
    try:
        assert await flush_ordered(server_nc)
        reply = await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="p"), timeout=5)
        assert reply.payload == "real" and len(seen) == 1
    finally:
        await sub.unsubscribe()
