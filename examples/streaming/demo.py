"""The seed document's StreamDemoService, end to end: an embedded nats-server, our service, our client.

Run with `make demo`. Every RPC shape once: Ping, CountUp 1..5, Sum 10+20+30, Chat echo.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import AsyncIterator

import nats

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the generated `gen` package

import betterproto_nats  # noqa: E402
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class StreamDemo(StreamDemoServiceNatsBase):
    """The service: one method per RPC shape."""

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload="pong: " + request.payload, count=1)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for i in range(request.count):
            yield CountUpResponse(number=request.start + i, timestamp=now())

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        total = count = 0
        async for request in requests:
            total += request.value
            count += 1
        return SumResponse(total=total, count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield ChatMessage(user="server", text="echo: " + message.text, timestamp=now())


async def run_client(client: StreamDemoServiceNatsClient) -> None:
    reply = await client.ping(PingRequest(payload="hello"))
    print(f"unary      {'Ping(hello)':22} -> {reply.payload!r}")

    numbers = [r.number async for r in client.count_up(CountUpRequest(start=1, count=5))]
    print(f"server     {'CountUp(start=1, n=5)':22} -> {numbers}")

    total = await client.sum([SumRequest(value=10), SumRequest(value=20), SumRequest(value=30)])
    print(f"client     {'Sum(10, 20, 30)':22} -> total={total.total} count={total.count}")

    async with await client.chat() as chat:
        for text in ("hello", "how are you", "goodbye"):
            await chat.send(ChatMessage(user="client", text=text))
            echo = await chat.recv()
            label = f"Chat({text!r})"
            print(f"bidi       {label:22} -> {echo.text!r}")
        await chat.close_send()


async def main() -> None:
    with NatsServer() as server:
        print(f"nats-server listening on {server.url}")
        service_nc = await nats.connect(server.url)
        client_nc = await nats.connect(server.url)
        service = await betterproto_nats.serve(service_nc, StreamDemo())
        print(f"serving {service.name} (id {service.id}) on {service.subject_prefix}.*\n")
        try:
            await asyncio.wait_for(run_client(StreamDemoServiceNatsClient(client_nc)), 30)
        finally:
            await service.stop()
            await client_nc.close()
            await service_nc.close()
    print("\nall four RPC shapes worked; nats-server stopped")


if __name__ == "__main__":
    asyncio.run(main())
