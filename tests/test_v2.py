"""Protocol v2: negotiation, flow control, dead peers, cancellation, deadlines (real nats-servers)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import AsyncIterator

import nats
import pytest
from conftest import Wiretap, helper_process, lose, noticed_within, own_tasks, settle, subscriptions
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, Overloaded, RpcError
from betterproto_nats.core.negotiation import DEFAULT_WINDOW_MESSAGES as DEFAULT_WINDOW
from betterproto_nats.testing import NatsServer
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)


class Probe(StreamDemoServiceNatsBase):
    """Handlers that run until told otherwise and record how they ended."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.yielded = 0
        self.slow = 0.0  # seconds per consumed client message

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        self.started.set()
        try:
            for i in range(request.count):
                yield CountUpResponse(number=i)
                self.yielded += 1
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        self.started.set()
        total = count = 0
        try:
            async for request in requests:
                total += request.value
                count += 1
                if self.slow and count % 100 == 0:
                    await asyncio.sleep(self.slow * 100)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return SumResponse(total=total, count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        self.started.set()
        try:
            async for message in requests:
                if self.slow:
                    await asyncio.sleep(self.slow)
                yield ChatMessage(text=message.text)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@pytest.fixture
async def probe(nc: NATS, server_nc: NATS) -> AsyncIterator[tuple[Probe, betterproto_nats.Server]]:
    impl = Probe()
    server = await betterproto_nats.serve(server_nc, impl)
    client_subs = subscriptions(nc)
    yield impl, server
    await settle(lambda: subscriptions(nc) == client_subs and not server.calls)
    assert not own_tasks()
    await server.stop()


# --- Negotiation ----------------------------------------------------------------------------------


async def test_our_client_and_server_speak_v2(nc: NATS, probe: tuple[Probe, object], tap: Wiretap) -> None:
    client = StreamDemoServiceNatsClient(nc)
    assert [r.number async for r in client.count_up(CountUpRequest(count=DEFAULT_WINDOW * 2))][-1] == DEFAULT_WINDOW * 2 - 1
    request = next(h for s, h, _ in tap.seen if s == "api.v1.stream.count_up")
    assert request["Nats-Stream-Version"] == "2"
    r_subject = request["Reply-To"]
    first = tap.headers_on(r_subject)[0]
    assert first["Nats-Stream-Version"] == "2" and "Nats-Stream-Inbox" in first  # the open message
    acks = tap.headers_on(first["Nats-Stream-Inbox"])
    assert acks and all("Nats-Stream-Ack" in h for h in acks)  # the client acknowledged as it consumed
    assert await client.sum([SumRequest(value=1)] * 3) == SumResponse(total=3, count=3)
    ack = next(h for _, h, _ in tap.seen if h.get("Nats-Stream-Inbox") and "Nats-Stream-Window" in h)
    assert ack["Nats-Stream-Version"] == "2"


# --- Flow control ---------------------------------------------------------------------------------


async def test_slow_client_gets_200k_messages_with_bounded_buffers(nc: NATS, probe: tuple[Probe, object]) -> None:
    n = 200_000
    stream = await StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=n), timeout=300)
    queued = 0
    expected = 0
    async for response in stream:
        assert response.number == expected
        expected += 1
        queued = max(queued, len(stream.call.inbox._queue))
        if expected % 1000 == 0:
            await asyncio.sleep(0.001)  # a consumer slower than the sender
    assert expected == n
    # The server never had more than a window in flight: the receiver's queue shows it.
    assert queued <= DEFAULT_WINDOW + 1


async def test_slow_client_stream_handler_bounds_the_sender(nc: NATS, probe: tuple[Probe, object]) -> None:
    impl, _ = probe
    impl.slow = 0.0005
    stream = await StreamDemoServiceNatsClient(nc).sum(timeout=120)
    sent = 4 * DEFAULT_WINDOW  # the window fills and refills four times while the handler lags
    for i in range(sent):
        await stream.send(SumRequest(value=1))
    window = stream.call.writer.rules
    assert window is not None and window.peak_messages <= window.messages
    result = await stream.close_and_recv()
    assert (result.count, result.total) == (sent, sent)


