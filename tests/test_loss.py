"""Messages lost in transit (v2): a sender's heartbeats say how many frames it handed to NATS before
them, on the subject its data took, so the receiver knows at once that frames are missing and the call
ends with DATA_LOSS on both sides instead of hanging, even without a deadline. Loss is injected by a Transport that drops chosen messages on a real NATS
connection (what a gateway without interest, or a cut route, does)."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from conftest import settle
from rawpeer import Collector
from test_hostile_peers import next_frame

import betterproto_nats
from betterproto_nats import CallInfo, CallOutcome, ErrorCode, Interceptor, RpcError
from betterproto_nats.net.transport import NatsTransport
from demo_service import Demo
from gen.streaming.v1 import ChatMessage, CountUpRequest, CountUpResponse, StreamDemoServiceNatsClient, SumRequest

SEQ, BATCH, END, SENT = "Nats-Stream-Seq", "Nats-Stream-Batch", "Nats-Stream-End", "Nats-Stream-Sent"
HEARTBEAT = 0.2  # seconds: loss shows within a few of them
BOUND = 10 * HEARTBEAT  # what "promptly" means here


class Lossy(NatsTransport):
    """A real connection that drops the data frame holding sequence number `seq` (alone or in a
    batch), or the end marker, or every message with header `header` (a cancel, say)."""

    def __init__(self, nc: NATS, seq: int | None = None, end: bool = False, header: str | None = None) -> None:
        super().__init__(nc)
        self.seq, self.end, self.header = seq, end, header
        self.dropped = 0

    def _holds_seq(self, headers: dict[str, str]) -> bool:
        if self.seq is None or SEQ not in headers:
            return False
        first = int(headers[SEQ])
        return first <= self.seq < first + int(headers.get(BATCH, "1"))

    def _drops(self, headers: dict[str, str] | None) -> bool:
        headers = headers or {}
        drop = self._holds_seq(headers) or (self.end and END in headers) or (self.header is not None and self.header in headers)
        self.dropped += drop
        return drop

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None) -> None:
        if not self._drops(headers):
            await super().publish(subject, payload, reply, headers)

    def publish_nowait(self, subject: str, payload: bytes, headers: dict[str, str], reply: str = "") -> bool:
        return True if self._drops(headers) else super().publish_nowait(subject, payload, headers, reply)


class Outcomes(Interceptor):
    def __init__(self) -> None:
        self.codes: asyncio.Queue[str | None] = asyncio.Queue()

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        self.codes.put_nowait(outcome.code)


class Waits(Demo):
    """A server stream that sends `count` messages, then waits (for the client's next move)."""

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        for number in range(request.count):
            yield CountUpResponse(number=number)
        await asyncio.Event().wait()


@pytest.fixture
async def outcomes(server_nc: NATS) -> AsyncIterator[Outcomes]:
    seen = Outcomes()
    server = await betterproto_nats.serve(server_nc, Waits(), interceptors=[seen])
    yield seen
    await server.stop()


async def test_client_stream_end_marker_loss_fails_both_sides(nc: NATS, outcomes: Outcomes) -> None:
    """The client's end marker never arrives: the server waits for more, the client for the answer,
    no deadline. The server's heartbeats show it: DATA_LOSS on both sides."""
    lossy = Lossy(nc, end=True)
    client = StreamDemoServiceNatsClient(lossy, heartbeat=HEARTBEAT)
    started = time.monotonic()
    with pytest.raises(RpcError) as failed:
        await asyncio.wait_for(client.sum([SumRequest(value=v) for v in (1, 2, 3)]), BOUND)
    assert lossy.dropped == 1
    assert failed.value.code == ErrorCode.DATA_LOSS and "lost in transit" in failed.value.message, failed.value
    assert await asyncio.wait_for(outcomes.codes.get(), BOUND) == ErrorCode.DATA_LOSS
    assert time.monotonic() - started < BOUND


async def test_client_stream_data_loss_is_known_before_the_end(nc: NATS, outcomes: Outcomes) -> None:
    """The client's latest message never arrives while it holds the stream open: the client's next
    heartbeat tells the server, which ends the call with DATA_LOSS; the client's next step fails so."""
    client = StreamDemoServiceNatsClient(Lossy(nc, seq=3), heartbeat=HEARTBEAT)
    stream = await client.sum()
    for value in (1, 2, 3):
        await stream.send(SumRequest(value=value))
    assert await asyncio.wait_for(outcomes.codes.get(), BOUND) == ErrorCode.DATA_LOSS
    await settle(lambda: stream.call.answer is not None, timeout=BOUND)  # the server's answer arrived
    with pytest.raises(RpcError) as failed:
        await stream.send(SumRequest(value=4))
    assert failed.value.code == ErrorCode.DATA_LOSS and "lost in transit" in failed.value.message, failed.value
    with pytest.raises(RpcError):
        await stream.close_and_recv()


async def test_bidi_loss_fails_the_waiting_client(nc: NATS, outcomes: Outcomes) -> None:
    """Message 2 of a ping-pong vanishes; the client waits for its echo forever, but not here."""
    lossy = Lossy(nc, seq=2)
    client = StreamDemoServiceNatsClient(lossy, heartbeat=HEARTBEAT)
    async with await client.chat() as chat:
        await chat.send(ChatMessage(text="one"))
        assert (await chat.recv()).text == "echo: one"
        await chat.send(ChatMessage(text="two"))
        with pytest.raises(RpcError) as failed:
            await asyncio.wait_for(chat.recv(), BOUND)
    assert failed.value.code == ErrorCode.DATA_LOSS, failed.value
    assert await asyncio.wait_for(outcomes.codes.get(), BOUND) == ErrorCode.DATA_LOSS


async def test_server_stream_loss_fails_both_sides(nc: NATS, server_nc: NATS) -> None:
    """The server's third message never arrives and it sends nothing more: the client's
    heartbeats tell the server, which ends the call with DATA_LOSS and says so to the client."""
    seen = Outcomes()
    server = await betterproto_nats.serve(Lossy(server_nc, seq=3), Waits(), interceptors=[seen])
    try:
        client = StreamDemoServiceNatsClient(nc, heartbeat=HEARTBEAT)
        received = []
        with pytest.raises(RpcError) as failed:
            async for response in client.count_up(CountUpRequest(count=3)):
                received.append(response.number)
        assert received in ([0], [0, 1])  # 2 and 3 may share the dropped frame
        assert failed.value.code == ErrorCode.DATA_LOSS, failed.value
        assert await asyncio.wait_for(seen.codes.get(), BOUND) == ErrorCode.DATA_LOSS
    finally:
        await server.stop()


async def test_heartbeats_say_how_much_was_sent(nc: NATS, outcomes: Outcomes) -> None:
    """On the wire: a server stream that sent two messages and waits says so on its heartbeats, on R."""
    async with Collector(nc) as r:
        headers = {"Reply-To": r.subject, "Nats-Stream-Version": "2", "Nats-Stream-Heartbeat": "100"}
        await nc.publish("api.v1.stream.count_up", bytes(CountUpRequest(count=2)), reply=r.subject, headers=headers)
        while True:
            msg = await r.next(2)
            if msg.headers and "Nats-Stream-Heartbeat" in msg.headers and SENT in msg.headers:
                break
        assert msg.headers[SENT] == "2" and not msg.data


async def test_a_count_beyond_what_arrived_ends_the_call(nc: NATS, outcomes: Outcomes) -> None:
    """A raw v2 client whose heartbeat claims more than it sent: the server takes it at its word."""
    async with Collector(nc) as r:
        headers = {"Reply-To": r.subject, "Nats-Stream-Version": "2", "Nats-Stream-Heartbeat": "5000"}
        ack = await nc.request("api.v1.stream.sum", b"", timeout=2, headers=headers)
        s_subject = ack.headers["Nats-Stream-Inbox"]  # type: ignore[index]
        await nc.publish(s_subject, bytes(SumRequest(value=1)), headers={SEQ: "1"})
        await nc.publish(s_subject, b"", reply=r.subject, headers={"Nats-Stream-Heartbeat": "5000", SENT: "2"})
        answer = await next_frame(r, 2)
    assert (answer.headers or {}).get("Nats-Service-Error-Code") == ErrorCode.DATA_LOSS, answer.headers
    assert await asyncio.wait_for(outcomes.codes.get(), BOUND) == ErrorCode.DATA_LOSS
