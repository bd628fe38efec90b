"""Hostile peers at the protocol level (issue 9): a raw nats-py connection plays the attacker against a
real service, or a fake server plays it against our client, with exact subjects and headers.

The rules: a stream inbox a peer names (`Reply-To`, `Nats-Stream-Inbox`) is validated before anything
is published to it (1); error texts that go back are bounded (2); integers from the peer are parsed
strictly and junk never crashes a task or logs a traceback (3); handler and caller headers cannot shadow
protocol headers (6); an unexpected handler exception does not leak its text unless asked to (7).
After every attack the victim's connection is still up, and ordinary calls still work.

Where absence must be shown, the test waits for the call to be over, pushes the service's (or client's)
output buffer to the NATS server with a round trip, then does a round trip on the wiretap's connection:
the NATS server delivers to one connection in order, so anything published before is in the tap by then.
A `PublishSpy` also records every subject the victim's connection *tried* to publish to, which catches
what nats-py refuses (a space) or the NATS server drops (an empty token) or dies on (a 10 KB subject).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import nats.errors
import pytest
from conftest import Wiretap, settle
from demo_service import Demo
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from rawpeer import PROTOCOL_NAMES, Collector

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError, current_call
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.testing import NatsServer
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    ExportSnapshotRequest,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)

PREFIX = "api.v1.stream"
REPLY_TO = "Reply-To"
INBOX = "Nats-Stream-Inbox"
SEQ = "Nats-Stream-Seq"
END = "Nats-Stream-End"
COUNT = "Nats-Stream-Count"
VERSION = "Nats-Stream-Version"
WINDOW = "Nats-Stream-Window"
WINDOW_BYTES = "Nats-Stream-Window-Bytes"
ACK = "Nats-Stream-Ack"
HEARTBEAT = "Nats-Stream-Heartbeat"
DEADLINE = "Nats-Deadline"
ERROR_CODE = "Nats-Service-Error-Code"
ERROR = "Nats-Service-Error"
V2_OFFER = {VERSION: "2", HEARTBEAT: "5000"}

MAX_ERROR_TEXT = 1100  # bytes of Nats-Service-Error that may come back: ~1 KiB
SECRET = "secret db password"
BIG_ERROR, CRASH = 7001, 7002  # request values that make the Hostile service fail

ALL_ENDPOINTS = ["ping", "count_up", "sum", "chat", "export_snapshot", "import_snapshot"]
STREAMING = ["count_up", "sum", "chat"]
BODIES = {
    "ping": bytes(PingRequest(payload="p")),
    "count_up": bytes(CountUpRequest(start=1, count=2)),
    "sum": b"",
    "chat": b"",
    "export_snapshot": bytes(ExportSnapshotRequest(id="x")),
    "import_snapshot": b"",
}

# Reply-To values the service must never publish to (the request's reply subject is an `_INBOX.` one).
HOSTILE_REPLY_TO = {
    "jetstream-api": "$JS.API.STREAM.DELETE.ORDERS",
    "foreign-subject": "orders.cancel",
    "wildcard-token": "foo.*",
    "full-wildcard": ">",
    "empty-token": "_INBOX.a..b",
    "10KB": "_INBOX." + "a" * 10_000,
    "space": "_INBOX.a b",
}
# Nats-Stream-Inbox values a client must never publish to.
HOSTILE_SERVER_INBOX = {
    "jetstream-api": "$JS.API.STREAM.DELETE.X",
    "full-wildcard": ">",
    "10KB": "_INBOX." + "a" * 10_000,
}


# --- Helpers ------------------------------------------------------------------------------------------


def bounded(seconds: float = 10.0) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Run the whole test under `asyncio.wait_for`: a hang is a failure, never a stuck suite."""

    def wrap(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            try:
                await asyncio.wait_for(test(*args, **kwargs), seconds)
            finally:
                gc.collect()  # see collect_garbage_promptly

        return run

    return wrap


@pytest.fixture(autouse=True)
def collect_garbage_promptly() -> Iterator[None]:
    """Finalise garbage at known points, not while pytest formats a failure. A task whose exception
    nobody retrieved logs that exception when collected; in CPython 3.11.7 the traceback's caret
    formatting calls `ast.parse`, and when that happens *inside* pytest's own `ast.parse` (a GC run
    mid-parse) the two share the ast module's recursion counter: pytest dies with INTERNALERROR
    "AST constructor recursion depth mismatch" and the rest of the session is lost."""
    yield
    gc.collect()


class PublishSpy:
    """Every subject a connection tries to publish to (requests included), recorded before nats-py
    or the NATS server can refuse it; `hit` is set once a watched subject is tried."""

    def __init__(self, conn: NATS) -> None:
        self.subjects: list[str] = []
        self.watched: set[str] = set()
        self.hit = asyncio.Event()
        original = conn.publish

        async def publish(subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
            self.subjects.append(subject)
            if subject in self.watched:
                self.hit.set()
            await original(subject, payload, reply=reply, headers=headers)

        conn.publish = publish  # type: ignore[method-assign]

    def watch(self, subject: str) -> PublishSpy:
        self.watched.add(subject)
        return self


def short(subject: str) -> str:
    return subject if len(subject) <= 40 else f"{subject[:30]}...({len(subject)} chars)"


async def tapped(tap: Wiretap, *publishers: NATS) -> None:
    """Everything the publishers sent so far has reached the tap (see the module docstring)."""
    for conn in publishers:
        await flush_ordered(conn)
    await flush_ordered(tap.conn)


def assert_not_published(subject: str, spy: PublishSpy, tap: Wiretap, who: str = "the service") -> None:
    tried = subject in spy.subjects
    assert not tried, f"{who} tried to publish to the peer-named subject {short(subject)!r}"
    reached = sum(1 for s, _, _ in tap.seen if s == subject)
    assert not reached, f"{reached} message(s) reached {short(subject)!r}"


def assert_connection_intact(conn: NATS, who: str = "service") -> None:
    assert not conn.is_closed, f"the {who}'s NATS connection was closed (the NATS server cut it off)"
    assert conn.is_connected, f"the {who}'s NATS connection is not connected"
    assert conn.stats["reconnects"] == 0, f"the {who}'s NATS connection reconnected"


async def assert_still_serves(client_nc: NATS) -> None:
    client = StreamDemoServiceNatsClient(client_nc)
    assert (await client.ping(PingRequest(payload="ok"), timeout=2)).payload == "ok"
    assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=3), timeout=2)] == [1, 2, 3]


async def assert_survived(server_nc: NATS, client_nc: NATS) -> None:
    assert_connection_intact(server_nc)
    await assert_still_serves(client_nc)


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """Junk is a warning, not a crash: no ERROR record with a traceback from our logger, from nats-py
    (a subscription callback that raised) or from asyncio (a task that died with an exception)."""
    gc.collect()  # a crashed task that nobody awaited reports itself when collected
    crashes = [
        f"{r.name}: {r.getMessage()} ({r.exc_info[1]!r})"
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.exc_info
        and r.exc_info[1] is not None
        and r.name.split(".")[0] in ("betterproto_nats", "nats", "asyncio")
    ]
    assert not crashes, f"junk input logged tracebacks: {crashes}"


