"""Batched frames (protocol v2 extension): the framing, what goes on the wire to a peer that offered
batches and to one that did not, and hostile batches on both sides (raw nats-py peers)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest
from conftest import Wiretap, needs_fast_paths, settle
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from rawpeer import Collector
from test_hostile_peers import assert_connection_intact, assert_still_serves, fake_endpoint, next_frame

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError
from betterproto_nats.core.batch import pack, unpack
from betterproto_nats.net.nats_fast import publish_nowait
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.core.negotiation import DEFAULT_WINDOW_MESSAGES
from betterproto_nats.core.headers import MAX_BATCH
from demo_service import Demo
from gen.streaming.v1 import ChatMessage, CountUpRequest, CountUpResponse, StreamDemoServiceNatsClient, SumRequest, SumResponse

PREFIX = "api.v1.stream"
SEQ, BATCH, END, COUNT = "Nats-Stream-Seq", "Nats-Stream-Batch", "Nats-Stream-End", "Nats-Stream-Count"
INBOX, ERROR_CODE = "Nats-Stream-Inbox", "Nats-Service-Error-Code"
OFFER = {"Nats-Stream-Version": "2", "Nats-Stream-Heartbeat": "5000", "Nats-Stream-Window": "256", "Nats-Stream-Window-Bytes": "4194304"}


# --- Framing --------------------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=40))
def test_pack_and_unpack_round_trip(bodies: list[bytes]) -> None:
    assert unpack(pack(bodies), len(bodies)) == bodies


MALFORMED = {
    "length past the end": (b"\x05abc", 1),
    "bytes left over": (b"\x01a\x01b", 1),
    "fewer messages than claimed": (b"\x01a", 2),
    "empty payload": (b"", 1),
    "over-long length varint": (b"\xff\xff\xff\xff\xff\x01", 1),
    "huge length": (b"\xff\xff\xff\xff\x0fa", 1),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_unpack_refuses_what_is_not_exactly_the_count(case: str) -> None:
    data, count = MALFORMED[case]
    assert unpack(data, count) is None


# --- On the wire ------------------------------------------------------------------------------------


@pytest.fixture
async def service(server_nc: NATS) -> AsyncIterator[betterproto_nats.Server]:
    server = await betterproto_nats.serve(server_nc, Demo())
    yield server
    await server.stop()


async def collect_stream(r: Collector) -> list[Msg]:
    """Data frames up to and including the end marker."""
    frames = [await next_frame(r, 5)]
    while END not in (frames[-1].headers or {}):
        frames.append(await next_frame(r, 5))
    return frames


def bodies_of(frames: list[Msg]) -> list[bytes]:
    """The stream's messages in order, unpacking batches; checks that sequence numbers are contiguous."""
    bodies: list[bytes] = []
    for frame in frames[:-1]:
        headers = frame.headers or {}
        assert int(headers[SEQ]) == len(bodies) + 1, headers
        count = int(headers.get(BATCH, "1"))
        bodies.extend(unpack(frame.data, count) if BATCH in headers else [frame.data])  # type: ignore[arg-type]
    assert frames[-1].headers[COUNT] == str(len(bodies))  # type: ignore[index]
    return bodies


@pytest.mark.parametrize("offered", [16, None], ids=["batches-offered", "no-batch-offer"])
async def test_server_batches_only_for_a_client_that_offered(nc: NATS, service: betterproto_nats.Server, offered: int | None) -> None:
    """Messages a handler yields without waiting travel together, within the offered size; a v2
    client that did not offer batches gets one NATS message per stream message, as before."""
    offer = {**OFFER, **({BATCH: str(offered)} if offered else {})}
    async with Collector(nc) as r:
        await nc.publish(f"{PREFIX}.count_up", bytes(CountUpRequest(count=200)), reply=r.subject, headers={"Reply-To": r.subject, **offer})
        frames = await collect_stream(r)
    assert bodies_of(frames) == [bytes(CountUpResponse(number=i)) for i in range(200)]
    sizes = [int((f.headers or {}).get(BATCH, "1")) for f in frames[:-1]]
    if offered:
        assert max(sizes) > 1 and max(sizes) <= offered, sizes
        assert len(frames) < 200 // 4
        assert all(BATCH not in (f.headers or {}) for f in frames[:-1] if int(f.headers[SEQ]) == 1)  # type: ignore[index]
    else:
        assert sizes == [1] * 200 and all(BATCH not in (f.headers or {}) for f in frames)


