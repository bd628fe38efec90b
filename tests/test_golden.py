"""Golden tests: the generated code of the example protos is pinned, and pinned code keeps running on
the current runtime: today's (`_api_v2`) and code from the generator of codegen API 1
(`streaming_v1.api_v1.py.golden`) and of codegen API 2 on betterproto 2.0.0b7 messages, with its codecs
(`streaming_v1.betterproto_b7.py.golden`, the last output before betterproto2). Both frozen: never
re-pinned; they import betterproto 2.0.0b7 themselves, so they run where `betterproto==2.0.0b7` is
installed and are skipped elsewhere.

After an intended change to the generator: `make golden`, then review the diff.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

import betterproto2
import pytest
from nats.aio.client import Client as NATS

import betterproto_nats

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
PACKAGES = ["streaming/v1", "fixtures/options/v1", "fixtures/hard/v1", "fixtures/persist/v1"]


@pytest.mark.parametrize("package", PACKAGES)
def test_generated_code_matches_golden(package: str) -> None:
    generated = (ROOT / "gen" / package / "__init__.py").read_text()
    golden = (GOLDEN / (package.replace("/", "_") + ".py.golden")).read_text()
    assert generated == golden, f"generated code for {package} changed: review it, then `make golden`"


@pytest.mark.parametrize("golden", ["streaming_v1.py.golden", "streaming_v1.api_v1.py.golden", "streaming_v1.betterproto_b7.py.golden"])
async def test_golden_streaming_code_runs_on_this_runtime(nc: NATS, server_nc: NATS, golden: str) -> None:
    if golden != "streaming_v1.py.golden":  # betterproto 2.0.0b7 messages: that code imports it itself
        pytest.importorskip("betterproto", reason="code generated for betterproto 2.0.0b7 needs it installed")
    path = str(GOLDEN / golden)
    # inside gen's package: betterproto2's modules import gen/message_pool.py and other packages relatively
    name = "gen.streaming.v1.golden_streaming_v1"
    loader = importlib.machinery.SourceFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    import gen.message_pool

    pool = gen.message_pool.default_message_pool
    gen.message_pool.default_message_pool = betterproto2.MessagePool()  # type: ignore[no-untyped-call]
    try:  # a second class of one proto name in one pool is refused: the golden copy gets its own
        spec.loader.exec_module(module)
    finally:
        gen.message_pool.default_message_pool = pool

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
        with pytest.raises(betterproto_nats.RpcError) as unimplemented:
            await client.sum([module.SumRequest(value=1)])
        assert unimplemented.value.code == betterproto_nats.ErrorCode.UNIMPLEMENTED
    finally:
        await server.stop()
        del sys.modules[spec.name]
