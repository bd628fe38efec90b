"""Liveness per peer connection (v2, runtime/health/peers.py): all streams between two connections share one
heartbeat per half interval each way, whatever their number; a killed, paused or vanished peer still
ends every one of its streams promptly; a stream whose peer let go of it ends even while the two
connections keep talking; a peer that does not share keeps per-stream heartbeats. Real nats-servers."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator

import pytest
from conftest import Wiretap, helper_process, lose, noticed_within, own_tasks, settle, subscriptions
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from test_loss import Lossy, Outcomes

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError, ServerStream
from betterproto_nats.testing import InMemoryBus, NatsServer
from betterproto_nats.net.transport import NatsTransport
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
)

HEARTBEAT = 0.2  # seconds
BEAT = "Nats-Stream-Heartbeat"
PEER = "Nats-Stream-Peer"


class Idle(StreamDemoServiceNatsBase):
    """count_up sends `count` messages and then, with `start` 0, waits until cancelled; chat echoes."""

    def __init__(self) -> None:
        self.forever = asyncio.Event()
        self.cancelled = 0

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        try:
            for number in range(request.count):
                yield CountUpResponse(number=number)
            if request.start == 0:
                await self.forever.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield ChatMessage(text=message.text)


class WithoutPeer(NatsTransport):
    """A peer of an earlier version: it never names `Nats-Stream-Peer`, so heartbeats stay per stream."""

    @staticmethod
    def _strip(headers: dict[str, str] | None) -> dict[str, str] | None:
        return {k: v for k, v in headers.items() if k != PEER} if headers else headers

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None) -> None:
        await super().publish(subject, payload, reply, self._strip(headers))

    def publish_nowait(self, subject: str, payload: bytes, headers: dict[str, str], reply: str = "") -> bool:
        return super().publish_nowait(subject, payload, self._strip(headers) or {}, reply)

    async def request(self, subject: str, payload: bytes, timeout: float | None, headers: dict[str, str] | None = None) -> Msg:
        return await super().request(subject, payload, timeout, self._strip(headers))

    async def subscribe(self, subject: str, cb: Any, queue: str = "", pending_msgs_limit: int | None = None, pending_bytes_limit: int | None = None) -> Any:
        async def unaware(msg: Msg) -> None:  # nor does it read the header in what arrives
            msg.headers = self._strip(msg.headers)
            await cb(msg)

        return await super().subscribe(subject, unaware, queue, pending_msgs_limit, pending_bytes_limit)


@pytest.fixture
async def idle(server_nc: NATS) -> AsyncIterator[tuple[Idle, betterproto_nats.Server]]:
    impl = Idle()
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_streams=1000)
    yield impl, server
    await server.stop(grace_period=0)


async def open_idle(client: StreamDemoServiceNatsClient, n: int) -> list[ServerStream[CountUpResponse]]:
    streams = await asyncio.gather(*(client.count_up(CountUpRequest(count=1)) for _ in range(n)))
    for stream in streams:
        assert (await stream.recv()).number == 0
    return list(streams)


def beats(tap: Wiretap, since: int) -> list[tuple[str, dict[str, str], int]]:
    """Heartbeats (shared or per stream) the tap saw, not offers or confirmations, which say an interval too."""
    return [item for item in tap.seen[since:] if BEAT in item[1] and "Nats-Stream-Version" not in item[1]]


def quiet_both_ways(tap: Wiretap) -> bool:
    """Each connection's last four heartbeats (two liveness subjects) carried nothing."""
    last: dict[str, list[int]] = {}
    for subject, _, size in beats(tap, 0):
        last.setdefault(subject, []).append(size)
    return len(last) == 2 and all(sizes[-4:] == [0] * 4 for sizes in last.values())


async def ping_pong(chat: betterproto_nats.BidiStream[ChatMessage, ChatMessage], text: str) -> None:
    await chat.send(ChatMessage(text=text))
    assert (await asyncio.wait_for(chat.recv(), 5)).text == text


# --- One heartbeat per interval, whatever the number of streams ---------------------------------------