async def test_slow_bidi_handler_bounds_the_sender(nc: NATS, probe: tuple[Probe, object]) -> None:
    impl, _ = probe
    impl.slow = 0.0001
    async with await StreamDemoServiceNatsClient(nc).chat(timeout=120) as chat:
        received = []

        async def reader() -> None:
            async for reply in chat:
                received.append(int(reply.text))

        reading = asyncio.create_task(reader())
        for i in range(5_000):
            await chat.send(ChatMessage(text=str(i)))
        await chat.close_send()
        await asyncio.wait_for(reading, 60)
        window = chat.call.writer.rules
        assert window is not None and window.peak_messages <= window.messages
    assert received == list(range(5_000))


async def test_byte_window_caps_large_messages(nc: NATS, server_nc: NATS) -> None:
    big = 256 * 1024

    class Big(StreamDemoServiceNatsBase):
        async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
            for i in range(request.count):
                yield CountUpResponse(number=i, timestamp="x" * big)

    server = await betterproto_nats.serve(server_nc, Big())
    try:
        stream = await StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=200), timeout=60)
        queued_bytes = 0
        async for _ in stream:
            queued_bytes = max(queued_bytes, sum(len(m.data) for m in stream.call.inbox._queue))
            await asyncio.sleep(0.001)
        assert queued_bytes <= 4 * 1024 * 1024 + big  # the 4 MiB byte window, not 200 × 256 KiB
    finally:
        await server.stop()


# --- Cancellation ---------------------------------------------------------------------------------


async def test_break_cancels_the_server_handler(nc: NATS, probe: tuple[Probe, betterproto_nats.Server]) -> None:
    impl, server = probe
    async for response in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=10**9)):
        break
    await asyncio.wait_for(impl.cancelled.wait(), 10)
    await settle(lambda: not server.calls)
    sent = impl.yielded
    await asyncio.sleep(0)  # the handler is gone: nothing more is produced
    assert impl.yielded == sent


@pytest.mark.parametrize("shape", ["count_up", "sum", "chat"])
async def test_close_cancels_the_server_handler(nc: NATS, probe: tuple[Probe, betterproto_nats.Server], shape: str) -> None:
    impl, server = probe
    client = StreamDemoServiceNatsClient(nc)
    if shape == "count_up":
        stream = await client.count_up(CountUpRequest(count=10**9))
        await stream.recv()
    elif shape == "sum":
        stream = await client.sum()
        await stream.send(SumRequest(value=1))
    else:
        stream = await client.chat()
        await stream.send(ChatMessage(text="x"))
        await stream.recv()
    await asyncio.wait_for(impl.started.wait(), 5)
    await stream.close()
    await asyncio.wait_for(impl.cancelled.wait(), 10)
    await settle(lambda: not server.calls)


