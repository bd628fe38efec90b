"""Unary calls end to end against a real nats-server: results, errors, headers, timeouts."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any, AsyncIterator

import nats
import nats.errors
import pytest
from conftest import needs_fast_paths, settle, subscriptions
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError, current_call
from betterproto_nats.core.headers import DEADLINE, ERROR_CODE
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.serving.unary_batch import PROBE_EVERY
from gen.streaming.v1 import (
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)


class Pinger(StreamDemoServiceNatsBase):
    def __init__(self) -> None:
        self.seen_headers: dict[str, str] = {}

    async def ping(self, request: PingRequest) -> PingResponse:
        call = current_call()
        self.seen_headers = dict(call.headers)
        if request.payload == "fail":
            raise RpcError(ErrorCode.NOT_FOUND, "no such thing")
        if request.payload == "crash":
            raise ValueError("secret internal detail")
        if request.payload == "headers":
            call.set_response_headers({"X-Answer": "42"}, trace="abc")
        if request.payload == "newline":
            raise RpcError(ErrorCode.INVALID_ARGUMENT, "line one\r\nline two")
        return PingResponse(payload="pong: " + request.payload, count=len(request.payload))


@pytest.fixture
async def pinger(nc: NATS, server_nc: NATS) -> Pinger:
    impl = Pinger()
    server = await betterproto_nats.serve(server_nc, impl)
    yield impl
    await server.stop()


async def test_ping_round_trip(nc: NATS, pinger: Pinger) -> None:
    client = StreamDemoServiceNatsClient(nc)
    assert await client.ping(PingRequest(payload="hello")) == PingResponse(payload="pong: hello", count=5)


@needs_fast_paths
async def test_a_connection_that_made_calls_drains(nats_server: Any, pinger: Pinger) -> None:
    """nats-py's `drain()` on a client connection after unary calls (whose answers the fast path
    delivers directly) finishes instead of failing on the response subscription."""
    conn = await nats.connect(nats_server.url, allow_reconnect=False)
    await StreamDemoServiceNatsClient(conn).ping(PingRequest(payload="x"))
    await asyncio.wait_for(conn.drain(), 5)
    assert conn.is_closed


async def test_rpc_error_reaches_client_with_code_and_message(nc: NATS, pinger: Pinger) -> None:
    client = StreamDemoServiceNatsClient(nc)
    with pytest.raises(RpcError) as caught:
        await client.ping(PingRequest(payload="fail"))
    assert (caught.value.code, caught.value.message) == (ErrorCode.NOT_FOUND, "no such thing")
    assert caught.value.method == "streaming.v1.StreamDemoService/Ping"


async def test_other_exception_is_internal_without_traceback(nc: NATS, pinger: Pinger) -> None:
    raw = await nc.request("api.v1.stream.ping", bytes(PingRequest(payload="crash")), timeout=5)
    assert raw.headers["Nats-Service-Error-Code"] == "INTERNAL"
    assert "Traceback" not in raw.headers["Nats-Service-Error"]
    assert "File " not in raw.headers["Nats-Service-Error"]
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="crash"))
    assert caught.value.code == ErrorCode.INTERNAL


async def test_error_message_with_newlines_is_sanitised(nc: NATS, pinger: Pinger) -> None:
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="newline"))
    assert caught.value.message == "line one line two"


async def test_undecodable_request_is_invalid_argument_and_service_keeps_serving(nc: NATS, pinger: Pinger) -> None:
    raw = await nc.request("api.v1.stream.ping", b"\x0a\x05ab", timeout=5)  # length runs past the end
    assert raw.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"
    raw = await nc.request("api.v1.stream.ping", b"\xff\xff\xff", timeout=5)
    assert raw.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"
    assert (await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="x"))).payload == "pong: x"


async def test_no_responders_is_unavailable_at_once(nc: NATS) -> None:
    client = StreamDemoServiceNatsClient(nc, subject_prefix="nobody.home")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RpcError) as caught:
        await client.ping(PingRequest(), timeout=30)
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert loop.time() - started < 5  # far below the 30 s timeout: answered, not timed out


async def test_timeout_is_deadline_exceeded(nc: NATS, server_nc: NATS) -> None:
    entered = asyncio.Event()

    class Stuck(StreamDemoServiceNatsBase):
        async def ping(self, request: PingRequest) -> PingResponse:
            entered.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    server = await betterproto_nats.serve(server_nc, Stuck(), grace_period=0)
    try:
        with pytest.raises(RpcError) as caught:
            await StreamDemoServiceNatsClient(nc).ping(PingRequest(), timeout=0.2)
        assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED
        assert entered.is_set()
    finally:
        await server.stop()


async def test_a_unary_timeout_travels_to_the_server(nc: NATS, server_nc: NATS) -> None:
    """The client's timeout is the handler's deadline too: it sees the time left, and is stopped then."""
    seen: list[float | None] = []
    cancelled = asyncio.Event()

    class Slow(StreamDemoServiceNatsBase):
        async def ping(self, request: PingRequest) -> PingResponse:
            seen.append(current_call().time_remaining())
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            return PingResponse()

    server = await betterproto_nats.serve(server_nc, Slow(), grace_period=0)
    try:
        with pytest.raises(RpcError) as caught:
            await StreamDemoServiceNatsClient(nc).ping(PingRequest(), timeout=0.3)
        assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), 2)  # not the handler's full 10 s
        assert seen[0] is not None and 0 < seen[0] <= 0.3
    finally:
        await server.stop()


async def test_caller_headers_reach_handler_and_response_headers_reach_client(nc: NATS, pinger: Pinger) -> None:
    client = StreamDemoServiceNatsClient(nc)
    received: dict[str, str] = {}
    await client.ping(PingRequest(payload="headers"), headers={"X-Tenant": "acme"}, response_headers=received)
    assert pinger.seen_headers == {"X-Tenant": "acme"}
    assert received == {"X-Answer": "42", "trace": "abc"}


async def test_protocol_headers_are_refused_from_callers(nc: NATS, pinger: Pinger) -> None:
    with pytest.raises(ValueError):
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(), headers={"Nats-Stream-Seq": "1"})


async def test_unimplemented_method(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, StreamDemoServiceNatsBase())
    try:
        with pytest.raises(RpcError) as caught:
            await StreamDemoServiceNatsClient(nc).ping(PingRequest())
        assert caught.value.code == ErrorCode.UNIMPLEMENTED
    finally:
        await server.stop()


async def test_oversized_request_fails_before_sending(nc: NATS, pinger: Pinger) -> None:
    big = PingRequest(payload="x" * nc.max_payload)
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).ping(big)
    assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED
    assert "max_payload" in caught.value.message
    assert nc.is_connected  # the server did not cut us off


async def test_stop_removes_every_subscription(nc: NATS, server_nc: NATS) -> None:
    before = subscriptions(server_nc)
    server = await betterproto_nats.serve(server_nc, Pinger())
    assert subscriptions(server_nc) == before + 6 + 9 + 2  # six endpoints, nine $SRV subjects, two $SRV.PROTO (schema reflection)
    await server.stop()
    assert subscriptions(server_nc) == before


async def test_a_closed_connection_is_unavailable_for_every_shape(nats_server, pinger: Pinger) -> None:  # type: ignore[no-untyped-def]
    from conftest import connect

    from gen.streaming.v1 import ChatMessage, CountUpRequest, SumRequest

    conn = await connect(nats_server.url)
    client = StreamDemoServiceNatsClient(conn)
    await conn.close()
    calls = [
        lambda: client.ping(PingRequest()),
        lambda: _first(client.count_up(CountUpRequest(count=1))),
        lambda: client.sum([SumRequest(value=1)]),
        lambda: _first(client.chat([ChatMessage(text="x")])),
    ]
    for call in calls:
        with pytest.raises(RpcError) as caught:
            await call()
        assert caught.value.code == ErrorCode.UNAVAILABLE


async def _first(stream):  # type: ignore[no-untyped-def]
    async for item in stream:
        return item


async def test_a_body_that_decodes_into_the_wrong_field_type_still_gets_an_answer(nc: NATS, server_nc: NATS) -> None:
    """betterproto decodes a varint into a string field; echoing it back cannot be encoded. The caller
    gets an error answer at once (never silence), and the service keeps serving. (PingRequest now has a
    generated codec, which keeps a field of the wrong wire type as an unknown field, as protobuf does:
    the echo is then an empty PingResponse, and `nc.request` returning at all is the answer.)"""
    from demo_service import Demo  # ping echoes the request's payload

    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        answer = await nc.request("api.v1.stream.ping", b"\x08\x05", timeout=5)  # field 1 (a string) as a varint
        assert (answer.headers or {}).get("Nats-Service-Error-Code") or PingResponse.parse(answer.data) == PingResponse()
        assert (await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="ok"), timeout=5)).payload == "ok"
    finally:
        await server.stop()


async def test_a_cancelled_flush_leaves_the_connection_reading(nc: NATS, pinger: Pinger) -> None:
    """nats-py 2.16 stops reading a connection for good when a PONG answers a flush whose waiter was
    cancelled; ours (used wherever a peer can cancel us mid-flush) is shielded from that."""

    for _ in range(5):
        waiting = asyncio.create_task(flush_ordered(nc))
        for _ in range(1000):  # bounded: until the PING is out and its PONG awaited
            if nc._pongs:
                break
            await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    assert (await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="still"), timeout=5)).payload == "pong: still"


class Injector(StreamDemoServiceNatsBase):
    """Handlers that change their response-header dict behind `set_response_headers`' back."""

    async def ping(self, request: PingRequest) -> PingResponse:
        current_call().response_headers["X-Note"] = "a\r\nNats-Service-Error-Code: NOT_FOUND"
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        current_call().response_headers["X-Note"] = "a\r\nNats-Service-Error-Code: NOT_FOUND"
        yield CountUpResponse(number=1)