@pytest.mark.parametrize("streams", [10, 300])
async def test_idle_streams_share_one_heartbeat_per_half_interval(
    nc: NATS, idle: tuple[Idle, betterproto_nats.Server], tap: Wiretap, streams: int
) -> None:
    impl, server = idle
    opened = await open_idle(StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT), streams)
    assert all(stream.call.session is not None and stream.call.session.group is not None for stream in opened)
    assert subscriptions(nc) == 1  # every inbox of the connection under one subscription
    # The first beats carry the streams' first message counts; then there is nothing to say. Both
    # sides' last beats empty: the tap has what each side sent before them (NATS keeps a publisher's
    # order), the streams' opening messages included.
    await settle(lambda: quiet_both_ways(tap), timeout=10 * HEARTBEAT)
    start, started = len(tap.seen), time.monotonic()
    await asyncio.sleep(6 * HEARTBEAT)  # a measuring window, not a synchronisation
    window = beats(tap, start)
    intervals = (time.monotonic() - started) / HEARTBEAT
    # Two beats per interval each way (one per half interval), with slack for timer jitter.
    assert len(window) <= 4 * intervals + 4, f"{len(window)} heartbeats in {intervals:.1f} intervals"
    assert len(window) >= 2 * intervals - 4, f"only {len(window)} heartbeats in {intervals:.1f} intervals"
    assert len({subject for subject, _, _ in window}) == 2  # the two connections' liveness subjects
    stream_inboxes = {stream.call.inbox.subject for stream in opened if stream.call.inbox is not None}
    stream_inboxes |= {stream.call.session.peer_inbox for stream in opened if stream.call.session is not None}
    assert not [item for item in tap.seen[start:] if item[0] in stream_inboxes]  # no per-stream traffic at all
    assert all(size == 0 for _, _, size in window)  # idle: no counts to claim or report
    assert len(server.calls) == streams
    for stream in opened:
        await stream.close()
    await settle(lambda: not server.calls and impl.cancelled == streams)


async def test_loss_is_still_found_per_stream(nc: NATS, server_nc: NATS) -> None:
    """Among idle streams, one whose last message vanished: shared heartbeats carry its count, and
    it alone ends with DATA_LOSS (both sides)."""
    outcomes = Outcomes()
    server = await betterproto_nats.serve(Lossy(server_nc, seq=2), Idle(), interceptors=[outcomes])
    try:
        client = StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT)
        bystanders = await open_idle(client, 20)
        stream = await client.count_up(CountUpRequest(count=2))
        assert (await stream.recv()).number == 0
        with pytest.raises(RpcError) as lost:
            await asyncio.wait_for(stream.recv(), 10 * HEARTBEAT)
        assert lost.value.code == ErrorCode.DATA_LOSS, lost.value
        assert await asyncio.wait_for(outcomes.codes.get(), 10 * HEARTBEAT) == ErrorCode.DATA_LOSS
        assert len(server.calls) == 20  # the others live on
        for bystander in bystanders:
            await bystander.close()
    finally:
        await server.stop(grace_period=0)


async def test_peers_that_keep_arriving_do_not_hold_the_beats_back() -> None:
    """A new peer every 20 ms (a fifth of the timer's tick) for a second: the service still beats
    its first client every half interval (in memory)."""
    bus = InMemoryBus()
    server = await betterproto_nats.serve(bus.connect(), Idle())
    try:
        first = StreamDemoServiceNatsClient(bus.connect(), heartbeat=HEARTBEAT)
        async with await first.chat() as chat:
            await ping_pong(chat, "a")
            arrivals = []
            for _ in range(50):
                arrivals.append(await StreamDemoServiceNatsClient(bus.connect(), heartbeat=HEARTBEAT).chat())
                await asyncio.sleep(0.02)  # the arrival rate is the test's subject
            await ping_pong(chat, "b")  # 1 s > three intervals: alive only if the service kept beating
            for stream in arrivals:
                await stream.close()
    finally:
        await server.stop(grace_period=0)


# --- Released streams end although the two connections keep talking ----------------------------------


