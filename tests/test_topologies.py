"""Streams across NATS topologies on loopback: a supercluster (gateways, interest-only) and a leaf node.
Service and client sit on different servers; races of many short calls must lose nothing."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import RpcError
from betterproto_nats.testing import NatsServer
from conftest import settle
from demo_service import Demo
from gen.streaming.v1 import ChatMessage, CountUpRequest, PingRequest, StreamDemoServiceNatsClient, SumRequest
from topologies import leaf_node, supercluster

RACE = 500


@pytest.fixture(scope="module", params=["supercluster", "leaf"])
def topology(request: pytest.FixtureRequest) -> Iterator[tuple[NatsServer, NatsServer]]:
    with (supercluster() if request.param == "supercluster" else leaf_node()) as servers:
        yield servers


@pytest.fixture
async def across(topology: tuple[NatsServer, NatsServer]) -> AsyncIterator[StreamDemoServiceNatsClient]:
    """The service on one server, a client on the other, once interest has crossed."""
    service_side, client_side = topology
    server_nc = await nats.connect(service_side.url, allow_reconnect=False)
    client_nc = await nats.connect(client_side.url, allow_reconnect=False)
    server = await betterproto_nats.serve(server_nc, Demo())
    client = StreamDemoServiceNatsClient(client_nc)

    async def reachable() -> bool:
        try:
            return (await client.ping(PingRequest(payload="up"), timeout=1)).payload == "up"
        except RpcError:
            return False

    for _ in range(200):  # bounded: interest for the endpoints crosses the gateway or leaf connection
        if await reachable():
            break
        await asyncio.sleep(0.01)
    yield client
    await settle(lambda: not server.calls)
    await server.stop()
    await client_nc.close()
    await server_nc.close()


async def test_every_shape_across(across: StreamDemoServiceNatsClient) -> None:
    client = across
    assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=3), timeout=5)] == [1, 2, 3]
    assert (await client.sum([SumRequest(value=v) for v in (1, 2, 3)], timeout=5)).total == 6
    assert [m.text async for m in client.chat([ChatMessage(text="a")], timeout=5)] == ["echo: a"]


@pytest.mark.parametrize("shape", ["client_stream", "bidi"])
async def test_races_of_short_streams_lose_nothing(across: StreamDemoServiceNatsClient, shape: str) -> None:
    client = across

    async def one(i: int) -> bool:
        try:
            if shape == "client_stream":
                return (await client.sum([SumRequest(value=i)], timeout=5)).total == i
            return [m.text async for m in client.chat([ChatMessage(text=str(i))], timeout=5)] == [f"echo: {i}"]
        except RpcError:
            return False

    results = []
    for start in range(0, RACE, 50):
        results += await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    failures = results.count(False)
    print(f"{shape}: {failures} of {RACE} failed")
    assert failures == 0
