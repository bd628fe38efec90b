"""Streams across NATS topologies on loopback: a supercluster (gateways, interest-only) and a leaf node
(service and client on different servers; races of many short calls must lose nothing), and a 3-node
cluster whose nodes are killed under streams in flight."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, Overloaded, RpcError
from betterproto_nats.testing import NatsServer
from conftest import no_subscriptions_left, settle
from demo_service import Demo
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    ExportSnapshotRequest,
    ImportSnapshotResponse,
    PingRequest,
    SnapshotChunk,
    StreamDemoServiceNatsClient,
    SumRequest,
)
from topologies import cluster, leaf_node, supercluster

RACE = 500


@pytest.fixture(scope="module", params=["supercluster", "leaf"])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[NatsServer, NatsServer]]:
    with (supercluster() if request.param == "supercluster" else leaf_node()) as servers:
        yield servers


async def reachable(client: StreamDemoServiceNatsClient) -> None:
    """Wait (bounded) until a call reaches the service: interest for its endpoints crosses the gateway,
    leaf or route connection asynchronously, and after a reconnect nats-py resubscribes on its own."""
    for _ in range(200):
        try:
            if (await client.ping(PingRequest(payload="up"), timeout=1)).payload == "up":
                return
        except RpcError:
            pass
        await asyncio.sleep(0.01)
    raise AssertionError("the service never became reachable")


BLOB = bytes(range(256)) * 4096  # 1 MiB: 16 chunks of the default 64 KiB


class WithBlobs(Demo):
    """Demo plus a chunked download of `BLOB` and an upload that answers with what arrived."""

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        yield BLOB

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        data = await requests.recv_bytes()
        return ImportSnapshotResponse(id=hashlib.sha256(data).hexdigest(), size=len(data))


@pytest.fixture(params=["service-on-first", "service-on-second"])
async def across(
    topology: tuple[NatsServer, NatsServer], request: pytest.FixtureRequest
) -> AsyncIterator[StreamDemoServiceNatsClient]:
    """The service on one server, a client on the other (both ways round), once interest has crossed."""
    service_side, client_side = topology if request.param == "service-on-first" else topology[::-1]
    server_nc = await nats.connect(service_side.url, allow_reconnect=False)
    client_nc = await nats.connect(client_side.url, allow_reconnect=False)
    server = await betterproto_nats.serve(server_nc, WithBlobs())
    client = StreamDemoServiceNatsClient(client_nc)
    await reachable(client)
    yield client
    await settle(lambda: not server.calls)
    await server.stop()
    await client_nc.close()
    await server_nc.close()


async def every_shape_works(client: StreamDemoServiceNatsClient) -> None:
    assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=3), timeout=5)] == [1, 2, 3]
    assert (await client.sum([SumRequest(value=v) for v in (1, 2, 3)], timeout=5)).total == 6
    assert [m.text async for m in client.chat([ChatMessage(text="a")], timeout=5)] == ["echo: a"]


async def test_every_shape_across(across: StreamDemoServiceNatsClient) -> None:
    await every_shape_works(across)
    download = await across.export_snapshot(ExportSnapshotRequest(id="blob"), timeout=10)
    assert await download.recv_bytes() == BLOB
    upload = await across.import_snapshot(timeout=10)
    await upload.send_bytes(BLOB)
    assert await upload.close_and_recv() == ImportSnapshotResponse(id=hashlib.sha256(BLOB).hexdigest(), size=len(BLOB))


@pytest.mark.parametrize("shape", ["client_stream", "bidi"])
async def test_races_of_short_streams_lose_nothing(across: StreamDemoServiceNatsClient, shape: str) -> None:
    client = across

    errors: list[str] = []

    async def one(i: int) -> bool:
        for _ in range(20):  # a stream the service refuses before it starts (a busy machine) is opened again, as a caller would
            try:
                if shape == "client_stream":
                    return (await client.sum([SumRequest(value=i)], timeout=5)).total == i
                return [m.text async for m in client.chat([ChatMessage(text=str(i))], timeout=5)] == [f"echo: {i}"]
            except Overloaded as refused:
                await asyncio.sleep(refused.retry_after)
            except RpcError as error:
                errors.append(repr(error))
                return False
        errors.append("refused 20 times")
        return False

    results = []
    for start in range(0, RACE, 50):
        results += await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    failures = results.count(False)
    print(f"{shape}: {failures} of {RACE} failed")
    assert failures == 0, errors[:5]


# --- A cluster node killed under streams in flight ---------------------------------------------------

PROMPTLY = 5.0  # seconds from the kill to the end of every stream in flight (measured: well under 1 s)
PACE = 0.002  # seconds between a stream's steps: the streams are in use, without a busy loop


@dataclass
class Routed:
    nodes: list[NatsServer]  # the client's node, the service's node, and where either goes when its node dies
    client_nc: NATS
    service_nc: NATS
    server: betterproto_nats.Server
    client: StreamDemoServiceNatsClient


async def _connect(first: NatsServer, then: NatsServer) -> NATS:
    """Connected to `first`; when it dies, reconnected to `then` at once (in this order, and
    reconnect_time_wait only spaces attempts at the same server)."""
    urls = [first.url, then.url]
    return await nats.connect(
        servers=urls, dont_randomize=True, max_reconnect_attempts=-1, reconnect_time_wait=0.05, connect_timeout=2
    )


@pytest.fixture
async def routed() -> AsyncIterator[Routed]:
    """A 3-node cluster: the client on node 0, the service on node 1, each moving to node 2 when
    its node dies (so that calls afterwards still cross a route)."""
    with cluster(3) as nodes:
        client_nc = await _connect(nodes[0], nodes[2])
        service_nc = await _connect(nodes[1], nodes[2])
        server = await betterproto_nats.serve(service_nc, Demo())
        client = StreamDemoServiceNatsClient(client_nc)
        await reachable(client)
        try:
            yield Routed(nodes, client_nc, service_nc, server, client)
        finally:
            await server.stop(grace_period=0)
            await no_subscriptions_left(service_nc)  # the calls cut short by the kill released theirs
            await client_nc.close()
            await service_nc.close()


async def _until_it_fails(step: Callable[[], Awaitable[object]], steps: list[int]) -> tuple[RpcError, float]:
    """Use a stream (`step` over and over, counted in `steps[0]`) until it raises: the error and when,
    by the monotonic clock."""
    while True:
        try:
            await step()
        except RpcError as error:
            return error, time.monotonic()
        steps[0] += 1
        await asyncio.sleep(PACE)


async def _streams_end_when(routed: Routed, kill: int) -> dict[str, RpcError]:
    """A server stream, a client stream and a bidi stream in flight; kill nodes[kill]: every stream
    ends within PROMPTLY (as the client sees it) and the service frees the three calls."""
    client, server = routed.client, routed.server
    async with (
        await client.count_up(CountUpRequest(count=10**9)) as counting,  # no deadline: nothing but liveness ends them
        await client.sum() as summing,
        await client.chat() as chatting,
    ):
        await counting.recv()
        await summing.send(SumRequest(value=1))
        await chatting.send(ChatMessage(text="a"))
        assert (await chatting.recv()).text == "echo: a"
        assert len(server.calls) == 3

        async def ping_pong() -> None:
            await chatting.send(ChatMessage(text="b"))
            await chatting.recv()

        shapes = {"server_stream": counting.recv, "client_stream": lambda: summing.send(SumRequest(value=1)), "bidi": ping_pong}
        done = {shape: [0] for shape in shapes}
        running = {shape: asyncio.ensure_future(_until_it_fails(step, done[shape])) for shape, step in shapes.items()}
        await settle(lambda: all(n >= 10 for n, in done.values()))  # every stream busy when the node dies
        routed.nodes[kill].kill()
        killed = time.monotonic()
        await asyncio.wait(running.values(), timeout=PROMPTLY)
        hanging = [shape for shape, task in running.items() if not task.done()]
        for task in running.values():
            task.cancel()
        assert not hanging, f"still going {PROMPTLY:g} s after the kill: {hanging}"
        ended = {shape: task.result() for shape, task in running.items()}
    await settle(lambda: not server.calls, timeout=PROMPTLY)
    freed = time.monotonic() - killed
    after = {shape: round(at - killed, 2) for shape, (_, at) in ended.items()}
    print(f"node {kill} killed: streams ended after {after} s ({ {s: e.code for s, (e, _) in ended.items()} }), "
          f"service free after {freed:.2f} s")
    assert max(after.values()) < PROMPTLY
    return {shape: error for shape, (error, _) in ended.items()}


async def test_client_node_killed_mid_stream(routed: Routed) -> None:
    """The client's node dies; the client reconnects to another node: its streams in flight cannot be
    trusted (messages in the gap are gone) and end UNAVAILABLE; new calls work on the new connection."""
    errors = await _streams_end_when(routed, kill=0)
    assert {shape: error.code for shape, error in errors.items()} == dict.fromkeys(errors, ErrorCode.UNAVAILABLE)
    assert routed.client_nc.is_connected and routed.client_nc.stats["reconnects"] == 1
    assert routed.client_nc.connected_url is not None and routed.client_nc.connected_url.port == routed.nodes[2].port
    await no_subscriptions_left(routed.client_nc)
    await every_shape_works(routed.client)


async def test_service_node_killed_mid_stream(routed: Routed) -> None:
    """The service's node dies; the service reconnects to another node: the client's streams in flight
    end UNAVAILABLE (the service's inboxes are gone: heartbeats find no responders), the service frees
    its calls, and new calls work once its endpoints are known again."""
    errors = await _streams_end_when(routed, kill=1)
    assert {shape: error.code for shape, error in errors.items()} == dict.fromkeys(errors, ErrorCode.UNAVAILABLE)
    await settle(lambda: routed.service_nc.is_connected and routed.service_nc.stats["reconnects"] == 1)
    assert routed.service_nc.connected_url is not None and routed.service_nc.connected_url.port == routed.nodes[2].port
    await no_subscriptions_left(routed.client_nc)
    await reachable(routed.client)
    await every_shape_works(routed.client)
