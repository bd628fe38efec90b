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


import hashlib  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats import current_call  # noqa: E402
from gen.streaming.v1 import ExportSnapshotRequest, ImportSnapshotResponse, SnapshotChunk  # noqa: E402
from tests.demo_service import Demo  # noqa: E402


class Everything(Demo):
    """The demo service (tests/demo_service.py) with its chunked methods: ExportSnapshot sends `id`
    bytes (0, 1, 2, ... mod 251) with their size announced; ImportSnapshot answers sha256 and size."""

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        data = bytes(i % 251 for i in range(int(request.id or 0)))
        current_call().set_blob_size(len(data))
        yield data

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        data = await requests.recv_bytes()
        return ImportSnapshotResponse(id=hashlib.sha256(data).hexdigest(), size=len(data))