async def open_sum_v2(nc: NATS, r: Collector) -> tuple[str, dict[str, str]]:
    ack = await nc.request(f"{PREFIX}.sum", b"", timeout=2, headers={"Reply-To": r.subject, **OFFER})
    assert ack.headers is not None and ERROR_CODE not in ack.headers, ack.headers
    return ack.headers[INBOX], ack.headers


async def test_server_takes_batches_and_says_so(nc: NATS, service: betterproto_nats.Server) -> None:
    async with Collector(nc) as r:
        s_subject, ack = await open_sum_v2(nc, r)
        assert ack[BATCH] == str(MAX_BATCH)  # the server offers to take batches
        await nc.publish(s_subject, bytes(SumRequest(value=1)), reply=r.subject, headers={SEQ: "1"})
        await nc.publish(s_subject, pack([bytes(SumRequest(value=v)) for v in (2, 3, 4)]), headers={SEQ: "2", BATCH: "3"})
        await nc.publish(s_subject, bytes(SumRequest(value=5)), headers={SEQ: "5"})
        await nc.publish(s_subject, b"", headers={END: "true", COUNT: "5"})
        answer = await next_frame(r, 5)
    assert ERROR_CODE not in (answer.headers or {}), answer.headers
    assert SumResponse.parse(answer.data) == SumResponse(total=15, count=5)


HOSTILE_BATCHES = {
    "framing-lies": ({SEQ: "1", BATCH: "3"}, b"\x01a\x05b", ErrorCode.DATA_LOSS),
    "batch-zero": ({SEQ: "1", BATCH: "0"}, b"", ErrorCode.DATA_LOSS),
    "batch-over-max": ({SEQ: "1", BATCH: str(MAX_BATCH + 1)}, b"", ErrorCode.DATA_LOSS),
    "batch-superscript": ({SEQ: "1", BATCH: "²"}, b"", ErrorCode.DATA_LOSS),
    "batch-400-digits": ({SEQ: "1", BATCH: "9" * 400}, b"", ErrorCode.DATA_LOSS),
    "wrong-first-seq": ({SEQ: "7", BATCH: "2"}, pack([b"", b""]), ErrorCode.DATA_LOSS),
}


@pytest.mark.parametrize("case", HOSTILE_BATCHES)
async def test_hostile_batch_to_the_server_is_a_clean_error(nc: NATS, server_nc: NATS, service: betterproto_nats.Server, case: str) -> None:
    headers, body, code = HOSTILE_BATCHES[case]
    async with Collector(nc) as r:
        s_subject, _ = await open_sum_v2(nc, r)
        await nc.publish(s_subject, body, headers=headers)
        await nc.publish(s_subject, b"", headers={END: "true", COUNT: "3"})
        answer = await next_frame(r, 5)
    assert (answer.headers or {}).get(ERROR_CODE) == code, answer.headers
    assert_connection_intact(server_nc)
    await assert_still_serves(nc)


class NotReading(Demo):
    """A client-stream handler that never reads: everything the client sends stays queued."""

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        await asyncio.Event().wait()
        return SumResponse()


async def test_batches_count_what_they_claim_against_the_window(nc: NATS, server_nc: NATS) -> None:
    """Full batches to a handler that does not read claim more messages than the window grants."""
    server = await betterproto_nats.serve(server_nc, NotReading())
    try:
        async with Collector(nc) as r:
            s_subject, _ = await open_sum_v2(nc, r)
            for first in range(1, DEFAULT_WINDOW_MESSAGES + 2 * MAX_BATCH, MAX_BATCH):
                await nc.publish(s_subject, b"\x00" * MAX_BATCH, headers={SEQ: str(first), BATCH: str(MAX_BATCH)})
            answer = await next_frame(r, 5)
        assert (answer.headers or {}).get(ERROR_CODE) == ErrorCode.RESOURCE_EXHAUSTED, answer.headers
        assert_connection_intact(server_nc)
    finally:
        await server.stop()