async def test_response_headers_changed_directly_cannot_inject_headers(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Injector())
    try:
        client = StreamDemoServiceNatsClient(nc)
        received: dict[str, str] = {}
        assert (await client.ping(PingRequest(payload="p"), response_headers=received)).payload == "p"
        assert received.get("X-Note") == "a Nats-Service-Error-Code: NOT_FOUND"  # one header, CR/LF gone
        stream = await client.count_up(CountUpRequest(count=1))
        assert [r.number async for r in stream] == [1]
        assert stream.headers.get("X-Note") == "a Nats-Service-Error-Code: NOT_FOUND"
    finally:
        await server.stop()


@needs_fast_paths
async def test_requests_use_the_lean_path_on_this_nats_py(nc: NATS) -> None:
    """Unary calls go through `nats_fast.Requests` (nats-py's response subscription without the
    per-call cost of `request()`); if a nats-py upgrade changes its internals, this fails (calls still
    work through `request()`, only slower). Replies, timeouts, no responders and `request()` itself
    all still work side by side."""
    from betterproto_nats.net.nats_fast import Requests
    from betterproto_nats.net.transport import transport_of

    requests = Requests.of(nc)
    assert requests.usable

    async def echo(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data + b"!", headers=msg.headers)

    sub = await nc.subscribe("lean.echo", cb=echo)
    await nc.flush()
    transport = transport_of(nc)
    answers = await asyncio.gather(*(transport.request("lean.echo", str(i).encode(), None, {"K": str(i)}) for i in range(20)))
    assert [(a.data, (a.headers or {}).get("K")) for a in answers] == [(f"{i}!".encode(), str(i)) for i in range(20)]
    assert requests.count >= 20 and not nc._resp_map  # every request's entry is gone again
    assert (await nc.request("lean.echo", b"old", timeout=5)).data == b"old!"  # nats-py's own, beside ours
    with pytest.raises(nats.errors.NoRespondersError):
        await transport.request("lean.nobody", b"", 5)
    await sub.unsubscribe()
    async def ignore(msg: Msg) -> None:
        pass

    silent = await nc.subscribe("lean.silent", cb=ignore)
    with pytest.raises(nats.errors.TimeoutError):
        await transport.request("lean.silent", b"", 0.05)
    await silent.unsubscribe()
    assert not nc._resp_map


