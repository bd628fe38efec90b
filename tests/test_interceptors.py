"""Interceptors on both sides, for every RPC shape, against a real nats-server: order, headers,
rejection, every message once, outcomes; call logging; OpenTelemetry spans across the wire and metrics."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client as NATS
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import betterproto_nats
from betterproto_nats import CallInfo, CallOutcome, Direction, ErrorCode, Interceptor, LoggingInterceptor, RpcError
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.otel import MetricsInterceptor, TracingInterceptor
from conftest import Wiretap, settle, subscriptions
from demo_service import Demo
from gen.streaming.v1 import ChatMessage, CountUpRequest, PingRequest, StreamDemoServiceNatsClient, SumRequest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "interceptors"))
from auth import RequireToken, SendToken  # noqa: E402

Call = Callable[[StreamDemoServiceNatsClient], Awaitable[Any]]


async def ping(client: StreamDemoServiceNatsClient) -> Any:
    return (await client.ping(PingRequest(payload="p"), timeout=5)).payload


async def count_up(client: StreamDemoServiceNatsClient) -> Any:
    return [r.number async for r in client.count_up(CountUpRequest(start=1, count=3), timeout=5)]


async def sum_(client: StreamDemoServiceNatsClient) -> Any:
    return (await client.sum([SumRequest(value=v) for v in (1, 2, 3)], timeout=5)).total


async def chat(client: StreamDemoServiceNatsClient) -> Any:
    return [m.text async for m in client.chat([ChatMessage(text="a"), ChatMessage(text="b")], timeout=5)]


SHAPES: dict[str, tuple[Call, Any, int, int]] = {
    # name: (call, expected result, messages the client sends, messages it receives)
    "unary": (ping, "p", 1, 1),
    "server_stream": (count_up, [1, 2, 3], 1, 3),
    "client_stream": (sum_, 6, 3, 1),
    "bidi": (chat, ["echo: a", "echo: b"], 2, 2),
}


class Recorder(Interceptor):
    """Records what it sees, into a shared journal."""

    def __init__(self, name: str, journal: list[tuple[Any, ...]]) -> None:
        self.name = name
        self.journal = journal
        self.outcomes: list[CallOutcome] = []

    async def start(self, call: CallInfo) -> None:
        self.journal.append((self.name, "start", call.side.value, call.full_name, call.shape.value))
        if call.side is betterproto_nats.Side.CLIENT:
            call.headers[f"X-{self.name}"] = "1"

    def message(self, call: CallInfo, direction: Direction, message: Any) -> Any:
        self.journal.append((self.name, direction.value, call.side.value, message.to_dict()))
        return message

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        self.outcomes.append(outcome)
        self.journal.append((self.name, "end", call.side.value, outcome.code))


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_order_headers_and_every_message_once(nc: NATS, server_nc: NATS, shape: str) -> None:
    call, expected, sends, receives = SHAPES[shape]
    journal: list[tuple[Any, ...]] = []
    impl = Demo()
    server_side = [Recorder("s1", journal), Recorder("s2", journal)]
    client_side = [Recorder("c1", journal), Recorder("c2", journal)]
    server = await betterproto_nats.serve(server_nc, impl, interceptors=server_side)
    try:
        assert await call(StreamDemoServiceNatsClient(nc, interceptors=client_side)) == expected
        await settle(lambda: not server.calls)
    finally:
        await server.stop()
    steps = lambda who: [e[1] for e in journal if e[0] == who]  # noqa: E731
    assert [e[0] for e in journal if e[1] == "start"] == ["c1", "c2", "s1", "s2"]  # the order given, both sides
    assert [e[0] for e in journal if e[1] == "end" and e[2] == "server"] == ["s2", "s1"]  # unwinding
    assert [e[0] for e in journal if e[1] == "end" and e[2] == "client"] == ["c2", "c1"]
    for who in ("c1", "c2"):
        assert steps(who).count("sent") == sends and steps(who).count("received") == receives
    for who in ("s1", "s2"):
        assert steps(who).count("received") == sends and steps(who).count("sent") == receives
    sent_by_client = [e[3] for e in journal if e[0] == "c1" and e[1] == "sent"]
    received_by_server = [e[3] for e in journal if e[0] == "s1" and e[1] == "received"]
    assert sent_by_client == received_by_server  # every message once, in order
    seen_headers = impl.headers[-1] if impl.headers else {}
    if shape != "unary":
        assert seen_headers.get("X-c1") == "1" and seen_headers.get("X-c2") == "1"
    for recorder in client_side + server_side:
        (outcome,) = recorder.outcomes
        assert outcome.ok and outcome.duration > 0
    (client_outcome,) = client_side[0].outcomes
    assert (client_outcome.messages_sent, client_outcome.messages_received) == (sends, receives)


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_a_server_interceptor_rejects_before_the_handler(nc: NATS, server_nc: NATS, shape: str) -> None:
    call = SHAPES[shape][0]
    ran: list[str] = []

    class Watched(Demo):
        async def ping(self, request: PingRequest) -> Any:
            ran.append("ping")
            return await super().ping(request)

        async def count_up(self, request: CountUpRequest) -> AsyncIterator[Any]:
            ran.append("count_up")
            async for item in super().count_up(request):
                yield item

        async def sum(self, requests: AsyncIterator[SumRequest]) -> Any:
            ran.append("sum")
            return await super().sum(requests)

        async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[Any]:
            ran.append("chat")
            async for item in super().chat(requests):
                yield item

    served_subs = subscriptions(server_nc)
    server = await betterproto_nats.serve(server_nc, Watched(), interceptors=[RequireToken("s3cret")])
    listening = subscriptions(server_nc)
    try:
        with pytest.raises(RpcError) as refused:
            await call(StreamDemoServiceNatsClient(nc))
        assert refused.value.code == ErrorCode.UNAUTHENTICATED
        assert ran == []
        await settle(lambda: not server.calls and subscriptions(server_nc) == listening)  # no stream inbox left
        assert await call(StreamDemoServiceNatsClient(nc, interceptors=[SendToken("s3cret")])) == SHAPES[shape][1]
        assert len(ran) == 1
        stats = json.loads((await nc.request("$SRV.STATS.StreamDemoService", b"", timeout=5)).data)
        endpoint = next(e for e in stats["endpoints"] if e["num_requests"] == 2)
        assert endpoint["num_errors"] == 1 and "UNAUTHENTICATED" in endpoint["last_error"]
    finally:
        await server.stop()
    assert subscriptions(server_nc) == served_subs


async def test_a_client_interceptor_rejects_before_anything_is_sent(nc: NATS, server_nc: NATS, tap: Wiretap) -> None:
    class Deny(Interceptor):
        async def start(self, call: CallInfo) -> None:
            raise RpcError(ErrorCode.PERMISSION_DENIED, "not from here")

    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        client = StreamDemoServiceNatsClient(nc, interceptors=[Deny()])
        for call, *_ in SHAPES.values():
            with pytest.raises(RpcError) as refused:
                await call(client)
            assert refused.value.code == ErrorCode.PERMISSION_DENIED
        await ping(StreamDemoServiceNatsClient(nc))  # a call that does go out, to order the tap
        await settle(lambda: any(s == "api.v1.stream.ping" for s, _, _ in tap.seen))
        assert [s for s, _, _ in tap.seen if s.startswith("api.v1.stream.")] == ["api.v1.stream.ping"]
    finally:
        await server.stop()


async def test_logging_interceptor_writes_one_record_per_call(
    nc: NATS, server_nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Demo):
        async def ping(self, request: PingRequest) -> Any:
            raise ValueError("a bug")

    caplog.set_level(logging.INFO, logger="betterproto_nats.calls")
    server = await betterproto_nats.serve(server_nc, Broken(), interceptors=[LoggingInterceptor()])
    client = StreamDemoServiceNatsClient(nc, interceptors=[LoggingInterceptor()])
    try:
        assert await count_up(client) == [1, 2, 3]
        with pytest.raises(RpcError):
            await ping(client)
        await settle(lambda: len([r for r in caplog.records if r.name == "betterproto_nats.calls"]) == 4)
    finally:
        await server.stop()
    records = [r for r in caplog.records if r.name == "betterproto_nats.calls"]
    ok = [r for r in records if r.levelno == logging.INFO]
    assert {r.rpc_side for r in ok} == {"client", "server"}  # type: ignore[attr-defined]
    assert all(r.rpc_method == "CountUp" and r.rpc_code == "OK" for r in ok)  # type: ignore[attr-defined]
    assert ok[0].rpc_shape == "server_stream"  # type: ignore[attr-defined]
    server_error = next(r for r in records if r.rpc_side == "server" and r.rpc_method == "Ping")  # type: ignore[attr-defined]
    assert server_error.levelno == logging.ERROR and server_error.exc_info is not None  # the traceback, server side
    client_error = next(r for r in records if r.rpc_side == "client" and r.rpc_method == "Ping")  # type: ignore[attr-defined]
    assert client_error.levelno == logging.WARNING and client_error.exc_info is None
    assert client_error.rpc_code == ErrorCode.INTERNAL  # type: ignore[attr-defined]


@pytest.fixture
def tracing() -> tuple[TracingInterceptor, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracingInterceptor(tracer_provider=provider), exporter


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_client_and_server_spans_are_parent_and_child(
    nc: NATS, server_nc: NATS, shape: str, tracing: tuple[TracingInterceptor, InMemorySpanExporter]
) -> None:
    interceptor, exporter = tracing
    call, expected, *_ = SHAPES[shape]
    server = await betterproto_nats.serve(server_nc, Demo(), interceptors=[interceptor])
    try:
        assert await call(StreamDemoServiceNatsClient(nc, interceptors=[interceptor])) == expected
        await settle(lambda: len(exporter.get_finished_spans()) == 2)
    finally:
        await server.stop()
    spans = {span.kind: span for span in exporter.get_finished_spans()}
    client, served = spans[SpanKind.CLIENT], spans[SpanKind.SERVER]
    assert client.context.trace_id == served.context.trace_id
    assert served.parent is not None and served.parent.span_id == client.context.span_id
    for span in (client, served):
        assert span.name == f"streaming.v1.StreamDemoService/{client.attributes['rpc.method']}"  # type: ignore[index]
        assert span.attributes["rpc.system"] == "nats"  # type: ignore[index]
        assert span.attributes["rpc.service"] == "streaming.v1.StreamDemoService"  # type: ignore[index]
        assert span.attributes["rpc.nats.status_code"] == "OK"  # type: ignore[index]
        assert span.status.status_code is not StatusCode.ERROR


@pytest.mark.parametrize("shape", ["unary", "server_stream", "client_stream", "bidi"])
async def test_a_handler_error_is_recorded_on_both_spans(
    nc: NATS, server_nc: NATS, shape: str, tracing: tuple[TracingInterceptor, InMemorySpanExporter]
) -> None:
    interceptor, exporter = tracing

    class Failing(Demo):
        async def ping(self, request: PingRequest) -> Any:
            raise RpcError(ErrorCode.NOT_FOUND, "nothing here")

    failing_calls: dict[str, Call] = {
        "unary": ping,
        "server_stream": lambda c: count_up_failing(c),
        "client_stream": lambda c: c.sum([SumRequest(value=-1)], timeout=5),
        "bidi": lambda c: chat_failing(c),
    }
    server = await betterproto_nats.serve(server_nc, Failing(), interceptors=[interceptor])
    try:
        with pytest.raises(RpcError) as failed:
            await failing_calls[shape](StreamDemoServiceNatsClient(nc, interceptors=[interceptor]))
        await settle(lambda: len(exporter.get_finished_spans()) == 2)
    finally:
        await server.stop()
    for span in exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.ERROR, span.kind
        assert span.attributes["rpc.nats.status_code"] == failed.value.code  # type: ignore[index]
        assert any(event.name == "exception" for event in span.events), span.kind


async def count_up_failing(client: StreamDemoServiceNatsClient) -> Any:
    return [r async for r in client.count_up(CountUpRequest(start=-1, count=1), timeout=5)]


async def chat_failing(client: StreamDemoServiceNatsClient) -> Any:
    return [m async for m in client.chat([ChatMessage(text="fail")], timeout=5)]


async def test_metrics_count_calls_messages_and_open_streams(nc: NATS, server_nc: NATS) -> None:
    reader = InMemoryMetricReader()
    metrics = MetricsInterceptor(meter_provider=MeterProvider(metric_readers=[reader]))
    server = await betterproto_nats.serve(server_nc, Demo(), interceptors=[metrics])
    try:
        client = StreamDemoServiceNatsClient(nc)
        assert await count_up(client) == [1, 2, 3]
        assert await ping(client) == "p"
        await settle(lambda: not server.calls)
    finally:
        await server.stop()
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:  # type: ignore[union-attr]
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    finished = {p.attributes["rpc.method"]: p.value for p in points["rpc.nats.calls.finished"]}
    assert finished == {"CountUp": 1, "Ping": 1}
    sent = {p.attributes["rpc.method"]: p.value for p in points["rpc.nats.messages"] if p.attributes["rpc.nats.direction"] == "sent"}
    assert sent == {"CountUp": 3, "Ping": 1}
    assert all(p.value == 0 for p in points["rpc.nats.streams.open"])  # opened and closed again
    assert sum(p.count for p in points["rpc.nats.call.duration"]) == 2


async def test_tracing_with_go_style_peers(nc: NATS, server_nc: NATS, tracing: tuple[TracingInterceptor, InMemorySpanExporter]) -> None:
    """A Go client sends no traceparent: the server span is a root span and the call works as before;
    a Go server ignores the extra headers (what it is sent is the v1 request plus `traceparent`)."""
    interceptor, exporter = tracing
    server = await betterproto_nats.serve(server_nc, Demo(), interceptors=[interceptor])
    try:
        answer = await nc.request("api.v1.stream.ping", bytes(PingRequest(payload="go")), timeout=5)
        assert answer.data == bytes(PingRequest(payload="go"))
        await settle(lambda: len(exporter.get_finished_spans()) == 1)
        (root,) = exporter.get_finished_spans()
        assert root.parent is None and root.kind is SpanKind.SERVER
    finally:
        await server.stop()

    seen: list[dict[str, str]] = []

    async def go_server(msg: Any) -> None:
        seen.append(dict(msg.headers or {}))
        await server_nc.publish(msg.reply, bytes(PingRequest(payload="from go")))

    sub = await server_nc.subscribe("api.v1.stream.ping", cb=go_server)
    await flush_ordered(server_nc)  # the NATS server has the subscription before the call
    try:
        client = StreamDemoServiceNatsClient(nc, interceptors=[interceptor])
        assert (await client.ping(PingRequest(payload="x"), timeout=5)).payload == "from go"
        assert set(seen[0]) == {"traceparent", "Nats-Deadline"}  # the trace and the call's deadline, both ignored by Go
    finally:
        await sub.unsubscribe()


async def test_stats_handler_gives_endpoint_data(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(
        server_nc, Demo(), stats_handler=lambda endpoint: {"endpoint": endpoint.name, "requests": endpoint.num_requests}
    )
    try:
        await ping(StreamDemoServiceNatsClient(nc))
        stats = json.loads((await nc.request("$SRV.STATS.StreamDemoService", b"", timeout=5)).data)
        by_name = {e["name"]: e["data"] for e in stats["endpoints"]}
        assert by_name["ping"] == {"endpoint": "ping", "requests": 1} and by_name["sum"]["requests"] == 0
    finally:
        await server.stop()


async def test_typed_per_shape_interceptors_run_for_their_shape_only(nc: NATS, server_nc: NATS) -> None:
    from betterproto_nats import BidiInterceptor, UnaryInterceptor
    from gen.streaming.v1 import PingResponse

    class Shout(UnaryInterceptor[PingRequest, PingResponse]):
        """Client side: upper-cases the request; sees only unary calls."""

        def __init__(self) -> None:
            self.started: list[str] = []

        async def start(self, call: CallInfo) -> None:
            self.started.append(call.method)

        def request(self, call: CallInfo, request: PingRequest) -> PingRequest:
            return PingRequest(payload=request.payload.upper())

        def response(self, call: CallInfo, response: PingResponse) -> PingResponse:
            return PingResponse(payload=response.payload + "!")

    class CountChat(BidiInterceptor[ChatMessage, ChatMessage]):
        """Server side: counts the chat's requests and responses."""

        def __init__(self) -> None:
            self.requests = self.responses = 0

        def request(self, call: CallInfo, request: ChatMessage) -> ChatMessage:
            self.requests += 1
            return request

        def response(self, call: CallInfo, response: ChatMessage) -> ChatMessage:
            self.responses += 1
            return response

    shout, counted = Shout(), CountChat()
    server = await betterproto_nats.serve(server_nc, Demo(), interceptors=[counted])
    try:
        client = StreamDemoServiceNatsClient(nc, interceptors=[shout])
        assert (await client.ping(PingRequest(payload="hi"), timeout=5)).payload == "HI!"
        assert await count_up(client) == [1, 2, 3]
        assert await chat(client) == ["echo: a", "echo: b"]
        await settle(lambda: not server.calls)
    finally:
        await server.stop()
    assert shout.started == ["Ping"]  # not started for the streams
    assert (counted.requests, counted.responses) == (2, 2)
