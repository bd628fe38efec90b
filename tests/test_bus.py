"""The in-memory bus (`betterproto_nats.testing`) and the runtime's own logic over it, in milliseconds:
NATS semantics the runtime relies on, every RPC shape, flow control, ordering and loss detection,
deadlines, liveness, cancellation, and unit-testing a handler with `call_context`."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import nats.errors
import pytest
from nats.aio.msg import Msg

import betterproto_nats
import betterproto_nats.streaming.first_hop
from betterproto_nats import ErrorCode, RpcError, current_call
from betterproto_nats.net.bus import subject_matches
from betterproto_nats.core.negotiation import DEFAULT_WINDOW_MESSAGES
from betterproto_nats.testing import InMemoryBus, call_context, serve_in_memory
from demo_service import Demo
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)

pytestmark = pytest.mark.timeout(10)


class Received:
    """A callback that records messages and lets a test wait for a count."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self.changed = asyncio.Event()

    async def __call__(self, msg: Msg) -> None:
        self.messages.append(msg)
        self.changed.set()

    async def until(self, count: int) -> list[Msg]:
        while len(self.messages) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 2)
        return self.messages


# --- The bus ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern,subject,matches",
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        (">", "x", True),
        ("a.*.c", "a.b.c", True),
        ("a.b", "a.c", False),
    ],
)
def test_subject_matching(pattern: str, subject: str, matches: bool) -> None:
    assert subject_matches(pattern, subject) is matches


async def test_bus_delivers_in_order_with_headers_and_wildcards() -> None:
    bus = InMemoryBus()
    a, b = bus.connect(), bus.connect()
    got = Received()
    await b.subscribe("orders.>", got)
    for i in range(100):
        await a.publish(f"orders.{i % 3}", str(i).encode(), headers={"N": str(i)})
    messages = await got.until(100)
    assert [int(m.data) for m in messages] == list(range(100))
    assert [m.headers["N"] for m in messages] == [str(i) for i in range(100)]  # type: ignore[index]
    await a.close()
    await b.close()


async def test_bus_queue_groups_deliver_each_message_once() -> None:
    bus = InMemoryBus()
    pub = bus.connect()
    members = [Received() for _ in range(3)]
    conns = [bus.connect() for _ in members]
    for conn, member in zip(conns, members):
        await conn.subscribe("work", member, queue="q")
    plain = Received()
    await pub.subscribe("work", plain)
    for i in range(60):
        await pub.publish("work", b"x")
    await plain.until(60)
    await asyncio.sleep(0)
    while sum(len(m.messages) for m in members) < 60:
        await asyncio.sleep(0)
    assert sum(len(m.messages) for m in members) == 60


async def test_bus_no_responders_max_payload_and_closed() -> None:
    bus = InMemoryBus(max_payload=1000)
    conn = bus.connect()
    with pytest.raises(nats.errors.NoRespondersError):
        await conn.request("nobody", b"", timeout=1)
    status = Received()
    inbox = conn.new_inbox()
    await conn.subscribe(inbox, status)
    await conn.publish("nobody.here", b"", reply=inbox)  # a plain publish with a reply gets the 503 too
    assert (await status.until(1))[0].headers == {"Status": "503"}
    with pytest.raises(nats.errors.MaxPayloadError):
        await conn.publish("big", bytes(900), headers={"X": "y" * 200})  # headers count
    await conn.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await conn.publish("x", b"")


# --- The runtime over the bus ----------------------------------------------------------------------


async def test_every_shape_in_memory() -> None:
    async with serve_in_memory(Demo()) as conn:
        client = StreamDemoServiceNatsClient(conn)
        assert (await client.ping(PingRequest(payload="hi"))).payload == "hi"
        assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=3))] == [1, 2, 3]
        assert (await client.sum([SumRequest(value=v) for v in (1, 2, 3)])).total == 6
        assert [m.text async for m in client.chat([ChatMessage(text="a"), ChatMessage(text="b")])] == [
            "echo: a",
            "echo: b",
        ]
        with pytest.raises(RpcError) as failed:
            await client.sum([SumRequest(value=-1)])
        assert failed.value.code == ErrorCode.INVALID_ARGUMENT


async def test_discovery_in_memory() -> None:
    async with serve_in_memory(Demo()) as conn:
        answer = await conn.request("$SRV.PING", b"", timeout=1)
        assert b'"name"' in answer.data