# --- Calls read in one loop turn share a task until one has to wait (`UnaryBatch`) -----------------

MARK: contextvars.ContextVar[str] = contextvars.ContextVar("test_unary_mark")


class Waiting(StreamDemoServiceNatsBase):
    """`wait…` waits for `release`; `timeout…` waits under `asyncio.timeout`; the rest answer at once.
    Each call records the task it runs in and what it saw of a context variable it then sets."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[object] | None] = {}
        self.saw: dict[str, str | None] = {}

    async def ping(self, request: PingRequest) -> PingResponse:
        name = request.payload
        self.saw[name] = MARK.get(None)
        MARK.set(name)
        self.tasks[name] = asyncio.current_task()
        if name.startswith("wait"):
            await self.release.wait()
        if name.startswith("timeout"):
            try:
                async with asyncio.timeout(0.05):
                    await asyncio.Event().wait()
            except TimeoutError:
                return PingResponse(payload=f"{name}: timed out")
        return PingResponse(payload=f"{name}: {MARK.get()}")


async def read_in_one_turn(server: betterproto_nats.Server, conn: NATS, calls: dict[str, dict[str, str] | None]) -> None:
    """Requests to Ping handed to the endpoint one after another in one step, as nats-py hands over
    what one socket read brought: one batch. Answers go to `_INBOX.batch.<payload>`."""
    endpoint = next(e for e in server.endpoints if e.method.name == "Ping")
    for payload, headers in calls.items():
        body = bytes(PingRequest(payload=payload))
        endpoint._on_request(Msg(_client=conn, subject=endpoint.subject, reply=f"_INBOX.batch.{payload}", data=body, headers=headers))


async def batch_answers(conn: NATS) -> tuple[dict[str, Msg], Subscription]:
    """The answers to `read_in_one_turn`'s requests, by payload, as they come."""
    answers: dict[str, Msg] = {}

    async def collect(msg: Msg) -> None:
        answers[msg.subject.rsplit(".", 1)[1]] = msg

    sub = await conn.subscribe("_INBOX.batch.*", cb=collect)
    await flush_ordered(conn)  # (nats-py's own `flush` can come back before the server has the SUB)
    return answers, sub


