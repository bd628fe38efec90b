"""A StreamDemoService in its own process, for tests that kill -9 (or pause) it.
Usage: demo_server.py URL [idle]: with `idle`, each count_up stream sends one message and then waits."""

import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from gen.streaming.v1 import CountUpRequest, CountUpResponse, StreamDemoServiceNatsBase  # noqa: E402


class Slow(StreamDemoServiceNatsBase):
    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for i in range(request.count):
            yield CountUpResponse(number=i)
            await asyncio.sleep(0.02)


class Idle(StreamDemoServiceNatsBase):
    def __init__(self) -> None:
        self.forever = asyncio.Event()

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        yield CountUpResponse(number=0)
        await self.forever.wait()


async def main() -> None:
    nc = await nats.connect(sys.argv[1], allow_reconnect=False)
    await betterproto_nats.serve(nc, Idle() if sys.argv[2:3] == ["idle"] else Slow())
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
