"""A client in its own process that streams forever, for tests that kill -9 (or pause) it.
Usage: demo_client.py URL [HEARTBEAT_SECONDS [STREAMS]]: prints "streaming" once every stream has
its first message."""

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

from gen.streaming.v1 import CountUpRequest, StreamDemoServiceNatsClient  # noqa: E402


async def main() -> None:
    nc = await nats.connect(sys.argv[1], allow_reconnect=False)
    client = StreamDemoServiceNatsClient(nc, **({"heartbeat": float(sys.argv[2])} if len(sys.argv) > 2 else {}))
    streams = [await client.count_up(CountUpRequest(count=10**9)) for _ in range(int(sys.argv[3]) if len(sys.argv) > 3 else 1)]
    for stream in streams:
        await stream.recv()
    print("streaming", flush=True)

    async def drain(stream) -> None:  # type: ignore[no-untyped-def]
        async for _ in stream:
            pass

    await asyncio.gather(*(drain(stream) for stream in streams))


asyncio.run(main())