async def test_calls_read_together_do_not_wait_for_one_that_waits(nc: NATS, server_nc: NATS) -> None:
    """Calls that answer at once answer while others read with them wait; each call that waits has a
    task of its own (its `asyncio.timeout` and its deadline end only it) and every call starts with
    a context of its own."""
    impl = Waiting()
    server = await betterproto_nats.serve(server_nc, impl, grace_period=1)
    answers, sub = await batch_answers(nc)
    soon = str(int((time.time() + 0.1) * 1000))
    try:
        await read_in_one_turn(
            server, server_nc, {"a": None, "wait1": None, "b": None, "timeout1": None, "wait-deadline": {DEADLINE: soon}, "wait2": None, "c": None}
        )
        await settle(lambda: {"a", "b", "c", "timeout1", "wait-deadline"} <= set(answers))
        assert not {"wait1", "wait2"} & set(answers)
        assert {name: PingResponse.parse(answers[name].data).payload for name in ("a", "b", "c", "timeout1")} == {
            "a": "a: a", "b": "b: b", "c": "c: c", "timeout1": "timeout1: timed out",
        }  # fmt: skip
        assert answers["wait-deadline"].headers is not None and answers["wait-deadline"].headers.get(ERROR_CODE) == ErrorCode.DEADLINE_EXCEEDED
        assert set(impl.saw.values()) == {None}  # no call saw what another set
        waiting = [impl.tasks[name] for name in ("wait1", "timeout1", "wait-deadline", "wait2")]
        assert len(set(map(id, waiting))) == 4  # a task each
        assert impl.tasks["a"] is impl.tasks["wait1"]  # "a" answered in the task that "wait1" then kept: no task of its own
        impl.release.set()
        await settle(lambda: {"wait1", "wait2"} <= set(answers))
        assert PingResponse.parse(answers["wait2"].data).payload == "wait2: wait2"
        await settle(lambda: not server.unary_calls and not server.unary_tasks)
        assert all(e.active == 0 for e in server.endpoints)
    finally:
        await sub.unsubscribe()
        await server.stop()


