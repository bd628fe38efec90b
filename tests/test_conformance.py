"""Wire conformance with protoc-gen-nats-micro's Go implementation (the v1 protocol of docs/PROTOCOL.md).

A raw nats-py peer plays the Go client against our server and the Go server against our client,
sending and checking exact subjects, headers and bodies. Bodies are the bytes of
go-wire-transcript.txt (the Go example talking to itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
import rawpeer
from rawpeer import Collector, as_go_sees_it

import betterproto_nats
from betterproto_nats.net.nats_fixes import flush_ordered
import betterproto_nats.calling.opening
import betterproto_nats.calling.base
from betterproto_nats import ErrorCode, RpcError
from examples.streaming.demo import StreamDemo
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    StreamDemoServiceNatsClient,
    SumRequest,
)

# From go-wire-transcript.txt.
COUNT_UP_REQUEST = b"\x08\x01\x10\x05"
COUNT_UP_RESPONSES = [
    b"\x08\x01\x12\x1e2026-11-24T04:30:31.900653709Z",
    b"\x08\x02\x12\x1e2026-11-24T04:30:32.101179668Z",
    b"\x08\x03\x12\x1e2026-11-24T04:30:32.301799451Z",
    b"\x08\x04\x12\x1e2026-11-24T04:30:32.502435489Z",
    b"\x08\x05\x12\x1e2026-11-24T04:30:32.703033705Z",
]
SUM_VALUES = [b"\x08\n", b"\x08\x14", b"\x08\x1e", b"\x08(", b"\x082"]
SUM_RESPONSE = b"\x08\x96\x01\x10\x05"
CHAT_HELLO = b"\n\x06client\x12\x05hello\x1a\x1e2026-11-24T04:30:33.409007687Z"
CHAT_ECHO = b"\n\x06server\x12\x0becho: hello\x1a\x1e2026-11-24T04:30:33.409440138Z"

SEQ = "Nats-Stream-Seq"
END = "Nats-Stream-End"


def seq(n: int) -> dict[str, str]:
    return {SEQ: str(n)}


GO_END = {END: "true"}
# What our client adds to its opening message: the v2 offer, which a v1 (Go) server ignores.
OFFER = {"Nats-Stream-Version": "2", "Nats-Stream-Heartbeat": "1000"}
RECEIVE_WINDOW = {"Nats-Stream-Window": "1024", "Nats-Stream-Window-Bytes": "4194304", "Nats-Stream-Batch": "256"}


def without_peer(headers: dict[str, str]) -> dict[str, str]:
    """An offer's headers without `Nats-Stream-Peer`, our connection's liveness subject (its value
    differs per connection; a Go server ignores it and never hears from it)."""
    rest = dict(headers)
    subject = rest.pop("Nats-Stream-Peer")
    assert subject.startswith("_INBOX."), subject
    return rest


@pytest.fixture(autouse=True, params=["plain", "traced"])
def tracing_on_our_side(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every conformance test runs twice: as is, and with OpenTelemetry tracing interceptors on our
    client and server. A Go peer ignores the trace headers, so the raw peers drop them; everything
    else must be byte for byte the same."""
    if request.param == "plain":
        return
    from betterproto_nats.otel import TracingInterceptor
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracingInterceptor(tracer_provider=TracerProvider())
    client_init, server_init = betterproto_nats.calling.base.ClientBase.__init__, betterproto_nats.Server.__init__

    def traced_client(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        client_init(self, *args, **{"interceptors": [tracer], **kwargs})

    def traced_server(self, nc, impl, options=None):  # type: ignore[no-untyped-def]
        options = options or betterproto_nats.ServeOptions()
        server_init(self, nc, impl, dataclasses.replace(options, interceptors=(tracer, *options.interceptors)))

    monkeypatch.setattr(betterproto_nats.calling.base.ClientBase, "__init__", traced_client)
    monkeypatch.setattr(betterproto_nats.Server, "__init__", traced_server)
    monkeypatch.setattr(rawpeer, "IGNORED_HEADERS", {"traceparent", "tracestate"})


@pytest.fixture
async def ours(nc: NATS, server_nc: NATS) -> AsyncIterator[StreamDemo]:
    """Our server, serving the example implementation."""
    impl = StreamDemo()
    server = await betterproto_nats.serve(server_nc, impl)
    yield impl
    await server.stop()


# --- A Go client against our server ---------------------------------------------------------------


async def test_go_client_server_stream(nc: NATS, ours: StreamDemo) -> None:
    async with Collector(nc) as r:
        # The Go client: no NATS reply subject, the inbox in Reply-To.
        await nc.publish("api.v1.stream.count_up", COUNT_UP_REQUEST, headers={"Reply-To": r.subject})
        for n in range(1, 6):
            msg = await r.next()
            assert msg.headers == seq(n)
            assert CountUpResponse.parse(msg.data).number == n
        end = await r.next()
        assert end.headers == {END: "true", "Nats-Stream-Count": "5"}
        assert end.data == b""


async def test_go_client_client_stream_subscribes_late(nc: NATS, ours: StreamDemo) -> None:
    r_subject = nc.new_inbox()
    ack = await nc.request("api.v1.stream.sum", b"", timeout=5, headers={"Reply-To": r_subject})
    assert ack.data == b""
    assert set(ack.headers) == {"Nats-Stream-Inbox"}
    s_subject = ack.headers["Nats-Stream-Inbox"]
    for n, body in enumerate(SUM_VALUES, 1):
        await nc.publish(s_subject, body, headers=seq(n))
    await nc.publish(s_subject, b"", headers=GO_END)
    # Like the Go client, subscribe to R only now: the server must have held its answer.
    async with Collector(nc, r_subject) as r:
        final = await r.next()
    assert final.data == SUM_RESPONSE
    assert not final.headers


async def test_go_client_bidi(nc: NATS, ours: StreamDemo) -> None:
    async with Collector(nc) as r:
        ack = await nc.request("api.v1.stream.chat", b"", timeout=5, headers={"Reply-To": r.subject})
        s_subject = ack.headers["Nats-Stream-Inbox"]
        for n, text in enumerate(["hello", "how are you", "goodbye"], 1):
            body = CHAT_HELLO if n == 1 else bytes(ChatMessage(user="client", text=text))
            await nc.publish(s_subject, body, headers=seq(n))
            reply = await r.next()
            assert reply.headers == seq(n)
            message = ChatMessage.parse(reply.data)
            assert (message.user, message.text) == ("server", f"echo: {text}")
        await nc.publish(s_subject, b"", headers=GO_END)
        end = await r.next()
        assert end.headers == {END: "true", "Nats-Stream-Count": "3"} and end.data == b""


async def test_error_end_carries_micro_error_pair(nc: NATS, server_nc: NATS) -> None:
    class FailAfterOne(StreamDemo):
        async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
            yield CountUpResponse(number=1)
            raise RpcError(ErrorCode.NOT_FOUND, "no more")

    server = await betterproto_nats.serve(server_nc, FailAfterOne())
    try:
        async with Collector(nc) as r:
            await nc.publish("api.v1.stream.count_up", COUNT_UP_REQUEST, headers={"Reply-To": r.subject})
            assert (await r.next()).headers == seq(1)
            end = await r.next()
            assert end.headers == {
                END: "true",
                "Nats-Stream-Count": "1",
                "Nats-Service-Error-Code": "NOT_FOUND",
                "Nats-Service-Error": "no more",
            }
            assert end.data == b""
    finally:
        await server.stop()


async def test_undecodable_stream_request_gets_invalid_argument_on_r(nc: NATS, ours: StreamDemo) -> None:
    async with Collector(nc) as r:
        await nc.publish("api.v1.stream.count_up", b"\x0a\x09x", headers={"Reply-To": r.subject})
        end = await r.next()
        assert end.headers[END] == "true"
        assert end.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"


async def test_old_style_server_stream_without_reply_to(nc: NATS, ours: StreamDemo) -> None:
    ack = await nc.request("api.v1.stream.count_up", COUNT_UP_REQUEST, timeout=5)
    assert ack.data == b"" and set(ack.headers) == {"Nats-Stream-Inbox"}
    # The client subscribes only after the ack; the server must not lose the first messages.
    async with Collector(nc, ack.headers["Nats-Stream-Inbox"]) as r:
        numbers = []
        for n in range(1, 6):
            msg = await r.next()
            assert msg.headers == seq(n), (msg.headers, msg.data)
            numbers.append(CountUpResponse.parse(msg.data).number)
        assert numbers == [1, 2, 3, 4, 5]
        assert (await r.next()).headers[END] == "true"


async def test_gap_from_client_is_data_loss(nc: NATS, ours: StreamDemo) -> None:
    async with Collector(nc) as r:
        ack = await nc.request("api.v1.stream.sum", b"", timeout=5, headers={"Reply-To": r.subject})
        s_subject = ack.headers["Nats-Stream-Inbox"]
        await nc.publish(s_subject, SUM_VALUES[0], headers=seq(1))
        await nc.publish(s_subject, SUM_VALUES[2], headers=seq(3))
        await nc.publish(s_subject, b"", headers=GO_END)
        final = await r.next()
        assert final.headers["Nats-Service-Error-Code"] == "DATA_LOSS"


async def test_client_stream_request_without_reply_to_is_refused(nc: NATS, ours: StreamDemo) -> None:
    answer = await nc.request("api.v1.stream.sum", b"", timeout=5)
    assert answer.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"


# --- Our client against a Go server ---------------------------------------------------------------


class GoServer:
    """A raw peer answering like the Go server, instantly from its subscription callback."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.requests: list[Msg] = []
        self.received: list[Msg] = []
        self.subs: list[object] = []

    async def serve(self, endpoint: str, handler) -> None:  # type: ignore[no-untyped-def]
        async def on_request(msg: Msg) -> None:
            self.requests.append(as_go_sees_it(msg))
            await handler(msg)

        self.subs.append(await self.nc.subscribe(f"api.v1.stream.{endpoint}", queue="q", cb=on_request))
        await flush_ordered(self.nc)

    async def handshake(self, msg: Msg, on_data) -> str:  # type: ignore[no-untyped-def]
        s_subject = self.nc.new_inbox()

        async def collect(data: Msg) -> None:
            self.received.append(as_go_sees_it(data))
            await on_data(data)

        self.subs.append(await self.nc.subscribe(s_subject, cb=collect))
        await self.nc.publish(msg.reply, b"", headers={"Nats-Stream-Inbox": s_subject})
        return msg.headers["Reply-To"]

    async def close(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()  # type: ignore[attr-defined]


@pytest.fixture
async def go(server_nc: NATS) -> AsyncIterator[GoServer]:
    peer = GoServer(server_nc)
    yield peer
    await peer.close()


async def stream_back(nc: NATS, r: str, bodies: list[bytes], end: dict[str, str] = GO_END, seqs: list[int] | None = None) -> None:
    for n, body in zip(seqs or range(1, len(bodies) + 1), bodies):
        await nc.publish(r, body, headers=seq(n))
    await nc.publish(r, b"", headers=end)


async def test_our_client_against_go_server_stream(nc: NATS, server_nc: NATS, go: GoServer) -> None:
    async def answer(msg: Msg) -> None:
        await stream_back(server_nc, msg.headers["Reply-To"], COUNT_UP_RESPONSES)

    await go.serve("count_up", answer)
    numbers = [r.number async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(start=1, count=5))]
    assert numbers == [1, 2, 3, 4, 5]
    request = go.requests[0]
    assert request.data == COUNT_UP_REQUEST
    # R in the header and as the reply subject, and the v2 offer.
    assert without_peer(request.headers) == {"Reply-To": request.reply, **OFFER, **RECEIVE_WINDOW}


async def test_our_client_against_go_client_stream(nc: NATS, server_nc: NATS, go: GoServer) -> None:
    state: dict[str, str] = {}

    async def on_data(msg: Msg) -> None:
        if msg.headers.get(END) == "true":
            await server_nc.publish(state["r"], SUM_RESPONSE)

    async def answer(msg: Msg) -> None:
        state["r"] = await go.handshake(msg, on_data)

    await go.serve("sum", answer)
    result = await StreamDemoServiceNatsClient(nc).sum([SumRequest(value=v) for v in (10, 20, 30, 40, 50)])
    assert (result.total, result.count) == (150, 5)
    request = go.requests[0]
    assert request.data == b"" and request.reply
    assert without_peer(request.headers) == {"Reply-To": request.headers["Reply-To"], **OFFER}
    assert [m.data for m in go.received[:5]] == SUM_VALUES
    assert [m.headers for m in go.received] == [seq(n) for n in range(1, 6)] + [{END: "true", "Nats-Stream-Count": "5"}]


async def test_our_client_against_go_bidi_that_speaks_first(nc: NATS, server_nc: NATS, go: GoServer) -> None:
    state = {"out": 0}

    async def on_data(msg: Msg) -> None:
        if msg.headers.get(END) == "true":
            await server_nc.publish(state["r"], b"", headers=GO_END)  # type: ignore[arg-type]
            return
        state["out"] += 1
        echo = ChatMessage(user="server", text="echo: " + ChatMessage.parse(msg.data).text)
        await server_nc.publish(state["r"], bytes(echo), headers=seq(state["out"]))  # type: ignore[arg-type]

    async def answer(msg: Msg) -> None:
        state["r"] = await go.handshake(msg, on_data)  # type: ignore[assignment]
        state["out"] = 1
        # Instantly, before the client sent anything: it must already be subscribed to R.
        await server_nc.publish(state["r"], CHAT_ECHO, headers=seq(1))  # type: ignore[arg-type]

    await go.serve("chat", answer)
    async with await StreamDemoServiceNatsClient(nc).chat() as chat:
        assert (await chat.recv()).text == "echo: hello"
        await chat.send(ChatMessage(user="client", text="hi"))
        assert (await chat.recv()).text == "echo: hi"
        await chat.close_send()
        with pytest.raises(StopAsyncIteration):
            await chat.recv()
    assert [m.headers for m in go.received] == [seq(1), {END: "true", "Nats-Stream-Count": "1"}]


@pytest.mark.parametrize(
    "end_headers,code,message",
    [
        ({END: "true", "Nats-Service-Error-Code": "NOT_FOUND", "Nats-Service-Error": "gone"}, "NOT_FOUND", "gone"),
        ({END: "true", "Status": "NOT_FOUND", "Description": "gone"}, "NOT_FOUND", "gone"),
        (
            {END: "true", "Nats-Service-Error-Code": "INTERNAL", "Nats-Service-Error": "x", "Status": "NOT_FOUND"},
            "INTERNAL",
            "x",
        ),
    ],
)
async def test_both_error_header_pairs_are_understood(
    nc: NATS, server_nc: NATS, go: GoServer, end_headers: dict[str, str], code: str, message: str
) -> None:
    async def answer(msg: Msg) -> None:
        await stream_back(server_nc, msg.headers["Reply-To"], COUNT_UP_RESPONSES[:2], end=end_headers)

    await go.serve("count_up", answer)
    got = []
    with pytest.raises(RpcError) as caught:
        async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(start=1, count=5)):
            got.append(r.number)
    assert got == [1, 2]
    assert (caught.value.code, caught.value.message) == (code, message)


@pytest.mark.parametrize(
    "seqs,end,received",
    [
        ([1, 2, 4], GO_END, [1, 2]),  # a gap
        ([1, 1, 2], GO_END, [1]),  # a repeat
        ([1, 2, 3], {END: "true", "Nats-Stream-Count": "5"}, [1, 2, 3]),  # a lost tail
    ],
)
async def test_loss_is_data_loss(
    nc: NATS, server_nc: NATS, go: GoServer, seqs: list[int], end: dict[str, str], received: list[int]
) -> None:
    async def answer(msg: Msg) -> None:
        await stream_back(server_nc, msg.headers["Reply-To"], COUNT_UP_RESPONSES[:3], end=end, seqs=seqs)

    await go.serve("count_up", answer)
    got = []
    with pytest.raises(RpcError) as caught:
        async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(start=1, count=5)):
            got.append(r.number)
    assert caught.value.code == ErrorCode.DATA_LOSS
    assert got == received


async def test_messages_without_seq_are_not_data(nc: NATS, server_nc: NATS, go: GoServer) -> None:
    async def answer(msg: Msg) -> None:
        r = msg.headers["Reply-To"]
        await server_nc.publish(r, b"junk", headers={"X-Other": "1"})
        await server_nc.publish(r, b"junk")
        await stream_back(server_nc, r, COUNT_UP_RESPONSES[:1])

    await go.serve("count_up", answer)
    assert [r.number async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest())] == [1]


async def test_no_handshake_ack_is_unavailable(nc: NATS, go: GoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def ignore(msg: Msg) -> None:
        pass

    await go.serve("sum", ignore)
    monkeypatch.setattr(betterproto_nats.calling.opening, "HANDSHAKE_TIMEOUT", 0.2)
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).sum([SumRequest(value=1)])
    assert caught.value.code == ErrorCode.UNAVAILABLE


async def test_no_responders_for_streams_is_unavailable(nc: NATS) -> None:
    client = StreamDemoServiceNatsClient(nc, subject_prefix="nobody")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for call in (
        lambda: anext(aiter(client.count_up(CountUpRequest()))),
        lambda: client.sum([]),
        lambda: anext(aiter(client.chat([]))),
    ):
        with pytest.raises(RpcError) as caught:
            await call()
        assert caught.value.code == ErrorCode.UNAVAILABLE
    assert loop.time() - started < 3
