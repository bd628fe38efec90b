"""A service whose client-stream handler never reads, in its own process, so that a test can read
its peak memory while a hostile client floods it. Usage: sink_server.py URL BUFFER_BYTES"""

import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from gen.streaming.v1 import PingRequest, PingResponse, StreamDemoServiceNatsBase, SumRequest, SumResponse  # noqa: E402


class Sink(StreamDemoServiceNatsBase):
    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload)

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        await asyncio.Event().wait()  # never reads: everything sent must be held or refused
        return SumResponse()


async def main() -> None:
    nc = await nats.connect(sys.argv[1], allow_reconnect=False)
    await betterproto_nats.serve(nc, Sink(), stream_buffer_bytes=int(sys.argv[2]), grace_period=0)
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
