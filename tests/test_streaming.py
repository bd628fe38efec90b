"""Server, client and bidirectional streams end to end, in both client styles."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest
from conftest import own_tasks, settle, subscriptions
from demo_service import Demo
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError
from gen.fixtures.options import v1 as fx
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
    SumRequest,
)


@pytest.fixture
async def demo(server_nc: NATS, nc: NATS) -> AsyncIterator[Demo]:
    impl = Demo()
    server = await betterproto_nats.serve(server_nc, impl)
    client_subs = subscriptions(nc)
    yield impl
    # Nothing left behind: no client subscription, no call task, on either side.
    await settle(lambda: subscriptions(nc) == client_subs and not server.calls)
    assert not own_tasks()
    await server.stop()


@pytest.fixture
def client(nc: NATS) -> StreamDemoServiceNatsClient:
    return StreamDemoServiceNatsClient(nc)


async def test_server_stream_async_for(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=5))] == [1, 2, 3, 4, 5]


async def test_server_stream_explicit_style(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    stream = await client.count_up(CountUpRequest(start=1, count=2))
    assert (await stream.recv()).number == 1
    assert (await stream.recv()).number == 2
    with pytest.raises(StopAsyncIteration):
        await stream.recv()
    assert stream.headers == {"X-Stream": "count_up"}
    await stream.close()


async def test_server_stream_context_manager(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    async with await client.count_up(CountUpRequest(start=7, count=1)) as stream:
        assert [r.number async for r in stream] == [7]


async def test_empty_server_stream(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    assert [r async for r in client.count_up(CountUpRequest(count=0))] == []


async def test_client_stream_with_iterables(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    result = await client.sum([SumRequest(value=10), SumRequest(value=20), SumRequest(value=30)])
    assert (result.total, result.count) == (60, 3)

    async def values() -> AsyncIterator[SumRequest]:
        for v in (1, 2, 3):
            yield SumRequest(value=v)

    assert (await client.sum(values())).total == 6
    assert (await client.sum([])).count == 0


async def test_client_stream_explicit_style(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    stream = await client.sum()
    for value in (10, 20, 30):
        await stream.send(SumRequest(value=value))
    assert (await stream.close_and_recv()).total == 60


async def test_bidi_with_iterable(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    texts = ["hello", "how are you", "goodbye"]
    replies = [r.text async for r in client.chat([ChatMessage(user="me", text=t) for t in texts])]
    assert replies == ["echo: " + t for t in texts]


async def test_bidi_explicit_style(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    async with await client.chat() as chat:
        await chat.send(ChatMessage(text="hello"))
        assert (await chat.recv()).text == "echo: hello"
        await chat.send(ChatMessage(text="bye"))
        assert (await chat.recv()).text == "echo: bye"
        await chat.close_send()
        with pytest.raises(StopAsyncIteration):
            await chat.recv()


async def test_server_stream_error_after_k_messages(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    received = []
    with pytest.raises(RpcError) as caught:
        async for response in client.count_up(CountUpRequest(start=-1, count=3)):
            received.append(response.number)
    assert received == [1, 2, 3]
    assert (caught.value.code, caught.value.message) == (ErrorCode.NOT_FOUND, "failed after 3")


async def test_client_stream_handler_error_raises_from_close_and_recv(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    stream = await client.sum()
    await stream.send(SumRequest(value=1))
    await stream.send(SumRequest(value=-1))
    await stream.send(SumRequest(value=2))  # the handler has already failed; still no error here
    with pytest.raises(RpcError) as caught:
        await stream.close_and_recv()
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT


async def test_bidi_error_mid_stream(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    async with await client.chat() as chat:
        await chat.send(ChatMessage(text="a"))
        assert (await chat.recv()).text == "echo: a"
        await chat.send(ChatMessage(text="fail"))
        with pytest.raises(RpcError) as caught:
            await chat.recv()
        assert caught.value.code == ErrorCode.PERMISSION_DENIED


async def test_caller_headers_reach_streaming_handlers(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    headers = {"X-Tenant": "acme"}
    assert [r async for r in client.count_up(CountUpRequest(count=1), headers=headers)]
    await client.sum([SumRequest(value=1)], headers=headers)
    assert [r async for r in client.chat([ChatMessage(text="x")], headers=headers)]
    assert demo.headers == [headers, headers, headers]


async def test_concurrent_streams_run_at_the_same_time(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    n = 20
    demo.barrier, demo.barrier_size = asyncio.Event(), n  # every handler waits until all n are inside

    async def one(i: int) -> list[int]:
        return [r.number async for r in client.count_up(CountUpRequest(start=i * 10, count=3))]

    results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 20)
    assert results == [[i * 10, i * 10 + 1, i * 10 + 2] for i in range(n)]


async def test_max_concurrent_streams_refuses_with_resource_exhausted(server_nc: NATS, nc: NATS) -> None:
    impl = Demo()
    impl.barrier, impl.barrier_size = asyncio.Event(), 10**6  # handlers wait until released
    server = await betterproto_nats.serve(server_nc, impl, max_concurrent_streams=2)
    client = StreamDemoServiceNatsClient(nc)
    try:
        held = [await client.count_up(CountUpRequest(count=1)) for _ in range(2)]
        await settle(lambda: impl.inside == 2)
        with pytest.raises(RpcError) as caught:
            await anext(aiter(client.count_up(CountUpRequest(count=1))))
        assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED
        with pytest.raises(RpcError) as caught:
            await client.sum([SumRequest(value=1)])
        assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED
        impl.barrier.set()
        for stream in held:
            assert [r.number async for r in stream] == [0]
    finally:
        await server.stop()


async def test_breaking_out_of_async_for_releases_the_subscription(demo: Demo, client: StreamDemoServiceNatsClient, nc: NATS) -> None:
    before = subscriptions(nc)
    async for response in client.count_up(CountUpRequest(start=1, count=1000)):
        assert subscriptions(nc) == before + 1  # one for all the connection's inboxes (R among them)
        break
    await settle(lambda: subscriptions(nc) == before)


async def test_close_releases_the_subscription(demo: Demo, client: StreamDemoServiceNatsClient, nc: NATS) -> None:
    before = subscriptions(nc)
    stream = await client.count_up(CountUpRequest(start=1, count=1000))
    await stream.recv()
    await stream.close()
    assert subscriptions(nc) == before


async def test_stream_timeout_from_options_bounds_the_call(nc: NATS, server_nc: NATS) -> None:
    class Slow(fx.InventoryNatsBase):
        async def slow_stream(self, request: fx.Delay) -> AsyncIterator[fx.EchoMessage]:
            for i in range(request.count):
                yield fx.EchoMessage(number=i)
                await asyncio.sleep(request.seconds)

    server = await betterproto_nats.serve(server_nc, Slow())
    try:
        got = []
        with pytest.raises(RpcError) as caught:
            async for r in fx.InventoryNatsClient(nc).slow_stream(fx.Delay(seconds=0.2, count=100)):
                got.append(r.number)
        assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED  # the service timeout is 0.5 s
        assert 1 <= len(got) < 100
        # A per-call timeout overrides it.
        quick = fx.InventoryNatsClient(nc).slow_stream(fx.Delay(seconds=0.01, count=3), timeout=5)
        assert [r.number async for r in quick] == [0, 1, 2]
    finally:
        await server.stop()


N = 100_000


async def test_100k_server_stream_complete_in_order_once(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    expected = 0
    async for response in client.count_up(CountUpRequest(start=0, count=N), timeout=120):
        assert response.number == expected
        expected += 1
    assert expected == N


async def test_100k_client_stream(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    result = await client.sum((SumRequest(value=i) for i in range(N)), timeout=120)
    assert (result.count, result.total) == (N, N * (N - 1) // 2)


async def test_100k_bidi(demo: Demo, client: StreamDemoServiceNatsClient) -> None:
    expected = 0
    async for reply in client.chat((ChatMessage(text=str(i)) for i in range(N)), timeout=120):
        assert reply.text == f"echo: {expected}"
        expected += 1
    assert expected == N


async def test_oversized_stream_message_ends_the_stream_clearly(nc: NATS, server_nc: NATS) -> None:
    class Big(StreamDemoServiceNatsBase):
        async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
            yield CountUpResponse(number=1)
            yield CountUpResponse(timestamp="x" * server_nc.max_payload)  # cannot fit

        async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
            async for message in requests:  # open until the client ends it
                yield message

    server = await betterproto_nats.serve(server_nc, Big())
    try:
        got = []
        with pytest.raises(RpcError) as caught:
            async for response in StreamDemoServiceNatsClient(nc).count_up(CountUpRequest()):
                got.append(response.number)
        assert got == [1]
        assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED and "max_payload" in caught.value.message
        assert server_nc.is_connected  # nothing oversized reached the NATS server
        chat = await StreamDemoServiceNatsClient(nc).chat()
        with pytest.raises(RpcError) as caught:  # the client checks before sending too
            await chat.send(ChatMessage(text="x" * nc.max_payload))
        assert caught.value.code == ErrorCode.RESOURCE_EXHAUSTED
        await chat.close()
        assert nc.is_connected
    finally:
        await server.stop()
