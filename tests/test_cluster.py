"""A 3-node NATS cluster on loopback: a client on node A streams through services on node C, and
calls spread across three instances through the queue group. This is how users scale out."""

from __future__ import annotations

import asyncio
import collections
from typing import AsyncIterator

import nats
import nats.errors

import betterproto_nats
from betterproto_nats import current_call
from betterproto_nats.testing import start_cluster
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)


class Instance(StreamDemoServiceNatsBase):
    def __init__(self, label: str) -> None:
        self.label = label

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=self.label)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield ChatMessage(text="echo: " + message.text)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        current_call().set_response_headers(instance=self.label)
        for i in range(request.count):
            yield CountUpResponse(number=i)


async def wait_routed(nc: nats.aio.client.Client, subject: str) -> None:
    """Interest crosses routes asynchronously: wait until a request from node A reaches `subject`."""
    for _ in range(500):
        try:
            await nc.request(subject, b"", timeout=1)
            return
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.01)
    raise AssertionError(f"{subject} never became reachable across the cluster")


async def test_streams_across_a_three_node_cluster() -> None:
    nodes = start_cluster(3)
    conns = []
    try:
        a, c = nodes[0], nodes[2]
        client_nc = await nats.connect(a.url)
        service_conns = [await nats.connect(c.url) for _ in range(3)]
        conns = [client_nc, *service_conns]
        servers = [await betterproto_nats.serve(nc, Instance(f"i{i}")) for i, nc in enumerate(service_conns)]
        for server in servers:
            await wait_routed(client_nc, f"$SRV.PING.StreamDemoService.{server.id}")
        client = StreamDemoServiceNatsClient(client_nc)

        # Streaming through node A → node C works, large enough to exercise flow control over routes.
        numbers = [r.number async for r in client.count_up(CountUpRequest(count=5_000), timeout=60)]
        assert numbers == list(range(5_000))

        # Calls spread over the three instances (queue group "q"), each served once.
        served = collections.Counter()
        for _ in range(60):
            stream = await client.count_up(CountUpRequest(count=1), timeout=10)
            assert [r.number async for r in stream] == [0]
            served[stream.headers["instance"]] += 1
        assert sum(served.values()) == 60
        assert set(served) == {"i0", "i1", "i2"}
        async with await client.chat(timeout=10) as chat:  # bidi across the routes too
            await chat.send(ChatMessage(text="x"))
            assert (await chat.recv()).text == "echo: x"
        for server in servers:
            await server.stop()
    finally:
        for nc in conns:
            await nc.close()
        for node in nodes:
            node.__exit__()