async def next_frame(r: Collector, timeout: float = 2.0) -> Msg:
    """The next message on a stream inbox that is data, an end marker, an error or a final answer
    (v2 control messages, which are empty with neither, are skipped)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + timeout
    while True:
        msg = await r.next(max(0.0, give_up - loop.time()))
        headers = msg.headers or {}
        if not headers or msg.data or SEQ in headers or END in headers or ERROR_CODE in headers:
            return msg


async def next_frame_or_none(r: Collector, timeout: float = 1.0) -> Msg | None:
    try:
        return await next_frame(r, timeout)
    except TimeoutError:
        return None


async def answer_unless_leaked(reply: Collector, spy: PublishSpy, timeout: float = 2.0) -> Msg | None:
    """The first message on `reply`; None once the spy saw a watched subject (or after `timeout`)."""
    get = asyncio.ensure_future(reply.queue.get())
    leaked = asyncio.ensure_future(spy.hit.wait())
    done, pending = await asyncio.wait({get, leaked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return get.result() if get in done else None


_LEAKED = object()


async def outcome_unless_leaked(call: Awaitable[Any], spy: PublishSpy, timeout: float = 3.0) -> Any:
    """The call's result or exception; `_LEAKED` as soon as the spy saw a watched subject."""
    task = asyncio.ensure_future(call)
    leaked = asyncio.ensure_future(spy.hit.wait())
    done, _ = await asyncio.wait({task, leaked}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    leaked.cancel()
    if task in done:
        return task.exception() or task.result()
    task.cancel()
    await asyncio.gather(task, leaked, return_exceptions=True)
    return _LEAKED if spy.hit.is_set() else TimeoutError("the call neither ended nor leaked")


async def until_arrived(nc: NATS, server: betterproto_nats.Server, endpoint: str, count: int) -> None:
    """Wait until the service has taken `count` requests on `endpoint` (as its `$SRV.STATS` say);
    return early if its connection died (the caller's `assert_connection_intact` says so)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 5
    subject = f"$SRV.STATS.{server.name}.{server.id}"
    seen = 0
    while not server.nc.is_closed:
        try:
            stats = json.loads((await nc.request(subject, b"", timeout=1)).data)
            seen = next(e["num_requests"] for e in stats["endpoints"] if e["name"] == endpoint)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            pass
        if seen >= count:
            return
        assert loop.time() < give_up, f"the service took {seen} of {count} requests to {endpoint}"
        await asyncio.sleep(0.005)


async def calls_over(server: betterproto_nats.Server, timeout: float = 1.0) -> bool:
    try:
        await settle(lambda: not server.calls, timeout)
    except AssertionError:
        return False
    return True


# --- The services -------------------------------------------------------------------------------------


class Hostile(Demo):
    """Demo, plus failures on demand: ping's payload "big-error", "crash", "not-found" or
    "header:<name>" (set a response header of that name); count_up's start, sum's value BIG_ERROR or
    CRASH; chat's text "big-error" or "crash"."""

    async def ping(self, request: PingRequest) -> PingResponse:
        command, _, argument = request.payload.partition(":")
        if command == "big-error":
            raise RpcError(ErrorCode.NOT_FOUND, "x" * 2_000_000)
        if command == "crash":
            raise ValueError(SECRET)
        if command == "not-found":
            raise RpcError(ErrorCode.NOT_FOUND, "no such thing")
        if command == "header":
            current_call().set_response_headers({argument: "x"})
        return await super().ping(request)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        if request.start in (BIG_ERROR, CRASH):
            yield CountUpResponse(number=1)
            fail(request.start)
        async for response in super().count_up(request):
            yield response

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        async def checked() -> AsyncIterator[SumRequest]:
            async for request in requests:
                if request.value in (BIG_ERROR, CRASH):
                    fail(request.value)
                yield request

        return await super().sum(checked())

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async def checked() -> AsyncIterator[ChatMessage]:
            async for message in requests:
                if message.text == "big-error":
                    fail(BIG_ERROR)
                if message.text == "crash":
                    fail(CRASH)
                yield message

        async for reply in super().chat(checked()):
            yield reply


def fail(kind: int) -> None:
    if kind == BIG_ERROR:
        raise RpcError(ErrorCode.NOT_FOUND, "x" * 2_000_000)
    raise ValueError(SECRET)


async def failing_call(client: StreamDemoServiceNatsClient, endpoint: str, how: str, timeout: float = 1.5) -> None:
    """One call to `endpoint` that makes the Hostile handler fail `how` ("big-error" or "crash")."""
    value = BIG_ERROR if how == "big-error" else CRASH
    if endpoint == "ping":
        await client.ping(PingRequest(payload=how), timeout=timeout)
    elif endpoint == "count_up":
        [r async for r in client.count_up(CountUpRequest(start=value, count=1), timeout=timeout)]
    elif endpoint == "sum":
        await client.sum([SumRequest(value=1), SumRequest(value=value)], timeout=timeout)
    else:
        [r async for r in client.chat([ChatMessage(text="a"), ChatMessage(text=how)], timeout=timeout)]


@contextlib.asynccontextmanager
async def serving(conn: NATS, impl: Any = None, **options: Any) -> AsyncIterator[betterproto_nats.Server]:
    server = await betterproto_nats.serve(conn, impl if impl is not None else Hostile(), grace_period=0, **options)
    try:
        yield server
    finally:
        try:
            await asyncio.wait_for(server.stop(grace_period=0), 5)
        except Exception:
            if not conn.is_closed:  # a closed connection is what the test reports
                raise


@pytest.fixture
async def service(server_nc: NATS) -> AsyncIterator[betterproto_nats.Server]:
    async with serving(server_nc) as server:
        yield server


async def fake_endpoint(conn: NATS, endpoint: str, handler: Callable[[Msg], Awaitable[None]]) -> Subscription:
    """A raw peer answering requests to `endpoint`, playing the server against our client."""
    sub = await conn.subscribe(f"{PREFIX}.{endpoint}", cb=handler)
    await flush_ordered(conn)
    return sub


async def real_service_still_serves(server_nc: NATS, client_nc: NATS) -> None:
    """After a fake server attacked our client: the client's connection still makes ordinary calls."""
    assert_connection_intact(client_nc, "client")
    async with serving(server_nc):
        await assert_still_serves(client_nc)


# --- Rule 1: peer-named subjects, server side ---------------------------------------------------------


async def reply_to_attack(
    nc: NATS, server_nc: NATS, tap: Wiretap, server: betterproto_nats.Server, endpoint: str, hostile: str, offer: dict[str, str]
) -> Msg | None:
    """Send a streaming request naming `hostile` in Reply-To (with a valid reply subject); if the
    service goes along with it, play on as far as needed to make it publish there. Returns the
    answer on the reply subject, after asserting nothing reached `hostile`."""
    spy = PublishSpy(server_nc).watch(hostile)
    async with Collector(nc) as reply:
        headers = {REPLY_TO: hostile, **offer}
        await nc.publish(f"{PREFIX}.{endpoint}", BODIES[endpoint], reply=reply.subject, headers=headers)
        answer = await answer_unless_leaked(reply, spy)
        s_subject = (answer.headers or {}).get(INBOX) if answer is not None else None
        if s_subject and ERROR_CODE not in (answer.headers or {}):  # type: ignore[union-attr]
            # The handshake was accepted: send what makes the server answer on `hostile`.
            await nc.publish(s_subject, bytes(ChatMessage(text="x")) if endpoint == "chat" else bytes(SumRequest(value=1)), headers={SEQ: "1"})
            await nc.publish(s_subject, b"", headers={END: "true"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(spy.hit.wait(), 1.0)
    if not spy.hit.is_set():
        await calls_over(server)
        await tapped(tap, server_nc, nc)
    assert_not_published(hostile, spy, tap)
    return answer


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("endpoint", STREAMING)
@pytest.mark.parametrize("hostile", list(HOSTILE_REPLY_TO.values()), ids=list(HOSTILE_REPLY_TO))
@bounded()
async def test_hostile_reply_to_is_refused(
    nc: NATS,
    server_nc: NATS,
    tap: Wiretap,
    service: betterproto_nats.Server,
    caplog: pytest.LogCaptureFixture,
    hostile: str,
    endpoint: str,
    version: str,
) -> None:
    answer = await reply_to_attack(nc, server_nc, tap, service, endpoint, hostile, V2_OFFER if version == "v2" else {})
    assert_connection_intact(server_nc)
    assert answer is not None, "no answer on the request's reply subject"
    assert (answer.headers or {}).get(ERROR_CODE) == ErrorCode.INVALID_ARGUMENT, answer.headers
    assert await calls_over(service), "the refused call is still running"
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


@pytest.mark.parametrize("hostile", ["$JS.API.STREAM.DELETE.ORDERS", ">", "_INBOX." + "a" * 10_000], ids=["jetstream-api", "full-wildcard", "10KB"])
@bounded()
async def test_hostile_reply_to_without_reply_subject_gets_nothing(
    nc: NATS, server_nc: NATS, tap: Wiretap, service: betterproto_nats.Server, hostile: str
) -> None:
    """Go-style server-stream request (no NATS reply subject): nowhere valid to answer, so nothing."""
    spy = PublishSpy(server_nc).watch(hostile)
    await nc.publish(f"{PREFIX}.count_up", BODIES["count_up"], headers={REPLY_TO: hostile})
    await until_arrived(nc, service, "count_up", 1)
    if not spy.hit.is_set():
        await calls_over(service)
        await tapped(tap, server_nc, nc)
    assert_not_published(hostile, spy, tap)
    assert_connection_intact(server_nc)
    stats_inbox = bytes(nc._resp_sub_prefix or b"").decode()  # the $SRV.STATS answers above
    assert [s for s in spy.subjects if not s.startswith(stats_inbox)] == [], "the service answered something"
    await assert_still_serves(nc)


@bounded()
async def test_unconfigured_custom_prefix_is_refused(
    nc: NATS, server_nc: NATS, tap: Wiretap, service: betterproto_nats.Server
) -> None:
    answer = await reply_to_attack(nc, server_nc, tap, service, "count_up", "custom.abc", {})
    assert answer is not None and (answer.headers or {}).get(ERROR_CODE) == ErrorCode.INVALID_ARGUMENT
    await assert_survived(server_nc, nc)


@bounded()
async def test_configured_inbox_prefix_is_accepted(nc: NATS, server_nc: NATS) -> None:
    async with serving(server_nc, inbox_prefixes=["custom."]):
        async with Collector(nc, "custom.abc") as r, Collector(nc) as reply:
            await nc.publish(f"{PREFIX}.count_up", BODIES["count_up"], reply=reply.subject, headers={REPLY_TO: r.subject})
            frames = [await next_frame(r) for _ in range(3)]
        assert [f.headers.get(SEQ) for f in frames[:2]] == ["1", "2"]  # type: ignore[union-attr]
        assert [CountUpResponse.parse(f.data).number for f in frames[:2]] == [1, 2]
        assert frames[2].headers == {END: "true", COUNT: "2"}
        assert reply.queue.empty()
        await assert_survived(server_nc, nc)


@bounded()
async def test_go_style_request_with_valid_reply_to_streams(nc: NATS, server_nc: NATS, service: betterproto_nats.Server) -> None:
    async with Collector(nc) as r:  # `_INBOX.<nuid>`, no NATS reply subject: the Go client's way
        await nc.publish(f"{PREFIX}.count_up", BODIES["count_up"], headers={REPLY_TO: r.subject})
        frames = [await next_frame(r) for _ in range(3)]
    assert [CountUpResponse.parse(f.data).number for f in frames[:2]] == [1, 2]
    assert frames[2].headers == {END: "true", COUNT: "2"}
    await assert_survived(server_nc, nc)


@bounded()
async def test_reply_to_under_the_reply_subjects_first_token_is_accepted(
    nats_server: Any, server_nc: NATS, service: betterproto_nats.Server
) -> None:
    """A client whose inboxes are `tenant1.inbox.…` (nats-py's inbox_prefix): every shape still works."""
    from conftest import connect

    tenant = await connect(nats_server.url, inbox_prefix="tenant1.inbox")
    try:
        client = StreamDemoServiceNatsClient(tenant)
        assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=2), timeout=2)] == [1, 2]
        assert (await client.sum([SumRequest(value=2), SumRequest(value=3)], timeout=2)).total == 5
        assert [m.text async for m in client.chat([ChatMessage(text="a")], timeout=2)] == ["echo: a"]
    finally:
        await tenant.close()
    assert_connection_intact(server_nc)