async def test_our_client_refuses_a_malformed_batch(nc: NATS, server_nc: NATS) -> None:
    """A raw server that confirms v2 and sends a batch whose framing lies: DATA_LOSS, not a hang."""

    async def answer(msg: Msg) -> None:
        r_subject = (msg.headers or {})["Reply-To"]
        own = server_nc.new_inbox()
        await server_nc.publish(r_subject, b"", headers={"Nats-Stream-Version": "2", INBOX: own, "Nats-Stream-Heartbeat": "1000"})
        await server_nc.publish(r_subject, bytes(CountUpResponse(number=0)), headers={SEQ: "1"})
        await server_nc.publish(r_subject, b"\x02\x08\x01\x09", headers={SEQ: "2", BATCH: "2"})

    sub = await fake_endpoint(server_nc, "count_up", answer)
    try:
        client = StreamDemoServiceNatsClient(nc)
        received = []
        with pytest.raises(RpcError) as failed:
            async for response in client.count_up(CountUpRequest(count=3), timeout=5):
                received.append(response.number)
        assert received == [0]
        assert failed.value.code == ErrorCode.DATA_LOSS and "batched frame" in failed.value.message
    finally:
        await sub.unsubscribe()


async def test_our_peers_batch_both_ways(nc: NATS, service: betterproto_nats.Server, tap: Wiretap) -> None:
    client = StreamDemoServiceNatsClient(nc)
    assert [r.number async for r in client.count_up(CountUpRequest(count=1000))] == list(range(1000))
    assert await client.sum(SumRequest(value=1) for _ in range(1000)) == SumResponse(total=1000, count=1000)
    data = tap.with_header(SEQ)
    assert len(data) < 2000 // 4, len(data)
    batched_to = {subject for subject, headers, _ in data if BATCH in headers}
    assert len(batched_to) == 2  # R (server to client) and S (client to server)


@needs_fast_paths
async def test_publish_nowait_is_active_on_this_nats_py(nc: NATS) -> None:
    """The synchronous publish path relies on nats-py internals; if an upgrade changes them, this
    fails (everything still works through `publish`, only slower)."""
    received: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await nc.subscribe("nowait.check", cb=received.put)
    await flush_ordered(nc)
    assert publish_nowait(nc, "nowait.check", b"body", {"A": "1", SEQ: "7"}, reply="r.x")
    msg = await asyncio.wait_for(received.get(), 5)
    assert (msg.data, msg.reply, msg.headers) == (b"body", "r.x", {"A": "1", SEQ: "7"})
    await sub.unsubscribe()


class SlowPublisher:
    """A transport whose `publish` waits a few loop turns (a full socket buffer) and that records
    every frame; it has no `publish_nowait`, so batches that cannot leave at once go through a task."""

    max_payload = 1024 * 1024

    def __init__(self) -> None:
        self.frames: list[tuple[dict[str, str], bytes]] = []

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.frames.append((dict(headers or {}), payload))


async def test_batches_stay_within_bounds_while_a_flush_waits() -> None:
    """A producer that never waits, a transport that does: batches never outgrow the receiver's
    count or the byte bound, and every message arrives once, in order."""
    from betterproto_nats.encoding.codec import PROTO
    from betterproto_nats.streaming.flow import FlowWindow
    from betterproto_nats.core.negotiation import Window
    from betterproto_nats.streaming.writer import StreamWriter

    transport = SlowPublisher()
    writer = StreamWriter(transport, "_INBOX.peer", PROTO, "m")  # type: ignore[arg-type]
    writer.rules.limit(Window(100_000, 64 * 2**20, 16))
    writer.limit(FlowWindow(writer.rules))
    bodies = [bytes([i % 251]) * (i % 700) for i in range(3000)]
    for body in bodies:  # as handlers' and callers' messages are sent
        if not writer.queue_nowait(body):
            await writer.send_body(body)
    await writer.end()
    received: list[bytes] = []
    for headers, payload in transport.frames[:-1]:
        assert int(headers[SEQ]) == len(received) + 1
        count = int(headers.get(BATCH, "1"))
        assert count <= 16 and len(payload) <= 64 * 1024, (count, len(payload))
        received.extend(unpack(payload, count) if BATCH in headers else [payload])  # type: ignore[arg-type]
    assert received == bodies
    assert transport.frames[-1][0][END] == "true" and transport.frames[-1][0][COUNT] == "3000"


