"""Service implementations for tests that run them in another process (`python -m betterproto_nats serve`)."""

import asyncio
import sys
from pathlib import Path
from typing import AsyncIterator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gen.streaming.v1 import CountUpRequest, CountUpResponse, PingRequest, PingResponse, StreamDemoServiceNatsBase  # noqa: E402


class Slow(StreamDemoServiceNatsBase):
    """`count_up` yields one number every 50 ms; `ping` answers at once."""

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for i in range(request.count):
            yield CountUpResponse(number=i)
            await asyncio.sleep(0.05)


from gen.fixtures.persist.v1 import ProfilesNatsBase  # noqa: E402


class Stored(ProfilesNatsBase):
    """A service whose methods store their responses in JetStream (nothing implemented: enough to start)."""