# --- Rule 1: peer-named subjects, client side ---------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("hostile", list(HOSTILE_SERVER_INBOX.values()), ids=list(HOSTILE_SERVER_INBOX))
@bounded()
async def test_client_refuses_hostile_stream_inbox_in_ack(
    nc: NATS, server_nc: NATS, tap: Wiretap, hostile: str, version: str
) -> None:
    spy = PublishSpy(nc).watch(hostile)
    ack = {INBOX: hostile}
    if version == "v2":
        ack.update({VERSION: "2", WINDOW: "256", WINDOW_BYTES: "4194304"})

    async def handshake(msg: Msg) -> None:
        await server_nc.publish(msg.reply, b"", headers=ack)

    sub = await fake_endpoint(server_nc, "sum", handshake)
    client = StreamDemoServiceNatsClient(nc)
    outcome = await outcome_unless_leaked(client.sum([SumRequest(value=1), SumRequest(value=2)], timeout=1.0), spy)
    await sub.unsubscribe()
    if not spy.hit.is_set():
        await tapped(tap, nc)
    assert_not_published(hostile, spy, tap, "the client")
    assert isinstance(outcome, RpcError), f"expected RpcError, got {outcome!r}"
    assert outcome.code == ErrorCode.INTERNAL, outcome
    await real_service_still_serves(server_nc, nc)


def open_then_data(conn: NATS, hostile: str, end: bool) -> Callable[[Msg], Awaitable[None]]:
    """A fake v2 server-stream server: an open message naming `hostile` as its control inbox, one
    data message, and (if `end`) the end marker."""

    async def answer(msg: Msg) -> None:
        r = msg.headers[REPLY_TO]  # type: ignore[index]
        await conn.publish(r, b"", headers={VERSION: "2", INBOX: hostile})
        await conn.publish(r, bytes(CountUpResponse(number=1)), headers={SEQ: "1"})
        if end:
            await conn.publish(r, b"", headers={END: "true", COUNT: "1"})

    return answer