async def test_deadlines_are_timed_only_for_calls_that_wait(nc: NATS, server_nc: NATS) -> None:
    """A call that answers without waiting arms no timer for its deadline (nothing could cancel it);
    one that waits is cancelled at its deadline, in a batch and when it runs in a task of its own from
    the start (the endpoint's calls wait)."""
    impl = Waiting()
    server = await betterproto_nats.serve(server_nc, impl, grace_period=1)
    answers, sub = await batch_answers(nc)
    loop = asyncio.get_running_loop()
    timed: list[object] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(callback, "__name__", "") == "_expire":
            timed.append(getattr(callback, "__self__", None))
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    soon = {DEADLINE: str(int((time.time() + 0.2) * 1000))}
    later = {DEADLINE: str(int((time.time() + 60) * 1000))}
    try:
        await read_in_one_turn(server, server_nc, {"e": later, "f": later, "wait-batched": soon})
        await settle(lambda: {"e", "f", "wait-batched"} <= set(answers))
        assert [call.msg.reply for call in timed] == ["_INBOX.batch.wait-batched"]  # type: ignore[attr-defined]
        endpoint = next(e for e in server.endpoints if e.method.name == "Ping")
        assert endpoint._calls_wait  # the next calls each get a task of their own at once
        await read_in_one_turn(server, server_nc, {"wait-alone": soon, "g": later})
        await settle(lambda: {"wait-alone", "g"} <= set(answers))
        for name in ("wait-batched", "wait-alone"):
            assert (answers[name].headers or {}).get(ERROR_CODE) == ErrorCode.DEADLINE_EXCEEDED
        assert {name: PingResponse.parse(answers[name].data).payload for name in ("e", "f", "g")} == {"e": "e: e", "f": "f: f", "g": "g: g"}
        assert len(timed) == 3  # "g" ran alone too: armed before its handler, as it could not be seen to wait
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        impl.release.set()
        await sub.unsubscribe()
        await server.stop()


async def test_stopping_ends_waiting_calls_of_a_batch_and_keeps_nothing(nc: NATS, server_nc: NATS) -> None:
    impl = Waiting()
    server = await betterproto_nats.serve(server_nc, impl, grace_period=0.1)
    answers, sub = await batch_answers(nc)
    try:
        await read_in_one_turn(server, server_nc, {"wait3": None, "d": None, "wait4": None})
        await settle(lambda: "d" in answers and "wait4" in impl.tasks)
        await server.stop()
        await settle(lambda: {"wait3", "wait4"} <= set(answers))
        for name in ("wait3", "wait4"):
            assert (answers[name].headers or {}).get(ERROR_CODE) == ErrorCode.UNAVAILABLE
        assert not server.unary_calls and not server.unary_tasks and all(e.active == 0 for e in server.endpoints)
    finally:
        await sub.unsubscribe()


async def test_calls_that_all_wait_all_start_within_two_loop_turns(nc: NATS, server_nc: NATS) -> None:
    """Twenty calls read together whose handlers all wait (as handlers doing I/O do): every handler
    has started two loop turns later, not one turn after another."""
    impl = Waiting()
    server = await betterproto_nats.serve(server_nc, impl)
    try:
        await read_in_one_turn(server, server_nc, {f"wait{i}": None for i in range(20)})
        for _ in range(2):
            await asyncio.sleep(0)
        assert len(impl.tasks) == 20
        impl.release.set()
        await settle(lambda: not server.unary_calls and not server.unary_tasks)
    finally:
        await server.stop()


async def test_while_calls_wait_each_call_gets_a_task_at_once(nc: NATS, server_nc: NATS) -> None:
    """After a read with a call that waited, the endpoint's next calls get a task each at once (calls
    that always wait start as before batches); one in `PROBE_EVERY` goes in a batch again, and once
    such a call answers at once, calls share a task again."""
    impl = Waiting()
    server = await betterproto_nats.serve(server_nc, impl)
    answers, sub = await batch_answers(nc)
    try:
        await read_in_one_turn(server, server_nc, {"wait5": None})
        await settle(lambda: "wait5" in impl.tasks)
        await read_in_one_turn(server, server_nc, {"f": None, "g": None})
        await settle(lambda: {"f", "g"} <= set(answers))
        assert impl.tasks["f"] is not impl.tasks["g"]
        probes = {f"p{n}": None for n in range(PROBE_EVERY)}
        await read_in_one_turn(server, server_nc, probes)
        await settle(lambda: set(probes) <= set(answers))
        await read_in_one_turn(server, server_nc, {"h": None, "i": None})
        await settle(lambda: {"h", "i"} <= set(answers))
        assert impl.tasks["h"] is impl.tasks["i"]
        impl.release.set()
        await settle(lambda: "wait5" in answers)
    finally:
        await sub.unsubscribe()
        await server.stop()
