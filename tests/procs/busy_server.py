"""A StreamDemoService in its own process whose event loop is busy, for the overload tests.

Usage: busy_server.py URL [options as JSON]: `ballast` (seconds of CPU the loop works in every turn,
as a process whose handlers compute), `pace` (seconds between a stream's messages), `cpu_per_call`
(seconds of CPU a unary call costs), and serve()'s own options under `serve`. A `ping` whose payload
is "block" works `block` seconds without giving the loop back (a CPU-bound handler). A `count_up`
from `IDLE_START` on waits `idle` seconds between its messages (a watch stream: idle, its handler
waiting).
"""

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from gen.streaming.v1 import (  # noqa: E402
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsBase,
    SumRequest,
    SumResponse,
)


IDLE_START = 1_000_000


def burn(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


class Busy(StreamDemoServiceNatsBase):
    def __init__(self, options: dict[str, Any]) -> None:
        self.pace = float(options.get("pace", 0.05))
        self.cpu_per_call = float(options.get("cpu_per_call", 0.0))
        self.block = float(options.get("block", 2.0))
        self.idle = float(options.get("idle", 2.0))

    async def ping(self, request: PingRequest) -> PingResponse:
        burn(self.block if request.payload == "block" else self.cpu_per_call)
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        pace = self.idle if request.start >= IDLE_START else self.pace
        for i in range(request.count):
            yield CountUpResponse(number=request.start + i)
            await asyncio.sleep(pace)

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        total = count = 0
        async for request in requests:
            total += request.value
            count += 1
        return SumResponse(total=total, count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield ChatMessage(user="server", text=message.text)


async def ballast(seconds: float) -> None:
    """Keep the loop busy: `seconds` of CPU in every turn it makes."""
    while True:
        burn(seconds)
        await asyncio.sleep(0)


async def main() -> None:
    options: dict[str, Any] = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    nc = await nats.connect(sys.argv[1], allow_reconnect=False, pending_size=64 << 20)
    await betterproto_nats.serve(nc, Busy(options), **options.get("serve", {}))
    if options.get("ballast"):
        asyncio.get_running_loop().create_task(ballast(float(options["ballast"])))
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