async def test_cancelled_client_task_cancels_the_server_handler(nc: NATS, probe: tuple[Probe, betterproto_nats.Server]) -> None:
    impl, server = probe

    async def consume() -> None:
        async for _ in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest(count=10**9)):
            await asyncio.sleep(0)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(impl.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(impl.cancelled.wait(), 10)
    await settle(lambda: not server.calls)


# --- Deadlines ------------------------------------------------------------------------------------


async def test_deadline_travels_and_both_sides_report_deadline_exceeded(
    nc: NATS, probe: tuple[Probe, betterproto_nats.Server], tap: Wiretap
) -> None:
    impl, server = probe

    client = StreamDemoServiceNatsClient(nc)
    before = time.time()
    stream = await client.chat(timeout=0.5)
    request = next(h for s, h, _ in tap.seen if s == "api.v1.stream.chat")
    deadline_ms = int(request["Nats-Deadline"])
    assert before * 1000 + 400 <= deadline_ms <= time.time() * 1000 + 600
    with pytest.raises(RpcError) as caught:
        await stream.recv()  # the handler waits for a message that never comes
    assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED
    await stream.close()
    await asyncio.wait_for(impl.cancelled.wait(), 5)  # the server cancelled its handler at the deadline
    await settle(lambda: not server.calls)
    chat_stats = next(e for e in server.discovery.endpoints if e.name == "chat")
    assert chat_stats.last_error == ErrorCode.DEADLINE_EXCEEDED


# --- Dead peers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_lost_server_process_fails_the_client(nats_server: NatsServer, nc: NATS, how: str) -> None:
    """Killed: the next heartbeat finds the server's inboxes gone (no-responders), within 1 s at
    default settings. Paused (SIGSTOP; its subscriptions live on): silence for three heartbeats."""
    async with helper_process("demo_server.py", nats_server.url, ready=b"ready") as proc:
        interval = 0.3
        client = StreamDemoServiceNatsClient(nc, heartbeat=interval) if how == "pause" else StreamDemoServiceNatsClient(nc)
        stream = await client.count_up(CountUpRequest(count=10**6))
        await stream.recv()
        lost = lose(proc, how)
        with pytest.raises(RpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code == ErrorCode.UNAVAILABLE
        noticed = time.monotonic() - lost
        print(f"{how}: noticed after {noticed:.2f} s")
        assert noticed < noticed_within(how, interval)


@pytest.mark.parametrize("how", ["kill", "pause"])
async def test_lost_client_process_frees_the_server_stream(
    nats_server: NatsServer, nc: NATS, server_nc: NATS, how: str
) -> None:
    """Killed: the handler is freed within 1 s at default settings; paused: within three heartbeats."""
    impl = Probe()
    server = await betterproto_nats.serve(server_nc, impl)
    interval = 0.3
    args = [str(interval)] if how == "pause" else []
    try:
        async with helper_process("demo_client.py", nats_server.url, *args, ready=b"streaming") as proc:
            assert len(server.calls) == 1
            lost = lose(proc, how)
            await asyncio.wait_for(impl.cancelled.wait(), 10)
            await settle(lambda: not server.calls)
            noticed = time.monotonic() - lost
            print(f"{how}: freed after {noticed:.2f} s")
            assert noticed < noticed_within(how, interval)
    finally:
        await server.stop()


async def test_nats_server_restart_mid_stream(tmp_path: Path) -> None:
    with NatsServer() as server:
        reconnecting = dict(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
        service_nc = await nats.connect(server.url, **reconnecting)
        client_nc = await nats.connect(server.url, **reconnecting)
        service = await betterproto_nats.serve(service_nc, Probe())
        client = StreamDemoServiceNatsClient(client_nc, heartbeat=0.3)
        stream = await client.count_up(CountUpRequest(count=10**9))
        await stream.recv()
        server.stop()
        server.start()  # same port
        # The in-flight stream ends with a clear error (no hang) ...
        with pytest.raises(RpcError) as caught:
            await asyncio.wait_for(_drain(stream), 20)
        assert caught.value.code in (ErrorCode.UNAVAILABLE, ErrorCode.DATA_LOSS)
        # ... and calls after the reconnect succeed.
        await settle(lambda: client_nc.is_connected and service_nc.is_connected, timeout=10)
        for attempt in range(50):  # nats-py resubscribes after a reconnect without waiting for the server
            try:
                got = [r.number async for r in client.count_up(CountUpRequest(count=3), timeout=2)]
                break
            except RpcError as error:  # interest may still be propagating right after the reconnect
                if error.code != ErrorCode.UNAVAILABLE or attempt == 49:
                    raise
                await asyncio.sleep(0.05)
        assert got == [0, 1, 2]
        await service.stop()
        await client_nc.close()
        await service_nc.close()


async def _drain(stream: betterproto_nats.ServerStream[CountUpResponse]) -> None:
    async for _ in stream:
        pass


async def test_stop_with_calls_in_flight(nc: NATS, server_nc: NATS) -> None:
    impl = Probe()
    server = await betterproto_nats.serve(server_nc, impl, grace_period=0.5)
    client = StreamDemoServiceNatsClient(nc)
    finishing = await client.count_up(CountUpRequest(count=3))  # completes within the grace period
    endless = await client.count_up(CountUpRequest(count=10**9))  # does not
    await endless.recv()
    stopping = asyncio.create_task(server.stop())
    assert [r.number async for r in finishing] == [0, 1, 2]
    with pytest.raises(RpcError) as caught:
        async for _ in endless:
            pass
    assert caught.value.code == ErrorCode.UNAVAILABLE
    await stopping
    with pytest.raises(RpcError) as caught:  # no new calls
        await client.sum([SumRequest(value=1)])
    assert caught.value.code == ErrorCode.UNAVAILABLE
    assert not server.calls


async def test_no_leaks_after_1000_mixed_calls(nc: NATS, server_nc: NATS) -> None:
    from demo_service import Demo

    impl = Demo()
    client_subs, server_subs = subscriptions(nc), subscriptions(server_nc)
    server = await betterproto_nats.serve(server_nc, impl)
    served_subs = subscriptions(server_nc)
    client = StreamDemoServiceNatsClient(nc)

    async def one(i: int) -> None:
        kind = i % 5
        try:
            if kind == 0:
                assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=3))] == [1, 2, 3]
            elif kind == 1:
                await client.sum([SumRequest(value=1), SumRequest(value=-1)])  # handler error
            elif kind == 2:
                async for _ in client.count_up(CountUpRequest(start=1, count=100)):
                    break  # cancelled
            elif kind == 3:
                stream = await client.chat(timeout=0.05)  # times out waiting
                try:
                    await stream.recv()
                finally:
                    await stream.close()
            else:
                assert [r.text async for r in client.chat([ChatMessage(text="a")])] == ["echo: a"]
        except Overloaded:  # a busy test machine: a call refused before it started (by the service's
            pass  # admission control, or the client's own gate until the call's deadline) holds nothing
        except RpcError as error:
            assert error.code in (ErrorCode.INVALID_ARGUMENT, ErrorCode.DEADLINE_EXCEEDED), error

    async def vanishing_client() -> None:
        """A peer that disappears without a word (its process killed): connection gone, no cancel."""
        conn = await nats.connect(server_nc.connected_url.geturl(), allow_reconnect=False)  # type: ignore[union-attr]
        gone = StreamDemoServiceNatsClient(conn, heartbeat=0.1)
        try:
            stream = await gone.count_up(CountUpRequest(start=1, count=10**6))
            await stream.recv()
            chat = await gone.chat()
            await chat.send(ChatMessage(text="x"))
            await chat.recv()
        except Overloaded:  # (a busy test machine: refused before it started, as in `one`)
            pass
        await conn.close()

    try:
        for batch in range(20):
            await asyncio.gather(*(one(batch * 50 + i) for i in range(50)), vanishing_client())
        # 1,000 calls plus 40 whose client vanished: the server frees those within three heartbeats;
        # a liveness check still in flight (a catch-up round trip before a silent peer is judged) ends.
        await settle(
            lambda: subscriptions(nc) == client_subs
            and not server.calls
            and subscriptions(server_nc) == served_subs
            and not own_tasks()
        )
    finally:
        await server.stop()  # (a failure here must not leave a service answering the next test's calls)
    assert subscriptions(server_nc) == server_subs