async def test_a_lost_end_marker_ends_the_stream_while_the_peer_lives(nc: NATS, server_nc: NATS) -> None:
    """The server's end marker vanishes while another stream keeps the connections' heartbeats going:
    the server's release, named in its next heartbeats, ends the client's stream with DATA_LOSS."""
    server = await betterproto_nats.serve(Lossy(server_nc, end=True), Idle())
    try:
        client = StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT)
        async with await client.chat() as keepalive:
            await ping_pong(keepalive, "a")
            received = []
            started = time.monotonic()
            with pytest.raises(RpcError) as lost:
                async for response in client.count_up(CountUpRequest(start=1, count=3)):  # then it ends
                    received.append(response.number)
            assert received == [0, 1, 2]
            assert lost.value.code == ErrorCode.DATA_LOSS and "did not arrive" in lost.value.message, lost.value
            assert time.monotonic() - started < 10 * HEARTBEAT
            await ping_pong(keepalive, "b")  # the connections' liveness was never in doubt
    finally:
        await server.stop(grace_period=0)


async def test_a_lost_cancel_ends_the_handler_while_the_peer_lives(nc: NATS, server_nc: NATS) -> None:
    """The client's cancel vanishes while another stream keeps the heartbeats going: its release,
    named in the client's next heartbeats, ends the server's call (CANCELLED)."""
    impl, outcomes = Idle(), Outcomes()
    server = await betterproto_nats.serve(server_nc, impl, interceptors=[outcomes])
    try:
        dropping = Lossy(nc, header="Nats-Stream-Cancel")
        client = StreamDemoServiceNatsClient(dropping, heartbeat=HEARTBEAT)
        async with await client.chat() as keepalive:
            await ping_pong(keepalive, "a")
            stream = await client.count_up(CountUpRequest(count=1))
            await stream.recv()
            await stream.close()
            assert dropping.dropped == 1
            assert await asyncio.wait_for(outcomes.codes.get(), 10 * HEARTBEAT) == ErrorCode.CANCELLED
            assert impl.cancelled == 1
            await ping_pong(keepalive, "b")
    finally:
        await server.stop(grace_period=0)


async def test_an_idle_stream_outlives_the_idle_timeout(nc: NATS, server_nc: NATS) -> None:
    """Shared heartbeats count as the client's word on every one of its streams (the service's
    stream_idle_timeout does not end a quiet but live stream)."""
    server = await betterproto_nats.serve(server_nc, Idle(), stream_idle_timeout=0.6)  # heartbeat 0.2 s
    try:
        async with await StreamDemoServiceNatsClient(nc).chat() as chat:
            await ping_pong(chat, "a")
            assert chat.call.session is not None and chat.call.session.group is not None
            await asyncio.sleep(1.0)  # quiet for 1.7 idle timeouts: the test's subject, not a synchronisation
            await ping_pong(chat, "b")
    finally:
        await server.stop(grace_period=0)


# --- Peers that do not share ---------------------------------------------------------------------------


async def test_a_client_without_shared_liveness_gets_per_stream_heartbeats(
    nc: NATS, idle: tuple[Idle, betterproto_nats.Server], tap: Wiretap
) -> None:
    old = StreamDemoServiceNatsClient(WithoutPeer(nc), heartbeat=HEARTBEAT)
    new = StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT)
    async with await old.chat() as old_chat, await new.chat() as new_chat:
        await ping_pong(old_chat, "a")
        await ping_pong(new_chat, "a")
        assert old_chat.call.session is not None and old_chat.call.session.group is None
        assert new_chat.call.session is not None and new_chat.call.session.group is not None
        start = len(tap.seen)
        await asyncio.sleep(5 * HEARTBEAT)  # quiet for longer than three intervals
        await ping_pong(old_chat, "b")
        await ping_pong(new_chat, "b")
        per_stream = {old_chat.call.session.peer_inbox, old_chat.call.inbox.subject}  # type: ignore[union-attr]
        window = beats(tap, start)
        assert {subject for subject, _, _ in window if subject in per_stream} == per_stream  # both ways
        new_inboxes = {new_chat.call.session.peer_inbox, new_chat.call.inbox.subject}  # type: ignore[union-attr]
        assert not [subject for subject, _, _ in window if subject in new_inboxes]
        request = next(h for s, h, _ in tap.seen if s == "api.v1.stream.chat" and PEER not in h)
        assert "Nats-Stream-Version" in request  # v2 all the same


