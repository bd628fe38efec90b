"""The same-process rows of `make bench` (the extra section): client and service in ONE process, one
prebuilt message object sent n times, ours and raw nats-py in the same run. This was the whole bench
until the separate-process rows (bench/run.py, bench/worker.py) replaced it; it stays so that the
history compares ("no row regresses in the same-process extra"). bench/run.py calls `main_rows()`;
`bench/run.py --same-process` runs only this section. `--quick` runs smaller sizes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.net.nats_fixes import flush_ordered  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.fixtures.persist.v1 import Profile, ProfilesNatsBase, ProfilesNatsClient, ProfileView  # noqa: E402
from gen.streaming.v1 import (  # noqa: E402
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    ExportSnapshotRequest,
    ImportSnapshotResponse,
    PingRequest,
    PingResponse,
    SnapshotChunk,
    StreamDemoServiceNatsBase,
    StreamDemoServiceNatsClient,
    SumRequest,
    SumResponse,
)

QUICK = "--quick" in sys.argv
SCALE = 10 if QUICK else 1
MIB = 1 << 20


@dataclass
class Result:
    name: str
    unit: str
    ours: float
    raw: float
    target: float | None = None  # minimum ratio ours/raw, where the issue sets one

    @property
    def ratio(self) -> float:
        return self.ours / self.raw if self.raw else 0.0


class Bench(StreamDemoServiceNatsBase):
    """The service under test: minimal work per call, so the runtime's cost shows. Like the stream
    handlers, `ping` answers with one prebuilt message unless `build_responses` (a betterproto2
    message built per call, shown in a row of its own)."""

    build_responses = False
    pong = PingResponse(payload="x")

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload) if self.build_responses else self.pong

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        response = CountUpResponse(number=1)
        for _ in range(request.count):
            yield response

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        count = 0
        async for _ in requests:
            count += 1
        return SumResponse(count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        async for message in requests:
            yield message

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        size, chunk = (int(x) for x in request.id.split(":"))
        piece = SnapshotChunk(data=os.urandom(chunk))
        for _ in range(size // chunk):
            yield piece

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        size = 0
        async for piece in requests.iter_bytes():
            size += len(piece)
        return ImportSnapshotResponse(size=size)


async def timed(work: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


# --- raw nats-py equivalents -----------------------------------------------------------------------


async def raw_stream(pub: Any, sub: Any, bodies: list[bytes] | bytes, count: int) -> float:
    """`count` messages with a seq header from `pub` to an inbox of `sub`, then an end marker."""
    inbox = sub.new_inbox()
    done = asyncio.Event()
    received = 0

    async def on_msg(msg: Any) -> None:
        nonlocal received
        if msg.headers and "Nats-Stream-End" in msg.headers:
            done.set()
        else:
            received += 1

    s = await sub.subscribe(inbox, cb=on_msg)
    await flush_ordered(sub)

    body = bodies if isinstance(bodies, bytes) else bodies[0]

    async def send() -> None:
        for i in range(count):
            body = bodies if isinstance(bodies, bytes) else bodies[i % len(bodies)]
            await pub.publish(inbox, body, headers={"Nats-Stream-Seq": str(i + 1)})
        await pub.publish(inbox, b"", headers={"Nats-Stream-End": "true"})
        try:  # without flow control the end marker itself can be lost (slow consumer)
            await asyncio.wait_for(done.wait(), 30)
        except TimeoutError:
            pass

    elapsed = await timed(send)
    await s.unsubscribe()
    if received != count:
        LOSSES.append(f"raw nats-py lost {count - received} of {count} messages ({len(body if isinstance(bodies, bytes) else bodies[0])} B each)")
    return elapsed


LOSSES: list[str] = []  # raw nats-py has no flow control: what it dropped, reported with the results


async def raw_unary(snc: Any, cnc: Any, n: int, in_flight: int) -> float:
    body = bytes(PingResponse(payload="x"))

    async def answer(msg: Any) -> None:
        await snc.publish(msg.reply, body)

    s = await snc.subscribe("raw.ping", queue="q", cb=answer)
    await flush_ordered(snc)
    request = bytes(PingRequest(payload="x"))

    async def calls() -> None:
        for _ in range(n // in_flight):
            await asyncio.gather(*(cnc.request("raw.ping", request, timeout=10) for _ in range(in_flight)))

    elapsed = await timed(calls)
    await s.unsubscribe()
    return elapsed


async def raw_echo(snc: Any, cnc: Any, n: int, pipelined: bool) -> float:
    """The client sends `n` messages that the other side echoes back: all at once (pipelined) or
    one round trip at a time (ping-pong)."""
    inbox, back = snc.new_inbox(), cnc.new_inbox()
    body = bytes(ChatMessage(text="x"))
    replies: asyncio.Queue[Any] = asyncio.Queue()

    async def echo(msg: Any) -> None:
        await snc.publish(back, msg.data, headers={"Nats-Stream-Seq": msg.headers["Nats-Stream-Seq"]})

    async def put(msg: Any) -> None:
        replies.put_nowait(msg)

    subs = [await snc.subscribe(inbox, cb=echo), await cnc.subscribe(back, cb=put)]
    await flush_ordered(snc)
    await flush_ordered(cnc)

    async def run() -> None:
        for i in range(n):
            await cnc.publish(inbox, body, headers={"Nats-Stream-Seq": str(i + 1)})
            if not pipelined:
                await replies.get()
        if pipelined:
            for _ in range(n):
                await replies.get()

    elapsed = await timed(run)
    for sub in subs:
        await sub.unsubscribe()
    return elapsed


# --- the benchmarks --------------------------------------------------------------------------------


async def run_all(url: str) -> list[Result]:
    snc = await nats.connect(url, pending_size=64 * MIB)
    cnc = await nats.connect(url, pending_size=64 * MIB)
    # Raw nats-py gets connections of its own: without flow control the NATS server may cut them off
    # as slow consumers, which must not disturb ours.
    raw_s = await nats.connect(url, pending_size=64 * MIB)
    raw_c = await nats.connect(url, pending_size=64 * MIB)
    service = await betterproto_nats.serve(snc, Bench())
    client = StreamDemoServiceNatsClient(cnc, timeout=600)
    results: list[Result] = []

    def report(result: Result) -> None:
        results.append(result)
        target = f"  (target ≥ {result.target})" if result.target else ""
        print(f"{result.name:44} ours {result.ours:12,.0f}  raw {result.raw:12,.0f} {result.unit:6} ratio {result.ratio:5.2f}{target}", flush=True)

    # Unary, as raw sends it: no deadline header (a client without a timeout, the default).
    plain = StreamDemoServiceNatsClient(cnc)
    for in_flight, n in ((1, 3000 // SCALE), (50, 20000 // SCALE)):
        ours = await timed(lambda: _unary(plain, n, in_flight))
        raw = await raw_unary(raw_s, raw_c, n, in_flight)
        report(Result(f"unary, {in_flight} in flight", "req/s", n / ours, n / raw, 0.8))
    # What a timeout costs (the Nats-Deadline header both ways through nats-py, the server's timer),
    # and what a handler pays for building its response as a betterproto2 message.
    for in_flight, n in ((1, 3000 // SCALE), (50, 20000 // SCALE)):
        without = await timed(lambda: _unary(plain, n, in_flight))
        with_deadline = await timed(lambda: _unary(client, n, in_flight))
        report(Result(f"unary with a deadline, {in_flight} in flight (vs without)", "req/s", n / with_deadline, n / without))
    Bench.build_responses = True
    built = await timed(lambda: _unary(plain, n, 50))
    Bench.build_responses = False
    report(Result("unary, handler builds its response, 50 in flight (vs prebuilt)", "req/s", n / built, n / without))

    # Small-message streams. One short stream of each shape first: the first stream on a connection
    # sets up what all its streams share (the inbox subscription, liveness per peer), as raw's
    # connections are warm too.
    await _drain(client.count_up(CountUpRequest(count=10)))
    await client.sum(SumRequest(value=1) for _ in range(10))
    await _drain(client.chat(ChatMessage(text="x") for _ in range(10)))
    n = 100_000 // SCALE
    small = bytes(CountUpResponse(number=1))
    one_stream = n / await timed(lambda: _drain(client.count_up(CountUpRequest(count=n))))
    # Targets: 2x raw with batched frames (the scale issue; the codec issue asked 0.6 / 0.4).
    report(Result("server stream, 100k small messages", "msg/s", one_stream, n / await raw_stream(raw_s, raw_c, small, n), 2.0))
    # One message object sent n times, as the server stream's handler does: the runtime's cost shows.
    one_sum, one_chat = SumRequest(value=1), ChatMessage(text="x")
    ours = n / await timed(lambda: client.sum(one_sum for _ in range(n)))
    report(Result("client stream, 100k small messages", "msg/s", ours, n / await raw_stream(raw_c, raw_s, bytes(SumRequest(value=1)), n), 2.0))
    ours = n / await timed(lambda: _drain(client.chat(one_chat for _ in range(n))))
    report(Result("bidi pipelined, 100k echoed", "msg/s", ours, n / await raw_echo(raw_s, raw_c, n, pipelined=True), 2.0))
    rounds = 3000 // SCALE
    ours = rounds / await timed(lambda: _ping_pong(client, rounds))
    report(Result("bidi ping-pong, sequential round trips", "rt/s", ours, rounds / await raw_echo(raw_s, raw_c, rounds, pipelined=False), 0.5))

    # 100 concurrent streams against one.
    per = n // 100
    total = await timed(lambda: asyncio.gather(*(_drain(client.count_up(CountUpRequest(count=per))) for _ in range(100))))
    report(Result("100 concurrent server streams (vs one stream)", "msg/s", n / total, one_stream, 0.8))

    # Chunked transfers.
    for chunk in (64 * 1024, 512 * 1024):
        size = (256 * MIB // SCALE) // chunk * chunk
        ours = size / await timed(lambda: _download(client, size, chunk))
        raw = size / await raw_stream(raw_s, raw_c, bytes(SnapshotChunk(data=os.urandom(chunk))), size // chunk)
        report(Result(f"chunked download 256 MiB, {chunk // 1024} KiB chunks", "MB/s", ours / 1e6, raw / 1e6, 0.7))
        data = os.urandom(size)
        ours = size / await timed(lambda: _upload(client, data, chunk))
        raw = size / await raw_stream(raw_c, raw_s, bytes(SnapshotChunk(data=os.urandom(chunk))), size // chunk)
        report(Result(f"chunked upload 256 MiB, {chunk // 1024} KiB chunks", "MB/s", ours / 1e6, raw / 1e6, 0.7))

    await service.stop()
    for conn in (cnc, snc, raw_c, raw_s):
        await conn.close()
    return results


async def _unary(client: StreamDemoServiceNatsClient, n: int, in_flight: int) -> None:
    request = PingRequest(payload="x")
    for _ in range(n // in_flight):
        await asyncio.gather(*(client.ping(request) for _ in range(in_flight)))


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


async def _ping_pong(client: StreamDemoServiceNatsClient, rounds: int) -> None:
    async with await client.chat() as chat:
        message = ChatMessage(text="x")
        for _ in range(rounds):
            await chat.send(message)
            await chat.recv()
        await chat.close_send()


async def _download(client: StreamDemoServiceNatsClient, size: int, chunk: int) -> None:
    stream = await client.export_snapshot(ExportSnapshotRequest(id=f"{size}:{chunk}"))
    got = 0
    async for piece in stream.iter_bytes():
        got += len(piece)
    assert got == size, (got, size)


async def _upload(client: StreamDemoServiceNatsClient, data: bytes, chunk: int) -> None:
    stream = await client.import_snapshot()
    await stream.send_reader([data], chunk_size=chunk)
    assert (await stream.close_and_recv()).size == len(data)


class Persisted(ProfilesNatsBase):
    """A service whose answers are kept in JetStream KV (`(natsmicro.kv_store)`)."""

    async def save(self, request: Profile) -> ProfileView:
        return ProfileView(id=request.id)

    save_checked = save


async def run_persistence() -> list[Result]:
    """Unary calls whose answers are stored in JetStream KV, against the same calls served with
    `persist=False`: best effort (answer, then write) and required (write, then answer). Median of
    three alternating runs: the writes share this machine's cores with the calls."""
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as store, NatsServer(extra_args=["-js", "-sd", store]) as server:
        snc, cnc = await nats.connect(server.url), await nats.connect(server.url)
        client = ProfilesNatsClient(cnc, timeout=60)
        for in_flight, n in ((1, 1000 // SCALE), (50, 5000 // SCALE)):
            for label, call in (("best effort", client.save), ("required", client.save_checked)):
                rates: dict[bool, list[float]] = {True: [], False: []}
                dropped = 0
                for run in range(3):
                    for persist in (True, False):
                        requests = [Profile(id=f"{label[0]}{in_flight}-{run}-{i}") for i in range(n)]  # new keys

                        async def calls() -> None:
                            for start in range(0, n, in_flight):
                                await asyncio.gather(*(call(r) for r in requests[start : start + in_flight]))

                        service = await betterproto_nats.serve(snc, Persisted(), persist=persist)
                        rates[persist].append(n / await timed(calls))
                        dropped += service.persistence.persister.dropped if service.persistence else 0
                        await service.stop()  # waits for the background writes
                stored, unstored = (sorted(rates[p])[1] for p in (True, False))
                name = f"unary + KV {label}, {in_flight} in flight (vs not stored)"
                results.append(Result(name + (f", {dropped} writes dropped" if dropped else ""), "req/s", stored, unstored))
                print(f"{results[-1].name:44} ours {stored:12,.0f}  unstored {unstored:12,.0f} req/s  ratio {results[-1].ratio:5.2f}", flush=True)
        await snc.close()
        await cnc.close()
    return results


async def main_rows() -> list[Result]:
    """Every same-process row (the earlier `make bench` table, without its RSS check, which ran in a
    separate process and is part of bench/run.py's main section)."""
    with NatsServer() as server:
        results = await run_all(server.url)
    return results + await run_persistence()