async def test_release_steps_survive_a_cancellation() -> None:
    """A call cancelled while it lets go (a service stopping without grace) still takes every
    release step: those after the interrupted one run in a task of their own."""
    from betterproto_nats.net.mux import let_go

    taken: list[str] = []
    blocked = asyncio.Event()

    async def first() -> None:
        taken.append("first")
        blocked.set()
        await asyncio.Event().wait()  # cancelled here

    async def step(name: str) -> None:
        taken.append(name)

    task = asyncio.create_task(let_go([first, lambda: step("second"), lambda: step("third")]))
    await blocked.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle(lambda: taken == ["first", "second", "third"])


async def test_stopping_without_grace_as_streams_close_keeps_nothing(nc: NATS, server_nc: NATS) -> None:
    """Streams closed by their clients as the service stops with no grace: whatever point each call
    had reached, both connections end with the subscriptions they started with."""
    from demo_service import Demo

    client_subs, server_subs = subscriptions(nc), subscriptions(server_nc)
    for _ in range(5):
        server = await betterproto_nats.serve(server_nc, Demo())
        client = StreamDemoServiceNatsClient(nc)
        streams = [await client.chat() for _ in range(20)]
        for stream in streams[:5]:
            await stream.send(ChatMessage(text="x"))
            await stream.recv()
        closing = [asyncio.create_task(stream.close()) for stream in streams]
        await server.stop(grace_period=0)
        await asyncio.gather(*closing)
    await settle(lambda: subscriptions(nc) == client_subs and subscriptions(server_nc) == server_subs)