@pytest.mark.parametrize("hostile", list(HOSTILE_SERVER_INBOX.values()), ids=list(HOSTILE_SERVER_INBOX))
@bounded()
async def test_client_stream_with_hostile_open_message_fails(nc: NATS, server_nc: NATS, tap: Wiretap, hostile: str) -> None:
    spy = PublishSpy(nc).watch(hostile)
    sub = await fake_endpoint(server_nc, "count_up", open_then_data(server_nc, hostile, end=True))
    client = StreamDemoServiceNatsClient(nc)

    async def call() -> list[int]:
        return [r.number async for r in client.count_up(CountUpRequest(count=1), timeout=1.0)]

    outcome = await outcome_unless_leaked(call(), spy)
    await sub.unsubscribe()
    if not spy.hit.is_set():
        await tapped(tap, nc)
    assert_not_published(hostile, spy, tap, "the client")
    assert isinstance(outcome, RpcError), f"expected the call to end with RpcError, got {outcome!r}"
    await real_service_still_serves(server_nc, nc)


@pytest.mark.parametrize("hostile", list(HOSTILE_SERVER_INBOX.values()), ids=list(HOSTILE_SERVER_INBOX))
@bounded()
async def test_client_sends_no_cancel_to_hostile_open_message(nc: NATS, server_nc: NATS, tap: Wiretap, hostile: str) -> None:
    """Closing a stream early sends a v2 cancel to the server's control inbox: never to a bad one."""
    spy = PublishSpy(nc).watch(hostile)
    sub = await fake_endpoint(server_nc, "count_up", open_then_data(server_nc, hostile, end=False))
    stream = await StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=5), timeout=2)
    with contextlib.suppress(RpcError):
        await stream.recv()  # the data message (or the error): the open message has been handled
    await stream.close()
    await sub.unsubscribe()
    if not spy.hit.is_set():
        await tapped(tap, nc)
    assert_not_published(hostile, spy, tap, "the client")
    await real_service_still_serves(server_nc, nc)


# --- Rule 2: sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("junk", ["x" * 300_000, "9" * 300_000], ids=["300KB-letters", "300KB-digits"])
@pytest.mark.parametrize("endpoint", ["sum", "chat"])
@bounded()
async def test_huge_seq_on_live_stream_gets_a_short_error(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, endpoint: str, junk: str
) -> None:
    body = bytes(SumRequest(value=1)) if endpoint == "sum" else bytes(ChatMessage(text="a"))
    async with Collector(nc) as r:
        ack = await nc.request(f"{PREFIX}.{endpoint}", b"", timeout=2, headers={REPLY_TO: r.subject})
        s_subject = ack.headers[INBOX]  # type: ignore[index]
        await nc.publish(s_subject, body, headers={SEQ: junk})
        await nc.publish(s_subject, b"", headers={END: "true"})  # a v1 client-stream answer waits for it
        final = await next_frame_or_none(r)
    assert_connection_intact(server_nc)
    assert final is not None, "no answer"
    headers = final.headers or {}
    assert len(headers.get(ERROR, "").encode()) <= MAX_ERROR_TEXT, f"error text of {len(headers[ERROR])} bytes"
    assert headers.get(ERROR_CODE) in (ErrorCode.DATA_LOSS, ErrorCode.INVALID_ARGUMENT), headers.get(ERROR_CODE)
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


@pytest.mark.parametrize("endpoint", ["ping", "count_up", "sum", "chat"])
@bounded()
async def test_huge_handler_error_is_cut_short(nc: NATS, server_nc: NATS, service: betterproto_nats.Server, endpoint: str) -> None:
    """A handler's RpcError with a 2 MB message: sent whole, the NATS server would cut the service off."""
    with pytest.raises(RpcError) as caught:
        await failing_call(StreamDemoServiceNatsClient(nc), endpoint, "big-error")
    assert_connection_intact(server_nc)
    assert caught.value.code == ErrorCode.NOT_FOUND, caught.value
    assert len(caught.value.message.encode()) <= MAX_ERROR_TEXT
    await assert_still_serves(nc)


# --- Rule 3: integers from the peer -------------------------------------------------------------------


@pytest.mark.parametrize("deadline", ["²", "9" * 400], ids=["superscript-two", "400-digits"])
@pytest.mark.parametrize("endpoint", STREAMING)
@bounded()
async def test_malformed_deadline_is_invalid_argument(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, endpoint: str, deadline: str
) -> None:
    async with Collector(nc) as r:  # R is the reply subject too: the answer is here, wherever it goes
        headers = {REPLY_TO: r.subject, **V2_OFFER, DEADLINE: deadline}
        await nc.publish(f"{PREFIX}.{endpoint}", BODIES[endpoint], reply=r.subject, headers=headers)
        answer = await next_frame_or_none(r)
    assert_connection_intact(server_nc)
    assert answer is not None, "no answer at all"
    assert (answer.headers or {}).get(ERROR_CODE) == ErrorCode.INVALID_ARGUMENT, answer.headers
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


IGNORED_OFFERS = {
    "heartbeat-5000-digits": (HEARTBEAT, "9" * 5000),
    "heartbeat-superscript": (HEARTBEAT, "²"),
    "window-superscript": (WINDOW, "²"),
    "window-bytes-superscript": (WINDOW_BYTES, "²"),
    "window-400-digits": (WINDOW, "9" * 400),
}


@pytest.mark.parametrize("header", list(IGNORED_OFFERS.values()), ids=list(IGNORED_OFFERS))
@pytest.mark.parametrize("endpoint", ["count_up", "chat"])
@bounded()
async def test_malformed_offer_numbers_are_ignored(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, endpoint: str, header: tuple[str, str]
) -> None:
    """A junk heartbeat or window in a v2 offer: the default is used and the call works."""
    name, value = header
    expected: list[tuple[Any, str]]
    offer = {**V2_OFFER, WINDOW: "256", WINDOW_BYTES: "4194304", name: value}
    async with Collector(nc) as r:
        if endpoint == "count_up":
            await nc.publish(f"{PREFIX}.count_up", BODIES["count_up"], reply=r.subject, headers={REPLY_TO: r.subject, **offer})
            expected = [(1, "1"), (2, "2")]
        else:
            ack = await nc.request(f"{PREFIX}.chat", b"", timeout=1.0, headers={REPLY_TO: r.subject, **offer})
            assert ERROR_CODE not in (ack.headers or {}), ack.headers
            s_subject = ack.headers[INBOX]  # type: ignore[index]
            await nc.publish(s_subject, bytes(ChatMessage(text="a")), headers={SEQ: "1"})
            await nc.publish(s_subject, b"", headers={END: "true", COUNT: "1"})
            expected = [("echo: a", "1")]
        frames = []
        with contextlib.suppress(TimeoutError):
            for _ in range(len(expected) + 1):
                frames.append(await next_frame(r, 1.5))
    assert_connection_intact(server_nc)
    assert len(frames) == len(expected) + 1, [f.headers for f in frames]
    assert ERROR_CODE not in (frames[-1].headers or {}), frames[-1].headers
    got: list[tuple[Any, str]]
    if endpoint == "count_up":
        got = [(CountUpResponse.parse(f.data).number, (f.headers or {})[SEQ]) for f in frames[:-1]]
    else:
        got = [(ChatMessage.parse(f.data).text, (f.headers or {})[SEQ]) for f in frames[:-1]]
    assert got == expected
    assert frames[-1].headers[END] == "true"  # type: ignore[index]
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