class Gate(StreamDemoServiceNatsBase):
    """Handlers that wait for `release`, and record how they end."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.consumed = 0
        self.cancelled = asyncio.Event()

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        try:
            for i in range(request.count):
                yield CountUpResponse(number=i)
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        await self.release.wait()
        async for _ in requests:
            self.consumed += 1
        return SumResponse(count=self.consumed)


async def test_flow_control_holds_the_sender_to_the_window() -> None:
    impl = Gate()
    async with serve_in_memory(impl) as conn:
        stream = await StreamDemoServiceNatsClient(conn).sum()
        window = stream.call.writer.rules
        assert window is not None and window.messages == DEFAULT_WINDOW_MESSAGES
        total = 3 * DEFAULT_WINDOW_MESSAGES
        sender = asyncio.create_task(stream.send_all(SumRequest(value=1) for _ in range(total)))
        while len(window._in_flight) < DEFAULT_WINDOW_MESSAGES:
            await asyncio.sleep(0)
        for _ in range(20):  # the handler reads nothing: the sender stays at the window
            await asyncio.sleep(0)
        assert not sender.done() and window.peak_messages == DEFAULT_WINDOW_MESSAGES
        impl.release.set()
        await sender
        assert (await stream.close_and_recv()).count == total
        assert window.peak_messages == DEFAULT_WINDOW_MESSAGES


async def test_a_gap_in_sequence_numbers_is_data_loss() -> None:
    async with serve_in_memory(Demo()) as conn:
        stream = await StreamDemoServiceNatsClient(conn).chat()
        await stream.send(ChatMessage(text="one"))
        assert (await stream.recv()).text == "echo: one"
        stream.call.writer.rules.sent += 1  # skip a sequence number, as a lost message would
        await stream.send(ChatMessage(text="three"))
        with pytest.raises(RpcError) as lost:
            await stream.recv()
        assert lost.value.code == ErrorCode.DATA_LOSS


async def test_deadline_ends_the_call_on_both_sides() -> None:
    impl = Gate()
    async with serve_in_memory(impl) as conn:
        with pytest.raises(RpcError) as late:
            await StreamDemoServiceNatsClient(conn).sum([SumRequest(value=1)], timeout=0.05)
        assert late.value.code == ErrorCode.DEADLINE_EXCEEDED


async def test_cancel_reaches_the_handler() -> None:
    impl = Gate()
    async with serve_in_memory(impl) as conn:
        stream = await StreamDemoServiceNatsClient(conn).count_up(CountUpRequest(count=1))
        assert (await stream.recv()).number == 0
        await stream.close()
        await asyncio.wait_for(impl.cancelled.wait(), 2)


async def test_a_silent_peer_is_dropped_after_three_heartbeats() -> None:
    impl = Gate()
    async with serve_in_memory(impl) as conn:
        client = StreamDemoServiceNatsClient(conn, heartbeat=0.05)
        stream = await client.count_up(CountUpRequest(count=1))
        assert (await stream.recv()).number == 0
        session = stream.call.session
        assert session is not None and session.group is not None  # heartbeats shared per connection
        manager = session.group.manager
        assert manager._timer is not None
        manager._timer.cancel()  # the client's connection goes silent without a word
        manager._timer = None
        with pytest.raises(RpcError) as told:  # told per stream: it might only have been paused
            await asyncio.wait_for(stream.recv(), 2)
        assert told.value.code == ErrorCode.UNAVAILABLE and "unreachable" in told.value.message
        await asyncio.wait_for(impl.cancelled.wait(), 2)  # the server gave up on it
        await stream.close()


# --- Unit-testing a handler --------------------------------------------------------------------------


class Greeter(StreamDemoServiceNatsBase):
    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        call = current_call()
        call.set_response_headers({"X-User": call.headers.get("X-User", "?")})
        for i in range(request.count):
            yield CountUpResponse(number=i)


async def test_a_handler_runs_with_a_call_context_set_up_by_a_test() -> None:
    with call_context(headers={"X-User": "ada"}, timeout=5) as call:
        numbers = [r.number async for r in Greeter().count_up(CountUpRequest(count=2))]
        assert 0 < (call.time_remaining() or 0) <= 5
    assert numbers == [0, 1]
    assert call.response_headers == {"X-User": "ada"}


async def test_serve_accepts_a_transport_and_clients_too() -> None:
    bus = InMemoryBus()
    server = await betterproto_nats.serve(bus.connect(), Demo())
    client = StreamDemoServiceNatsClient(bus.connect())
    assert (await client.ping(PingRequest(payload="t"))).payload == "t"
    await server.stop()
    with pytest.raises(TypeError):
        StreamDemoServiceNatsClient(object())  # type: ignore[arg-type]


# --- Handlers are checked when serving starts; call state machines refuse invalid transitions -------


class SyncPing(StreamDemoServiceNatsBase):
    def ping(self, request: PingRequest) -> object:  # type: ignore[override]
        return request


class CoroutineStream(StreamDemoServiceNatsBase):
    async def count_up(self, request: CountUpRequest) -> list[CountUpResponse]:  # type: ignore[override]
        return [CountUpResponse(number=1)]


@pytest.mark.parametrize(
    "impl,says",
    [
        (SyncPing(), "SyncPing.ping must be an `async def`"),
        (CoroutineStream(), "CoroutineStream.count_up serves a stream: it must be an `async def` that yields"),
        (Demo, "needs an instance, not the class Demo: serve(nc, Demo())"),
        (object(), "is not a generated <Service>NatsBase subclass"),
    ],
)
async def test_serve_checks_handlers_before_any_call(impl: object, says: str) -> None:
    with pytest.raises(TypeError) as refused:
        await betterproto_nats.serve(InMemoryBus().connect(), impl)
    assert says in str(refused.value)


async def test_client_call_state_machine() -> None:
    from betterproto_nats.core.states import CallState, InvalidTransition

    async with serve_in_memory(Demo()) as conn:
        stream = await StreamDemoServiceNatsClient(conn).chat()
        call = stream.call
        assert call.state is CallState.OPEN
        await stream.send(ChatMessage(text="x"))
        await stream.close_send()
        assert call.state is CallState.HALF_CLOSED
        with pytest.raises(RpcError) as late:
            await stream.send(ChatMessage(text="late"))  # our side is closed: refused, not sent
        assert late.value.code == ErrorCode.INTERNAL
        assert [m.text async for m in stream] == ["echo: x"]
        assert call.state is CallState.CLOSED and call.released
        with pytest.raises(InvalidTransition):
            call.move(CallState.OPEN)  # nothing follows the end
        abandoned = await StreamDemoServiceNatsClient(conn).count_up(CountUpRequest(count=10**6))
        await abandoned.recv()
        await abandoned.close()
        assert abandoned.call.state is CallState.FAILED


async def test_server_call_state_machine() -> None:
    from betterproto_nats.core.states import InvalidTransition, ServerState
    from betterproto_nats.serving.responder import Responder
    from betterproto_nats.serving.unary import UnaryCall

    states: list[object] = []

    class Watching(Demo):
        async def ping(self, request: PingRequest) -> object:
            states.append(next(iter(server.unary_calls)).state)
            return await super().ping(request)

    bus = InMemoryBus()
    server = await betterproto_nats.serve(bus.connect(), Watching())
    assert (await StreamDemoServiceNatsClient(bus.connect()).ping(PingRequest(payload="p"))).payload == "p"
    assert states == [ServerState.SERVING]
    request = Msg(_client=None, subject="api.v1.stream.ping")  # type: ignore[arg-type]
    call = UnaryCall(server.endpoints[0].served, request)
    with pytest.raises(InvalidTransition):
        call.move(ServerState.CLOSED)  # a call that has not been served cannot have ended
    shape = server.endpoints[1].shape
    assert shape is not None
    count_up = Responder(server.transport, server.impl, server.spec.methods[1], "x/y", server.spec.codec, request, server.policy, shape)
    with pytest.raises(InvalidTransition):
        count_up.move(ServerState.CLOSED)
    await server.stop()


# --- The first message to an inbox the peer just created ---------------------------------------------


async def late_server(conn: object, subscribe_after: float | None, seen: list[Msg]) -> object:
    """A raw server for `sum` whose inbox S exists only `subscribe_after` seconds after its ack (as
    when interest has not yet crossed a gateway); it records what reaches S."""
    s_subject = "_INBOX.late.s"

    async def collect(msg: Msg) -> None:
        seen.append(msg)

    async def on_request(msg: Msg) -> None:
        await conn.publish(msg.reply, b"", headers={"Nats-Stream-Inbox": s_subject})  # type: ignore[attr-defined]
        if subscribe_after is not None:
            await asyncio.sleep(subscribe_after)  # the simulated propagation delay
            await conn.subscribe(s_subject, collect)  # type: ignore[attr-defined]

    return await conn.subscribe("api.v1.stream.sum", on_request)  # type: ignore[attr-defined]


async def test_the_first_message_waits_until_the_peers_inbox_is_known() -> None:
    bus = InMemoryBus()
    seen: list[Msg] = []
    await late_server(bus.connect(), 0.03, seen)
    stream = await StreamDemoServiceNatsClient(bus.connect()).sum(timeout=5)
    await stream.send(SumRequest(value=1))  # refused with no-responders until S exists, then delivered
    await stream.send(SumRequest(value=2))
    await stream.call.end_send()
    while len(seen) < 3:
        await asyncio.sleep(0.001)
    assert [m.headers for m in seen] == [
        {"Nats-Stream-Seq": "1"},
        {"Nats-Stream-Seq": "2"},
        {"Nats-Stream-End": "true", "Nats-Stream-Count": "2"},
    ]  # each once, in order: nothing lost, nothing repeated
    await stream.close()


async def test_an_inbox_that_never_appears_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(betterproto_nats.streaming.first_hop, "FIRST_HOP_WAIT", 0.1)
    bus = InMemoryBus()
    await late_server(bus.connect(), None, [])
    stream = await StreamDemoServiceNatsClient(bus.connect()).sum(timeout=5)
    with pytest.raises(RpcError) as unreachable:
        await stream.send(SumRequest(value=1))
    assert unreachable.value.code == ErrorCode.UNAVAILABLE
    await stream.close()


# --- Generated code of codegen API 2: typed descriptors, awaitables that say when `await` is missing ---


async def test_a_missing_await_says_so_on_every_call_style() -> None:
    async with serve_in_memory(Demo()) as conn:
        client = StreamDemoServiceNatsClient(conn)
        forgotten = [
            (lambda: client.ping(PingRequest(payload="x")).payload, "ping"),
            (lambda: client.sum().send(SumRequest(value=1)), "sum"),
            (lambda: client.sum([SumRequest(value=1)]).total, "sum"),
            (lambda: client.count_up(CountUpRequest(count=1)).recv(), "count_up"),
            (lambda: client.chat().send(ChatMessage(text="x")), "chat"),
        ]
        for use, name in forgotten:
            with pytest.raises(TypeError) as missing:
                use()
            assert f"`await client.{name}(...)`" in str(missing.value)
        # Used as intended: awaited, or as async context managers that close the stream at the end.
        assert (await client.ping(PingRequest(payload="x"))).payload == "x"
        async with client.sum() as upload:
            await upload.send(SumRequest(value=4))
            assert (await upload.close_and_recv()).total == 4
        async with client.chat() as chat:
            await chat.send(ChatMessage(text="y"))
            assert (await chat.recv()).text == "echo: y"
        assert chat.call.released
        async with client.count_up(CountUpRequest(start=1, count=2)) as numbers:
            assert [r.number async for r in numbers] == [1, 2]


async def test_unary_and_client_stream_calls_are_coroutines() -> None:
    """`asyncio.create_task(client.ping(...))` works as with any coroutine (a call made but never
    awaited starts nothing); a stream to be opened is no coroutine (its `send` is the stream's)."""
    async with serve_in_memory(Demo()) as conn:
        client = StreamDemoServiceNatsClient(conn)
        ping = asyncio.create_task(client.ping(PingRequest(payload="t")))
        total = asyncio.create_task(client.sum([SumRequest(value=2), SumRequest(value=3)]))
        assert (await ping).payload == "t" and (await total).total == 5
        assert asyncio.iscoroutine(client.ping(PingRequest()))
        assert not asyncio.iscoroutine(client.sum())


def test_generated_descriptors_are_typed_and_shared() -> None:
    from gen.streaming.v1 import PingResponse, StreamDemoServiceNatsBase, StreamDemoServiceNatsMethods

    method = StreamDemoServiceNatsMethods.ping
    assert method.request is PingRequest and method.response is PingResponse
    assert StreamDemoServiceNatsBase._nats_service.methods[0] is method  # one descriptor, no lookup by name
