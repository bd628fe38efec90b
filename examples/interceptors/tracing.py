"""Call logging and OpenTelemetry tracing on both sides, printed by the SDK's console exporter.
Run: `python examples/interceptors/tracing.py` (starts its own nats-server; `make gen` first;
needs opentelemetry-sdk, which the dev install has)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "streaming"))

import nats  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.otel import TracingInterceptor  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402


async def main() -> None:
    from demo import StreamDemo  # the seed example's service
    from gen.streaming.v1 import ChatMessage, CountUpRequest, StreamDemoServiceNatsClient

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stdout)))
    interceptors = [betterproto_nats.LoggingInterceptor(), TracingInterceptor(tracer_provider=provider)]

    with NatsServer() as server:
        nc = await nats.connect(server.url)
        service = await betterproto_nats.serve(nc, StreamDemo(), interceptors=interceptors)
        client = StreamDemoServiceNatsClient(nc, interceptors=interceptors)
        print([r.number async for r in client.count_up(CountUpRequest(start=1, count=3))])
        print([m.text async for m in client.chat([ChatMessage(text="traced")])])
        await service.stop()
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