async def open_sum(nc: NATS, r: Collector) -> str:
    """A raw v1 client-stream handshake on `sum`: the server's inbox S."""
    ack = await nc.request(f"{PREFIX}.sum", b"", timeout=2, headers={REPLY_TO: r.subject})
    return ack.headers[INBOX]  # type: ignore[index]


@pytest.mark.parametrize(
    "seq", ["²", "9" * 5000, "9" * 400, "-1"], ids=["superscript-two", "5000-digits", "400-digits", "minus-one"]
)
@bounded()
async def test_malformed_seq_on_server_inbox_is_a_clean_error(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, seq: str
) -> None:
    async with Collector(nc) as r:
        s_subject = await open_sum(nc, r)
        await nc.publish(s_subject, bytes(SumRequest(value=1)), headers={SEQ: seq})
        await nc.publish(s_subject, b"", headers={END: "true"})
        final = await next_frame_or_none(r)
    assert_connection_intact(server_nc)
    assert final is not None, "no final answer"
    assert (final.headers or {}).get(ERROR_CODE) in (ErrorCode.DATA_LOSS, ErrorCode.INVALID_ARGUMENT), final.headers
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


@pytest.mark.parametrize("count", ["²", "9" * 5000], ids=["superscript-two", "5000-digits"])
@bounded()
async def test_malformed_count_on_server_inbox_is_answered(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, count: str
) -> None:
    async with Collector(nc) as r:
        s_subject = await open_sum(nc, r)
        await nc.publish(s_subject, bytes(SumRequest(value=4)), headers={SEQ: "1"})
        await nc.publish(s_subject, b"", headers={END: "true", COUNT: count})
        final = await next_frame_or_none(r)
    assert_connection_intact(server_nc)
    assert final is not None, "no final answer"
    code = (final.headers or {}).get(ERROR_CODE)
    if code is None:  # the count was ignored: the sum is right
        assert SumResponse.parse(final.data).total == 4
    else:
        assert code in (ErrorCode.DATA_LOSS, ErrorCode.INVALID_ARGUMENT), final.headers
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


@pytest.mark.parametrize("ack", ["²", "9" * 5000, "-1"], ids=["superscript-two", "5000-digits", "minus-one"])
@bounded()
async def test_malformed_ack_to_server_is_ignored(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, ack: str
) -> None:
    async with Collector(nc) as r:
        answer = await nc.request(f"{PREFIX}.chat", b"", timeout=2, headers={REPLY_TO: r.subject, **V2_OFFER})
        s_subject = answer.headers[INBOX]  # type: ignore[index]
        assert answer.headers.get(VERSION) == "2"  # type: ignore[union-attr]
        await nc.publish(s_subject, b"", headers={ACK: ack})
        await nc.publish(s_subject, bytes(ChatMessage(text="a")), headers={SEQ: "1"})
        await nc.publish(s_subject, b"", headers={END: "true", COUNT: "1"})
        echo = await next_frame(r)
        end = await next_frame(r)
    assert ChatMessage.parse(echo.data).text == "echo: a"
    assert end.headers[END] == "true" and ERROR_CODE not in end.headers  # type: ignore[index,operator]
    assert_no_tracebacks(caplog)
    await assert_survived(server_nc, nc)


@pytest.mark.parametrize("endpoint", ALL_ENDPOINTS)
@bounded(20)
async def test_every_protocol_header_with_hostile_values(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, endpoint: str
) -> None:
    values = ["a" * 100_000, "²", "-1", "9" * 400, ">", "_INBOX.*"]
    sent = 0
    for name in PROTOCOL_NAMES:
        for value in values:
            headers = {REPLY_TO: nc.new_inbox(), **V2_OFFER, name: value}
            await nc.publish(f"{PREFIX}.{endpoint}", BODIES[endpoint], reply=nc.new_inbox(), headers=headers)
            sent += 1
    await until_arrived(nc, service, endpoint, sent)
    assert_connection_intact(server_nc)
    assert_no_tracebacks(caplog)
    await assert_still_serves(nc)


# --- Rule 3: integers from the peer, client side ------------------------------------------------------


@pytest.mark.parametrize("seq", ["²", "9" * 5000], ids=["superscript-two", "5000-digits"])
@bounded()
async def test_client_gets_rpc_error_for_malformed_seq(nc: NATS, server_nc: NATS, caplog: pytest.LogCaptureFixture, seq: str) -> None:
    async def answer(msg: Msg) -> None:
        r = msg.headers[REPLY_TO]  # type: ignore[index]
        await server_nc.publish(r, bytes(CountUpResponse(number=1)), headers={SEQ: seq})
        await server_nc.publish(r, b"", headers={END: "true", COUNT: "1"})

    sub = await fake_endpoint(server_nc, "count_up", answer)
    with pytest.raises(RpcError):  # never ValueError
        [r async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=1), timeout=1.0)]
    await sub.unsubscribe()
    assert_no_tracebacks(caplog)
    await real_service_still_serves(server_nc, nc)


@pytest.mark.parametrize("count", ["²", "9" * 5000], ids=["superscript-two", "5000-digits"])
@bounded()
async def test_client_survives_malformed_count(nc: NATS, server_nc: NATS, caplog: pytest.LogCaptureFixture, count: str) -> None:
    async def answer(msg: Msg) -> None:
        r = msg.headers[REPLY_TO]  # type: ignore[index]
        await server_nc.publish(r, bytes(CountUpResponse(number=1)), headers={SEQ: "1"})
        await server_nc.publish(r, b"", headers={END: "true", COUNT: count})

    sub = await fake_endpoint(server_nc, "count_up", answer)
    try:  # the count ignored (a clean end) or an RpcError: never ValueError
        got = [r.number async for r in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=1), timeout=1.0)]
        assert got == [1]
    except RpcError:
        pass
    await sub.unsubscribe()
    assert_no_tracebacks(caplog)
    await real_service_still_serves(server_nc, nc)


CLIENT_IGNORED = {
    "window-superscript": ({WINDOW: "²"}, None),
    "window-bytes-5000-digits": ({WINDOW_BYTES: "9" * 5000}, None),
    "ack-superscript": ({}, {ACK: "²"}),
    "ack-5000-digits": ({}, {ACK: "9" * 5000}),
}


@pytest.mark.parametrize("ack_extra,control", list(CLIENT_IGNORED.values()), ids=list(CLIENT_IGNORED))
@bounded()
async def test_client_ignores_malformed_v2_numbers(
    nc: NATS, server_nc: NATS, caplog: pytest.LogCaptureFixture, ack_extra: dict[str, str], control: dict[str, str] | None
) -> None:
    subs: list[Subscription] = []
    r_subject: list[str] = []

    async def on_data(msg: Msg) -> None:
        headers = msg.headers or {}
        if control is not None and headers.get(SEQ) == "1":
            await server_nc.publish(r_subject[0], b"", headers=control)
        if headers.get(END) == "true":
            await server_nc.publish(r_subject[0], bytes(SumResponse(total=3, count=2)))

    async def handshake(msg: Msg) -> None:
        s_subject = server_nc.new_inbox()
        subs.append(await server_nc.subscribe(s_subject, cb=on_data))
        r_subject.append(msg.headers[REPLY_TO])  # type: ignore[index]
        await server_nc.publish(msg.reply, b"", headers={INBOX: s_subject, VERSION: "2", **ack_extra})

    subs.append(await fake_endpoint(server_nc, "sum", handshake))
    result = await StreamDemoServiceNatsClient(nc).sum([SumRequest(value=1), SumRequest(value=2)], timeout=1.0)
    assert (result.total, result.count) == (3, 2)
    for sub in subs:
        await sub.unsubscribe()
    assert_no_tracebacks(caplog)
    await real_service_still_serves(server_nc, nc)


