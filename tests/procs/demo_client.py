"""A client in its own process that streams forever, for tests that kill -9 it.
Usage: demo_client.py URL [HEARTBEAT_SECONDS]"""

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
    async for response in client.count_up(CountUpRequest(count=10**9)):
        if response.number == 0:
            print("streaming", flush=True)


asyncio.run(main())
