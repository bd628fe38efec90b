"""What interceptors cost: unary round trips and a small-message server stream with none, with
`LoggingInterceptor` (records to a handler that drops them) and with OpenTelemetry tracing (SDK,
in-memory exporter), on both sides, in one run. Prints rates and ratios to "none".
Usage: python bench/interceptors.py [--quick]"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import nats  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.otel import TracingInterceptor  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import CountUpRequest, PingRequest, StreamDemoServiceNatsClient  # noqa: E402
from same_process import Bench  # noqa: E402

QUICK = "--quick" in sys.argv
CALLS, MESSAGES = (300, 5_000) if QUICK else (3_000, 50_000)


def kinds() -> dict[str, list[betterproto_nats.Interceptor]]:
    logger = logging.getLogger("bench.calls")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return {
        "none": [],
        "logging": [betterproto_nats.LoggingInterceptor(logger)],
        "tracing": [TracingInterceptor(tracer_provider=provider)],
    }


async def measure(url: str, interceptors: list[betterproto_nats.Interceptor]) -> tuple[float, float]:
    server_nc, client_nc = await nats.connect(url), await nats.connect(url)
    server = await betterproto_nats.serve(server_nc, Bench(), interceptors=interceptors)
    client = StreamDemoServiceNatsClient(client_nc, interceptors=interceptors)
    request = PingRequest(payload="x")
    started = time.perf_counter()
    for _ in range(CALLS):
        await client.ping(request)
    unary = CALLS / (time.perf_counter() - started)
    started = time.perf_counter()
    count = 0
    async for _ in client.count_up(CountUpRequest(count=MESSAGES)):
        count += 1
    stream = count / (time.perf_counter() - started)
    await server.stop()
    await client_nc.close()
    await server_nc.close()
    return unary, stream


async def main() -> None:
    with NatsServer() as server:
        results: dict[str, Any] = {}
        for name, interceptors in kinds().items():
            results[name] = await measure(server.url, interceptors)
        base_unary, base_stream = results["none"]
        print("| interceptors | unary req/s | ratio | server stream msg/s | ratio |")
        print("|---|---:|---:|---:|---:|")
        for name, (unary, stream) in results.items():
            print(f"| {name} | {unary:,.0f} | {unary / base_unary:.2f} | {stream:,.0f} | {stream / base_stream:.2f} |")


asyncio.run(main())
