"""Golden tests: the generated code of the example protos is pinned, and the pinned code (as an
older generator produced it) keeps running on the current runtime through `_api_v1`.

After an intended change to the generator: `make golden`, then review the diff.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

import betterproto_nats

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
PACKAGES = ["streaming/v1", "fixtures/options/v1", "fixtures/hard/v1"]


@pytest.mark.parametrize("package", PACKAGES)
def test_generated_code_matches_golden(package: str) -> None:
    generated = (ROOT / "gen" / package / "__init__.py").read_text()
    golden = (GOLDEN / (package.replace("/", "_") + ".py.golden")).read_text()
    assert generated == golden, f"generated code for {package} changed: review it, then `make golden`"


async def test_golden_streaming_code_runs_on_this_runtime(nc: NATS, server_nc: NATS) -> None:
    path = str(GOLDEN / "streaming_v1.py.golden")
    loader = importlib.machinery.SourceFileLoader("golden_streaming_v1", path)
    spec = importlib.util.spec_from_file_location("golden_streaming_v1", path, loader=loader)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)

    class Impl(module.StreamDemoServiceNatsBase):  # type: ignore[name-defined,misc]
        async def ping(self, request):  # type: ignore[no-untyped-def]
            return module.PingResponse(payload=request.payload)

        async def count_up(self, request):  # type: ignore[no-untyped-def]
            for i in range(request.count):
                yield module.CountUpResponse(number=i)

    server = await betterproto_nats.serve(server_nc, Impl())
    try:
        client = module.StreamDemoServiceNatsClient(nc)
        assert (await client.ping(module.PingRequest(payload="old"))).payload == "old"
        assert [r.number async for r in client.count_up(module.CountUpRequest(count=3))] == [0, 1, 2]
    finally:
        await server.stop()
        del sys.modules[spec.name]