class Paused(Demo):
    """A bidi handler that reads only once told to: the client's stream queues up meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:  # type: ignore[override]
        await self.go.wait()
        yield ChatMessage(text=str(len([r async for r in requests])))


async def test_a_full_byte_window_does_not_overrun_a_paused_reader(nc: NATS, server_nc: NATS) -> None:
    """256 messages of 16 KiB fill the 4 MiB window exactly; the receiver also holds header values
    and batch framing, which the sender's window does not count: that must not read as an overrun."""
    impl = Paused()
    server = await betterproto_nats.serve(server_nc, impl)
    try:
        body = ChatMessage(text="x" * (16384 - 3))  # 16 KiB encoded
        call = asyncio.ensure_future(_texts(StreamDemoServiceNatsClient(nc).chat([body] * 256, timeout=20)))

        def queued() -> int:
            return sum(inbox._queued_messages for responder in server.stream_calls.values() for inbox in responder.inboxes)

        await settle(lambda: queued() >= 256 or call.done(), timeout=10)
        impl.go.set()
        assert await asyncio.wait_for(call, 10) == ["256"]
    finally:
        await server.stop()


async def _texts(responses: AsyncIterator[ChatMessage]) -> list[str]:
    return [r.text async for r in responses]


@needs_fast_paths
async def test_direct_delivery_is_active_on_this_nats_py(nc: NATS) -> None:
    """The runtime's own subscriptions (endpoints, the inbox mux, request answers) take messages as
    nats-py reads them (`nats_fast.DirectDelivery`); if a nats-py upgrade changes its internals,
    this fails (messages then go through the subscription's callback, only slower). A handler that
    raises is logged and leaves the connection reading."""
    from betterproto_nats.net.nats_fast import DirectDelivery
    from betterproto_nats.net.transport import transport_of

    got: list[bytes] = []

    def handler(msg: Msg) -> None:
        if msg.data == b"boom":
            raise ValueError("a bug in a handler")
        got.append(msg.data)

    sub = await transport_of(nc).subscribe_direct("direct.check", handler)  # type: ignore[attr-defined]
    raw = next(s for s in nc._subs.values() if s.subject == "direct.check")
    assert isinstance(raw._pending_queue, DirectDelivery)
    assert raw._wait_for_msgs_task is not None
    await flush_ordered(nc)
    for body in (b"one", b"boom", b"two"):
        await nc.publish("direct.check", body)
    await flush_ordered(nc)  # the PONG follows the messages: they were handled as they were read
    assert got == [b"one", b"two"] and raw.pending_msgs == 0 and raw.pending_bytes == 0
    assert raw._wait_for_msgs_task.done()
    guard = nc._betterproto_nats_guard  # type: ignore[attr-defined]
    reads = nc._betterproto_nats_direct_reads  # type: ignore[attr-defined]
    assert reads.guard is guard and vars(nc)["_process_msg"] == reads.process_msg  # they skip nats-py's `_process_msg` (`nats_fast.DirectReads`)
    await sub.unsubscribe()


@needs_fast_paths
async def test_messages_read_directly_keep_what_nats_py_gives_the_rest(nc: NATS) -> None:
    """With the connection's fast way for direct subscriptions installed, a direct subscription
    still gets headers, reply subjects and nats-py's counters; a plain subscription on the same
    connection (a user's own, with headers, an auto-unsubscribe limit) still gets everything the
    nats-py way."""
    from betterproto_nats.net.transport import transport_of

    direct: list[Msg] = []
    sub = await transport_of(nc).subscribe_direct("direct.fast", direct.append)  # type: ignore[attr-defined]
    plain: list[Msg] = []

    async def on_plain(msg: Msg) -> None:
        plain.append(msg)

    limited = await nc.subscribe("plain.limited", cb=on_plain)
    await limited.unsubscribe(limit=2)
    user = await nc.subscribe("plain.user", cb=on_plain)
    await flush_ordered(nc)
    before = nc.stats["in_msgs"]
    await nc.publish("direct.fast", b"a", reply="_INBOX.r.1", headers={"X-One": "1"})
    await nc.publish("direct.fast", b"bb")
    for body in (b"1", b"2", b"3"):
        await nc.publish("plain.limited", body)
    await nc.publish("plain.user", b"u", headers={"X-Two": "2"})
    await flush_ordered(nc)
    await settle(lambda: len(plain) == 3)
    assert [(m.data, m.reply, m.headers, m.subject) for m in direct] == [
        (b"a", "_INBOX.r.1", {"X-One": "1"}, "direct.fast"),
        (b"bb", "", None, "direct.fast"),
    ]
    assert sorted(m.data for m in plain) == [b"1", b"2", b"u"]  # the limit held: "3" was not delivered
    assert next(m for m in plain if m.data == b"u").headers == {"X-Two": "2"}
    assert nc.stats["in_msgs"] - before == 5  # counted either way (the server kept "3" to itself)
    await sub.unsubscribe()
    await user.unsubscribe()