async def test_max_inflight_option_sets_the_window(nc: NATS, server_nc: NATS, tap: Wiretap) -> None:
    from gen.fixtures.options import v1 as fx

    class Windowed(fx.InventoryNatsBase):
        async def windowed(self, requests: AsyncIterator[fx.EchoMessage]) -> AsyncIterator[fx.EchoMessage]:
            async for message in requests:
                yield message

    server = await betterproto_nats.serve(server_nc, Windowed())
    try:
        async with await fx.InventoryNatsClient(nc).windowed(timeout=30) as stream:

            async def read() -> list[int]:  # read while writing: both directions have a window
                return [m.number async for m in stream]

            reading = asyncio.create_task(read())
            for i in range(100):
                await stream.send(fx.EchoMessage(number=i))
            await stream.close_send()
            assert await reading == list(range(100))
            window = stream.call.writer.rules
            assert window is not None and window.messages == 32 and window.peak_messages <= 32
        request = next(h for s, h, _ in tap.seen if s == "shop.inventory.windowed")
        assert request["Nats-Stream-Window"] == "32"  # what the client grants the server
        ack = next(h for _, h, _ in tap.seen if "Nats-Stream-Inbox" in h and "Nats-Stream-Window" in h)
        assert ack["Nats-Stream-Window"] == "32"  # what the server grants the client
    finally:
        await server.stop()


async def test_server_ending_a_bidi_call_wakes_a_blocked_sender(nc: NATS, server_nc: NATS) -> None:
    """A client that writes without reading runs out of credit; when the server ends the call
    (here: its 0.5 s deadline), the blocked send raises the server's error instead of hanging."""
    from gen.fixtures.options import v1 as fx

    class Echo(fx.JsonEchoApiNatsBase):
        async def stream(self, requests: AsyncIterator[fx.EchoMessage]) -> AsyncIterator[fx.EchoMessage]:
            async for message in requests:
                if message.number == 40:
                    raise RpcError(ErrorCode.RESOURCE_EXHAUSTED, "enough")
                yield message

    server = await betterproto_nats.serve(server_nc, Echo())
    try:
        async with await fx.JsonEchoApiNatsClient(nc).stream(timeout=30) as stream:
            with pytest.raises(RpcError) as caught:
                for i in range(10_000):  # never reads: the windows fill, then the server ends the call
                    await stream.send(fx.EchoMessage(number=i))
            assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED
    finally:
        await server.stop()


async def test_v1_stream_ends_after_a_reconnect_instead_of_hanging() -> None:
    """A Go (v1) server has no heartbeats: after the NATS server restarts, a stream that waits for
    it must still end (UNAVAILABLE), not hang until a deadline it may not have."""
    with NatsServer() as server:
        reconnecting = dict(allow_reconnect=True, max_reconnect_attempts=-1, reconnect_time_wait=0.05)
        go_nc = await nats.connect(server.url, **reconnecting)
        client_nc = await nats.connect(server.url, **reconnecting)

        async def go_server(msg) -> None:  # type: ignore[no-untyped-def]
            # v1: ignores the v2 offer, sends one message and then nothing (its end marker is "lost").
            await go_nc.publish(msg.headers["Reply-To"], bytes(CountUpResponse(number=1)), headers={"Nats-Stream-Seq": "1"})

        await go_nc.subscribe("api.v1.stream.count_up", queue="q", cb=go_server)
        from betterproto_nats.net.nats_fixes import flush_ordered

        await flush_ordered(go_nc)
        stream = await StreamDemoServiceNatsClient(client_nc).count_up(CountUpRequest(count=5))  # no timeout
        assert (await stream.recv()).number == 1
        server.stop()
        server.start()  # same port; both connections reconnect
        with pytest.raises(RpcError) as caught:
            await asyncio.wait_for(stream.recv(), 15)
        assert caught.value.code == ErrorCode.UNAVAILABLE
        await stream.close()
        await client_nc.close()
        await go_nc.close()