# --- Rule 6: user headers cannot shadow protocol headers ----------------------------------------------

SHADOWING = ["status", "STATUS", "Status", "Description", "description", "nats-anything", "NATS-STREAM-SEQ", "Reply-To", "reply-to", "a b", "a:b"]


@pytest.mark.parametrize("name", SHADOWING)
@bounded()
async def test_handler_cannot_set_protocol_response_header(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, name: str
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload=f"header:{name}"), timeout=1.0)
    assert caught.value.code == ErrorCode.INTERNAL, caught.value
    assert loop.time() - started < 1.0, "the error came only with the client's timeout"
    await assert_survived(server_nc, nc)


@pytest.mark.parametrize("name", SHADOWING)
@bounded()
async def test_caller_cannot_send_protocol_header(nc: NATS, name: str) -> None:
    spy = PublishSpy(nc)
    with pytest.raises(ValueError):
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="x"), headers={name: "x"}, timeout=1)
    assert spy.subjects == [], "something was sent"


@pytest.mark.parametrize("endpoint", STREAMING)
@bounded()
async def test_caller_cannot_send_protocol_header_on_streams(nc: NATS, endpoint: str) -> None:
    spy = PublishSpy(nc)
    client = StreamDemoServiceNatsClient(nc)
    headers = {"status": "x"}
    with pytest.raises(ValueError):
        if endpoint == "count_up":
            await client.count_up(CountUpRequest(count=1), headers=headers, timeout=1)
        elif endpoint == "sum":
            await client.sum([SumRequest(value=1)], headers=headers, timeout=1)
        else:
            await client.chat(headers=headers, timeout=1)
    assert spy.subjects == [], "something was sent"


# --- Rule 7: unexpected handler exceptions --------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["ping", "count_up", "sum", "chat"])
@bounded()
async def test_unexpected_exception_text_stays_on_the_server(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, endpoint: str
) -> None:
    with pytest.raises(RpcError) as caught:
        await failing_call(StreamDemoServiceNatsClient(nc), endpoint, "crash")
    assert caught.value.code == ErrorCode.INTERNAL, caught.value
    assert "secret" not in caught.value.message.lower(), caught.value.message
    await assert_survived(server_nc, nc)


@pytest.mark.parametrize("endpoint", ["ping", "count_up", "sum", "chat"])
@bounded()
async def test_expose_errors_sends_exception_text(nc: NATS, server_nc: NATS, endpoint: str) -> None:
    async with serving(server_nc, expose_errors=True):
        with pytest.raises(RpcError) as caught:
            await failing_call(StreamDemoServiceNatsClient(nc), endpoint, "crash")
        assert caught.value.code == ErrorCode.INTERNAL, caught.value
        assert SECRET in caught.value.message
        await assert_survived(server_nc, nc)


@bounded()
async def test_rpc_error_from_handler_keeps_its_message(nc: NATS, server_nc: NATS, service: betterproto_nats.Server) -> None:
    with pytest.raises(RpcError) as caught:
        await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="not-found"), timeout=2)
    assert (caught.value.code, caught.value.message) == (ErrorCode.NOT_FOUND, "no such thing")
    await assert_survived(server_nc, nc)


# --- Shared liveness: heartbeats per peer connection (runtime/health/peers.py) ---------------------------

PEER = "Nats-Stream-Peer"


async def shared_chat(nc: NATS, r: Collector, peer_subject: str) -> tuple[str, dict[str, str]]:
    """A raw v2 bidi handshake that names `peer_subject` as its connection's liveness subject:
    the service's inbox S and its ack's headers."""
    headers = {REPLY_TO: r.subject, VERSION: "2", HEARTBEAT: "200", PEER: peer_subject}
    ack = await nc.request(f"{PREFIX}.chat", b"", timeout=2, headers=headers)
    assert ERROR_CODE not in (ack.headers or {}), ack.headers
    return ack.headers[INBOX], dict(ack.headers or {})  # type: ignore[index]