async def test_a_server_without_shared_liveness_gets_per_stream_heartbeats(nc: NATS, server_nc: NATS, tap: Wiretap) -> None:
    server = await betterproto_nats.serve(WithoutPeer(server_nc), Idle())
    try:
        async with await StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT).chat() as chat:
            await ping_pong(chat, "a")
            assert chat.call.session is not None and chat.call.session.group is None
            start = len(tap.seen)
            await asyncio.sleep(5 * HEARTBEAT)
            await ping_pong(chat, "b")
            assert {chat.call.session.peer_inbox, chat.call.inbox.subject} <= {s for s, _, _ in beats(tap, start)}  # type: ignore[union-attr]
    finally:
        await server.stop(grace_period=0)
    await settle(lambda: not own_tasks())


@pytest.mark.parametrize("shared", [True, False])
async def test_a_stall_of_the_loop_both_sides_share_is_not_silence(nc: NATS, server_nc: NATS, shared: bool) -> None:
    """Service and client in one process (an application calling its own service, a test): the loop
    stands still for 5 intervals (something computing). When it runs again, each side's overdue
    timer comes before the other's beat is out; neither takes the stall for the peer's silence
    (before: the stream ended UNAVAILABLE "no word from the peer for 0.6 s")."""
    server = await betterproto_nats.serve(server_nc if shared else WithoutPeer(server_nc), Idle())
    try:
        async with await StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT).chat() as chat:
            await ping_pong(chat, "a")
            assert chat.call.session is not None and (chat.call.session.group is not None) == shared
            for _ in range(3):
                time.sleep(5 * HEARTBEAT)  # the stall is the test's subject
                await ping_pong(chat, "b")
            await asyncio.sleep(2 * HEARTBEAT)  # the judging after the stalls
            await ping_pong(chat, "c")
    finally:
        await server.stop(grace_period=0)


# --- Dead and paused peers ------------------------------------------------------------------------------


async def _fails(stream: ServerStream[CountUpResponse]) -> tuple[RpcError, float]:
    try:
        while True:
            await asyncio.wait_for(stream.recv(), 10)
    except RpcError as error:
        return error, time.monotonic()


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_every_stream_of_a_lost_service_process_ends(nats_server: NatsServer, nc: NATS, how: str) -> None:
    """50 idle streams to a service in another process. Killed: the next heartbeat finds its
    connection gone (no responders), all end within 1 s at default settings; paused: silence for
    three intervals ends them all."""
    async with helper_process("demo_server.py", nats_server.url, "idle", ready=b"ready") as proc:
        interval = 0.3
        client = StreamDemoServiceNatsClient(nc, heartbeat=interval) if how == "pause" else StreamDemoServiceNatsClient(nc)
        streams = await open_idle(client, 50)
        lost = lose(proc, how)
        ended = await asyncio.gather(*(_fails(stream) for stream in streams))
        assert {error.code for error, _ in ended} == {ErrorCode.UNAVAILABLE}
        noticed = max(at for _, at in ended) - lost
        print(f"{how}: 50 streams ended after {noticed:.2f} s")
        assert noticed < noticed_within(how, interval)
        for stream in streams:
            await stream.close()


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_every_stream_of_a_lost_client_process_is_freed(
    nats_server: NatsServer, idle: tuple[Idle, betterproto_nats.Server], how: str
) -> None:
    """50 idle streams from a client in another process: killed, the service frees them all within
    1 s at default settings; paused, within three of its heartbeat intervals."""
    impl, server = idle
    interval = 0.3
    args = (str(interval) if how == "pause" else "1.0", "50")
    async with helper_process("demo_client.py", nats_server.url, *args, ready=b"streaming") as proc:
        assert len(server.calls) == 50
        lost = lose(proc, how)
        await settle(lambda: not server.calls and impl.cancelled == 50, timeout=10)
        freed = time.monotonic() - lost
        print(f"{how}: 50 streams freed after {freed:.2f} s")
        assert freed < noticed_within(how, interval)
