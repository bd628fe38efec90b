"""A finished call leaves no reference cycles: its objects are freed when the last reference goes,
not at the garbage collector's next full pass (which, with thousands of streams open, comes only
after garbage of a quarter of the heap's size has piled up: memory per open stream)."""

from __future__ import annotations

import asyncio
import collections
import gc
from typing import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

from betterproto_nats import serve
from conftest import settle
from demo_service import Demo
from gen.streaming.v1 import ChatMessage, CountUpRequest, StreamDemoServiceNatsClient, SumRequest

pytestmark = pytest.mark.timeout(30)


async def sums(n: int) -> AsyncIterator[SumRequest]:
    for value in range(n):
        yield SumRequest(value=value)


async def chat(n: int) -> AsyncIterator[ChatMessage]:
    for i in range(n):
        yield ChatMessage(text=f"m{i}")


async def calls(client: StreamDemoServiceNatsClient, i: int) -> None:
    assert [m.number async for m in client.count_up(CountUpRequest(start=i, count=3))] == [i, i + 1, i + 2]
    assert (await client.sum(sums(3))).total == 3
    assert len([m async for m in client.chat(chat(2))]) == 2


# A connection's inbox subscription (and its delivery) is made again when its inboxes come back after
# the last was released: a few per burst of calls, not per call.
PER_CONNECTION = {"InboxMux", "DirectDelivery"}


def runtime_garbage() -> collections.Counter[str]:
    """Objects of the runtime's calls that only the garbage collector could free, by type."""
    gc.collect()
    found = collections.Counter(
        type(o).__qualname__
        for o in gc.garbage
        if type(o).__module__.startswith("betterproto_nats") and type(o).__qualname__ not in PER_CONNECTION
    )
    gc.garbage.clear()
    return found


async def test_finished_streams_leave_no_cycles(nc: NATS, server_nc: NATS) -> None:
    server = await serve(server_nc, Demo())
    client = StreamDemoServiceNatsClient(nc)
    try:
        await calls(client, 0)  # warm-up: per-connection objects are made once and stay
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await asyncio.gather(*(calls(client, i) for i in range(20)))
            await settle(lambda: not server.stream_calls)  # the service's side of the last calls ended
            assert runtime_garbage() == {}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    finally:
        await server.stop()