@bounded(15)
async def test_junk_heartbeats_to_the_liveness_subject_are_ignored(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw peer that shares liveness with the service learns its liveness subject, then sends it
    junk: no headers, another peer's name, malformed intervals and entries, non-ASCII, ~1 MB of
    empty lines, thousands of unknown streams, a forged no-responders status. Another client's
    stream lives on (its heartbeats with the service are untouched); the attacker's own stream ends
    only because the attacker never beats properly (silence: it is told UNAVAILABLE), not by the
    releases it forged under other names; nothing is logged as a crash."""
    from conftest import connect

    victim_nc = await connect(nats_server.url)
    try:
        victim = StreamDemoServiceNatsClient(victim_nc, heartbeat=0.2)
        async with await victim.chat() as chat, Collector(nc) as r, Collector(nc) as beats:
            await chat.send(ChatMessage(text="before"))
            assert (await chat.recv()).text == "echo: before"
            s_subject, ack = await shared_chat(nc, r, beats.subject)
            liveness = ack[PEER]
            assert liveness.startswith("_INBOX.") and ack[HEARTBEAT] == "200"
            mine = {HEARTBEAT: "200", PEER: beats.subject}
            junk: list[tuple[dict[str, str] | None, bytes]] = [
                (None, b""),
                ({HEARTBEAT: "200"}, b""),
                ({HEARTBEAT: "200", PEER: "_INBOX.somebody.else"}, f"{s_subject} e".encode()),
                ({HEARTBEAT: "9" * 5000, PEER: beats.subject}, f"{s_subject} e".encode()),
                ({HEARTBEAT: "²", PEER: beats.subject}, b""),
                (mine, bytes(range(256))),
                (mine, b"\n" * 900_000),
                (mine, "\n".join(f"_INBOX.x{i} s{i} r{i} e{i}" for i in range(5000)).encode()),
                (mine, f"{s_subject} s{'9' * 5000} r{'9' * 400} e-1 e² s r x y z {' ' * 1000}".encode()),
                (mine, f"{s_subject}\n\n \n{s_subject} {s_subject}".encode()),
                ({"Status": "503", "Description": "No Responders"}, b""),
            ]
            for headers, body in junk:
                await nc.publish(liveness, body, headers=headers)
            await flush_ordered(nc)
            await asyncio.sleep(0.8)  # four intervals: a broken liveness would have ended the streams
            await chat.send(ChatMessage(text="after"))
            assert (await chat.recv()).text == "echo: after"
            told = await next_frame(r)
            assert told.headers[END] == "true" and told.headers[ERROR_CODE] == ErrorCode.UNAVAILABLE, told.headers  # type: ignore[index]
            assert "no word" in told.headers[ERROR]  # type: ignore[index]
            assert len(service.calls) == 1  # the victim's
    finally:
        await victim_nc.close()
    assert_connection_intact(server_nc)
    assert_no_tracebacks(caplog)


@bounded()
async def test_a_release_names_only_the_senders_own_stream(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer's heartbeat can end a stream only by its inbox, which only its own client knows: the
    raw peer releases its own stream (CANCELLED, nothing sent back), while a release naming a stream
    of another group is ignored."""
    async with Collector(nc) as r1, Collector(nc) as r2, Collector(nc) as beats:
        s1, ack = await shared_chat(nc, r1, beats.subject)
        s2, _ = await shared_chat(nc, r2, beats.subject + ".other")  # another "connection" (group)
        await settle(lambda: len(service.calls) == 2)
        await nc.publish(ack[PEER], f"{s2} e0\n{s1} e0".encode(), headers={HEARTBEAT: "200", PEER: beats.subject})
        await settle(lambda: len(service.calls) == 1)
        assert await next_frame_or_none(r1, 0.3) is None  # the client is gone: nothing is told
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize("hostile", list(HOSTILE_REPLY_TO.values()), ids=list(HOSTILE_REPLY_TO))
@bounded()
async def test_hostile_liveness_subject_in_an_offer_is_never_used(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, tap: Wiretap, hostile: str
) -> None:
    """A `Nats-Stream-Peer` that fails the inbox checks: the service keeps per-stream heartbeats
    (its confirmation names no liveness subject) and never publishes there."""
    spy = PublishSpy(server_nc).watch(hostile)
    async with Collector(nc) as r:
        headers = {REPLY_TO: r.subject, VERSION: "2", HEARTBEAT: "100", PEER: hostile}
        ack = await nc.request(f"{PREFIX}.chat", b"", timeout=2, headers=headers)
        assert PEER not in (ack.headers or {}) and ack.headers[VERSION] == "2"  # type: ignore[index]
        heartbeat = await r.next(2)  # per-stream, to R
        assert HEARTBEAT in (heartbeat.headers or {}), heartbeat.headers
        await nc.publish(ack.headers[INBOX], b"", headers={END: "true", COUNT: "0"})  # type: ignore[index]
        assert (await next_frame(r)).headers[END] == "true"  # type: ignore[index]
    await calls_over(service)
    await tapped(tap, server_nc, nc)
    assert_not_published(hostile, spy, tap)


@pytest.mark.parametrize("hostile", list(HOSTILE_SERVER_INBOX.values()), ids=list(HOSTILE_SERVER_INBOX))
@bounded()
async def test_client_refuses_a_hostile_liveness_subject(nc: NATS, server_nc: NATS, tap: Wiretap, hostile: str) -> None:
    """A fake server confirms v2 naming a bad `Nats-Stream-Peer`: the call fails (INTERNAL) and
    nothing is ever published there."""
    spy = PublishSpy(nc).watch(hostile)

    async def handshake(msg: Msg) -> None:
        s_subject = server_nc.new_inbox()
        await server_nc.publish(msg.reply, b"", headers={INBOX: s_subject, VERSION: "2", HEARTBEAT: "100", PEER: hostile})

    sub = await fake_endpoint(server_nc, "sum", handshake)
    client = StreamDemoServiceNatsClient(nc, heartbeat=0.1)
    outcome = await outcome_unless_leaked(client.sum([SumRequest(value=1)], timeout=1.0), spy)
    await sub.unsubscribe()
    if not spy.hit.is_set():
        await tapped(tap, nc)
    assert_not_published(hostile, spy, tap, "the client")
    assert isinstance(outcome, RpcError) and outcome.code == ErrorCode.INTERNAL, outcome
    await real_service_still_serves(server_nc, nc)


@bounded()
async def test_subjects_that_are_not_utf8_do_not_cut_a_connection(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """The NATS server passes any bytes in subjects. nats-py decodes them in its read loop, where an
    error stops reading and makes the connection reconnect. A request whose reply subject is not
    UTF-8, and a message to a live stream's inbox with a token that is not, are dropped with a
    warning; both connections keep reading and the stream keeps going."""
    client = StreamDemoServiceNatsClient(nc)
    stream = await client.chat()
    await stream.send(ChatMessage(text="a"))
    assert (await stream.recv()).text == "echo: a"
    inbox_base = next(s.subject for s in nc._subs.values() if s.subject.endswith(".>"))[:-1]
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        writer.write(f"PUB {PREFIX}.ping ".encode() + b"_INBOX.\xff\xfe " + str(len(BODIES["ping"])).encode() + b"\r\n" + BODIES["ping"] + b"\r\n")
        writer.write(b"PUB " + inbox_base.encode() + b"\xff 1\r\nx\r\nPING\r\n")
        await writer.drain()
        while (line := await reader.readline()) != b"PONG\r\n":
            assert line, "the NATS server closed the hostile connection"
        await flush_ordered(server_nc)  # what the server had for us was read by now
        await flush_ordered(nc)
        assert_connection_intact(server_nc)
        assert_connection_intact(nc, "client")
        assert "not UTF-8" in caplog.text and "encountered error" not in caplog.text  # (nats-py: its read loop stopped)
        await stream.send(ChatMessage(text="b"))
        assert (await stream.recv()).text == "echo: b"
        await stream.close()
        await assert_still_serves(nc)
    finally:
        writer.close()


# --- One message never deafens a connection (issue 25) --------------------------------------------------

# What a raw TCP peer sends that nats-py cannot read in its read loop (an IndexError, UnicodeDecodeErrors).
UNREADABLE = {
    "bare-header-line": (b"NATS/1.0", b""),
    "status-not-utf8": (b"NATS/1.0 503 \xff\xfe\r\n\r\n", b""),
    "status-not-utf8-unterminated": (b"NATS/1.0 503 \xff\xfe", b""),  # (nats-py reads this one: no description)
    "status-description-not-utf8": (b"NATS/1.0 100 \xff\r\nX: y", b""),
    "reply-not-utf8": (None, b"_INBOX.\xff\xfe"),
}


def raw_publish(subject: bytes, header: bytes | None, reply: bytes, body: bytes = b"x") -> bytes:
    """The exact HPUB (or PUB) command for one message, as a peer with no client library writes it."""
    head = subject + (b" " + reply if reply else b"")
    if header is None:
        return b"PUB " + head + b" %d\r\n" % len(body) + body + b"\r\n"
    return b"HPUB " + head + b" %d %d\r\n" % (len(header), len(header) + len(body)) + header + body + b"\r\n"


@pytest.mark.parametrize("kind", list(UNREADABLE))
@bounded(15.0)
async def test_one_unreadable_message_deafens_no_connection(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """A message nats-py cannot parse, sent by a raw TCP peer to a service's endpoint, its inbox
    wildcard, a client's inbox, the client's request/reply subscription and an application
    subscription on each connection: both connections keep reading (a ping answers within 1 s, a
    live chat goes on, the application subscriptions get their next message) with 0 reconnects."""
    header, reply = UNREADABLE[kind]
    client = StreamDemoServiceNatsClient(nc)
    assert (await client.ping(PingRequest(payload="warm"), timeout=2)).payload == "warm"  # the request/reply subscription exists
    chat = await client.chat()
    await chat.send(ChatMessage(text="a"))
    assert (await chat.recv()).text == "echo: a"
    apps: dict[str, asyncio.Queue[bytes]] = {}
    subs = []
    for who, conn in (("service", server_nc), ("client", nc)):
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        apps[who] = queue

        async def on_app(msg: Msg, queue: asyncio.Queue[bytes] = queue) -> None:
            queue.put_nowait(msg.data)

        subs.append(await conn.subscribe(f"app.{who}", cb=on_app))
        await flush_ordered(conn)

    def wildcard_base(conn: NATS) -> str:
        return next(s.subject for s in conn._subs.values() if s.subject.endswith(".>"))[:-1]

    targets = [
        f"{PREFIX}.ping",  # an endpoint (direct delivery)
        wildcard_base(server_nc) + "hostile",  # the service's inbox wildcard
        wildcard_base(nc) + "hostile",  # the client's inbox wildcard
        bytes(nc._resp_sub_prefix or b"").decode() + "hostile",  # the client's request/reply subscription
        "app.service",  # applications' own subscriptions (nats-py's way)
        "app.client",
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", nats_server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        for subject in targets:
            writer.write(raw_publish(subject.encode(), header, reply))
        writer.write(b"PING\r\n")
        await writer.drain()
        while (line := await reader.readline()) != b"PONG\r\n":
            assert line, "the NATS server closed the hostile connection"
            assert not line.startswith(b"-ERR"), line
        await flush_ordered(server_nc)  # both connections read past the hostile messages by now
        await flush_ordered(nc)
        assert_connection_intact(server_nc)
        assert_connection_intact(nc, "client")
        assert "encountered error" not in caplog.text  # (nats-py: its read loop stopped)
        dropped = [conn._betterproto_nats_guard.dropped for conn in (server_nc, nc)]  # type: ignore[attr-defined]
        if kind != "status-not-utf8-unterminated":
            assert dropped[0] >= 2 and dropped[1] >= 3, dropped
        assert (await asyncio.wait_for(client.ping(PingRequest(payload="after")), 1.0)).payload == "after"
        await chat.send(ChatMessage(text="b"))
        assert (await asyncio.wait_for(chat.recv(), 1.0)).text == "echo: b"
        await chat.close()
        for who, conn in (("service", server_nc), ("client", nc)):
            await nc.publish(f"app.{who}", b"next")
            while (data := await asyncio.wait_for(apps[who].get(), 1.0)) != b"next":
                assert data == b"x" and kind == "status-not-utf8-unterminated"  # (a message nats-py can read)
        await assert_still_serves(nc)
    finally:
        writer.close()
        for sub in subs:
            await sub.unsubscribe()


# --- Peers are never ourselves; beats are read only as far as their format allows (issue 25) ------------


@bounded(20)
async def test_streams_that_name_the_services_own_liveness_subject_are_freed(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty v2 streams whose `Nats-Stream-Peer` is the service's own liveness subject (learned from
    the handshake of a stream the attacker keeps open: with it, `max_concurrent_streams=21` is full).
    The service does not share liveness with itself (its own beats would keep them alive after their
    client has gone): they get per-stream heartbeats, and when the attacker's connection goes all
    are freed within 3 intervals; a later `count_up` is accepted."""
    from conftest import connect

    async with serving(server_nc, max_concurrent_streams=21) as service:
        attacker = await connect(nats_server.url)
        collectors = [Collector(attacker) for _ in range(20)]
        try:
            async with Collector(attacker) as r, Collector(attacker) as beats:
                _, ack = await shared_chat(attacker, r, beats.subject)
                own = ack[PEER]  # the service's liveness subject
                for collector in collectors:
                    await collector.__aenter__()
                for collector in collectors:
                    headers = {REPLY_TO: collector.subject, VERSION: "2", HEARTBEAT: "200", PEER: own}
                    opened = await attacker.request(f"{PREFIX}.chat", b"", timeout=2, headers=headers)
                    assert ERROR_CODE not in (opened.headers or {}), opened.headers
                    assert PEER not in (opened.headers or {})  # no shared liveness with itself
                await settle(lambda: len(service.calls) == 21)
                with pytest.raises(RpcError) as full:  # (a default client would wait for room)
                    await StreamDemoServiceNatsClient(nc, absorb_refusals=False).chat([ChatMessage(text="x")], timeout=2)
                assert full.value.code == ErrorCode.RESOURCE_EXHAUSTED
        finally:
            await attacker.close()
        gone = asyncio.get_running_loop().time()
        await settle(lambda: not service.calls, timeout=3 * 0.2 + 0.5)
        freed_after = asyncio.get_running_loop().time() - gone
        assert freed_after <= 3 * 0.2 + 0.5, freed_after
        client = StreamDemoServiceNatsClient(nc)
        assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=2), timeout=2)] == [1, 2]
    assert_no_tracebacks(caplog)


@pytest.mark.parametrize("how", ["equal", "under"])
@bounded()
async def test_client_refuses_a_server_that_names_the_clients_own_liveness_subject(nc: NATS, server_nc: NATS, how: str) -> None:
    """A fake server confirms v2 naming, as its liveness subject, the client's own (from the offer) or
    another inbox of the client's connection: the call fails (INTERNAL) at open."""

    async def handshake(msg: Msg) -> None:
        offered = (msg.headers or {})[PEER]
        named = offered if how == "equal" else offered.rsplit(".", 1)[0] + ".other"
        await server_nc.publish(msg.reply, b"", headers={INBOX: server_nc.new_inbox(), VERSION: "2", HEARTBEAT: "100", PEER: named})

    sub = await fake_endpoint(server_nc, "sum", handshake)
    client = StreamDemoServiceNatsClient(nc, heartbeat=0.1)
    with pytest.raises(RpcError) as failed:
        await client.sum([SumRequest(value=1)], timeout=2.0)
    assert failed.value.code == ErrorCode.INTERNAL and "own inboxes" in failed.value.message, failed.value
    await sub.unsubscribe()


@bounded(30)
async def test_huge_shared_beats_cost_nothing_and_refuse_no_ping(
    nc: NATS, server_nc: NATS, service: betterproto_nats.Server, caplog: pytest.LogCaptureFixture
) -> None:
    """Thirty 1 MB beats of 10,000 lines × 8 fields for the attacker's own stream, each followed by
    a ping: every ping answers (none refused), and reading a beat costs the service under 5 ms of
    CPU (it is larger than any beat of ours: dropped whole, unread)."""
    from betterproto_nats.health.peers import PeerLiveness

    costs: list[float] = []
    original = PeerLiveness._on_beat

    def timed(self: PeerLiveness, msg: Msg) -> None:
        started = time.process_time()
        original(self, msg)
        costs.append(time.process_time() - started)

    client = StreamDemoServiceNatsClient(nc)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PeerLiveness, "_on_beat", timed)
        async with Collector(nc) as r, Collector(nc) as beats:
            s_subject, ack = await shared_chat(nc, r, beats.subject)
            line = " ".join([s_subject] + [f"s{i}" for i in range(7)])
            body = "\n".join([line] * 10_000).encode()[: 1_000_000]
            assert len(body) >= 900_000
            mine = {HEARTBEAT: "200", PEER: beats.subject}
            for _ in range(30):
                await nc.publish(ack[PEER], body, headers=mine)
                assert (await client.ping(PingRequest(payload="p"), timeout=2)).payload == "p"
            await flush_ordered(nc)
            await settle(lambda: len(costs) >= 30)
            await nc.publish(s_subject, b"", headers={END: "true", COUNT: "0"})
    assert max(costs) < 0.005, max(costs)
    assert_no_tracebacks(caplog)
