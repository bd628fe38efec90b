"""One side of a `make bench` row, as users deploy: the service or the client, in a process of its own.

    python bench/worker.py --role service --impl ours --row unary --url nats://127.0.0.1:4222 [...]
    python bench/worker.py --role client  --impl ours --row unary --url nats://127.0.0.1:4222 [...]

`--impl` is `ours` (betterproto_nats and the generated code), `raw` (plain nats-py, pre-encoded bytes,
no codec and no flow control), `ref` (the Go project's real generated Python, imported from
`--ref-dir`/gen, default ../shared/reference-python, unary and server stream rows) or `model`
(bench/reference.py: a MODEL of that code, unary only, which proved wrong; kept for bench/breakdown.py).
`--client-impl` runs another implementation on the client side (the cross pairings). The producer
builds its distinct messages before anything is timed.

The service connects, builds what it will send, prints `ready` and serves until its stdin closes (the
parent ends it so; a dead parent ends it too). The client connects, builds what it will send, prints
`prepared`, waits for a line on stdin (the parent's go, once the service is ready), warms up, then
times the work and prints one JSON line: the items and bytes it moved, the seconds, and the CPU
seconds of each side (the service's through the control subject, `bench.ctl`, from the client's
`start` to its `stop`). `--profile FILE` runs cProfile over that same window on either side.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.net.nats_fixes import flush_ordered  # noqa: E402
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

MIB = 1 << 20
CTL = "bench.ctl"  # the client's start/stop of the timed window, answered by the service
IDLE = 2.0  # seconds without a message after which a raw receiver stops waiting (its end marker was lost)
GIVE_UP = 300.0  # no wait of this bench lasts longer
BATCH = 256  # the ceiling row packs up to this many bodies per NATS message, as our batched frames do
WARM = 20  # warm-up calls or stream messages before the timed part
IMPLS = ("ours", "raw", "ref", "model")
REF_DIR = ROOT.parent / "shared" / "reference-python"  # the Go project's generated Python (read-only)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=("service", "client", "both"), required=True, help="both: service and client in this one process")
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--client-impl", choices=IMPLS, default="", help="the client's implementation when it is not --impl's")
    p.add_argument("--ref-dir", default=str(REF_DIR), help="ref: the reference's folder (its generated code in gen/)")
    p.add_argument("--row", required=True, help="unary, server-stream, ceiling, client-stream, bidi, ping-pong, streams100, download, upload, persist, rss")
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=0, help="calls or messages (bytes for download/upload)")
    p.add_argument("--in-flight", type=int, default=1)
    p.add_argument("--chunk", type=int, default=64 * 1024)
    p.add_argument(
        "--variant", default="",
        help="unary: deadline | build; server-stream, client-stream: build; persist: best | required. `build`: "
        "handlers build their responses and callers their requests inside the timed part, as users' code does",
    )
    p.add_argument("--persist", type=int, default=1)
    p.add_argument("--tag", default="", help="persist: makes this run's keys new")
    p.add_argument("--pb2", default="", help="model: the folder with the generated _pb2 modules")
    p.add_argument("--profile", default="", help="write cProfile stats of the timed window here")
    p.add_argument("--same-object", action="store_true", help="the producer sends one prebuilt message n times (the earlier bench)")
    p.add_argument("--server-pid", type=int, default=0, help="also measure this nats-server's CPU over the timed part")
    p.add_argument("--window", type=int, default=0, help="experiment: the receive window (messages) our side grants by default")
    return p.parse_args(argv)


async def connect(url: str) -> NATS:
    # The pending size of the earlier bench: without flow control raw may queue a lot.
    return await nats.connect(url, pending_size=64 * MIB, max_reconnect_attempts=3)


async def stdin_line() -> str:
    """The next line on stdin ('' at its end), without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return (await reader.readline()).decode()


class Window:
    """CPU seconds (and optionally cProfile) of this process between `open()` and `close()`, and the
    NATS messages its connection sent and received meanwhile (how well streams batch)."""

    def __init__(self, profile_path: str, nc: NATS, server_pid: int = 0) -> None:
        # CPU time, not wall time: with three processes on two cores, wall time would charge whatever
        # function runs when the kernel preempts us (socket sends that wake the peer, mostly).
        self.profile = cProfile.Profile(time.process_time) if profile_path else None
        self.path = profile_path
        self.nc = nc
        self.server_pid = server_pid
        self.cpu = self.server_cpu = 0.0
        self.nats: dict[str, int] = {}
        self._started = self._server_started = 0.0
        self._stats: dict[str, int] = {}

    def open(self) -> None:
        self._stats = {k: self.nc.stats[k] for k in ("in_msgs", "out_msgs")}
        self._server_started = process_cpu(self.server_pid)
        self._started = time.process_time()
        if self.profile:
            self.profile.enable()

    def close(self) -> float:
        if self.profile:
            self.profile.disable()
        self.cpu = time.process_time() - self._started
        self.server_cpu = process_cpu(self.server_pid) - self._server_started
        self.nats = {k: self.nc.stats[k] - v for k, v in self._stats.items()}
        return self.cpu

    def dump(self) -> None:
        if self.profile:
            self.profile.dump_stats(self.path)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process so far (0 without a pid), from /proc."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(make: Callable[[int], Any], n: int, same: bool) -> list[Any]:
    """A producer's n messages: distinct ones, or (`--same-object`, as the earlier bench) one object n
    times: message 1, as message 0 would be all defaults, an empty body."""
    return [make(1)] * n if same else [make(i) for i in range(n)]


# --- services ---------------------------------------------------------------------------------------


def count_ups(n: int, same: bool = False) -> list[CountUpResponse]:
    return build(lambda i: CountUpResponse(number=i), n, same)


def chunk_pool(size: int, chunk: int) -> list[bytes]:
    """`size // chunk` distinct random chunks (the rss row cycles over 64 MiB of them)."""
    return [os.urandom(chunk) for _ in range(min(size, 64 * MIB) // chunk)]


class Ours(StreamDemoServiceNatsBase):
    """Our service under test: minimal work per call, so the runtime's cost shows. Streams send the
    distinct messages built before `ready`; `ping` answers with one prebuilt message (as the raw
    service answers with prebuilt bytes) unless `build`: then, as users' handlers do, `ping` builds
    its answer from the request and `count_up` each message it sends."""

    def __init__(self, numbers: list[CountUpResponse], chunks: list[SnapshotChunk], build: bool) -> None:
        self.numbers = numbers
        self.chunks = chunks
        self.build = build
        self.pong = PingResponse(payload="x")

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload) if self.build else self.pong

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        if self.build:
            for number in range(request.start, request.start + request.count):
                yield CountUpResponse(number=number)
            return
        for message in islice(self.numbers, request.start, request.start + request.count):
            yield message

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
        pool = self.chunks
        for i in range(size // chunk):
            yield pool[i % len(pool)]

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        size = 0
        async for piece in requests.iter_bytes():
            size += len(piece)
        return ImportSnapshotResponse(size=size)


class Persisted(ProfilesNatsBase):
    """A service whose answers are kept in JetStream KV (`(natsmicro.kv_store)`)."""

    async def save(self, request: Profile) -> ProfileView:
        return ProfileView(id=request.id)

    save_checked = save


async def serve_ours(nc: NATS, args: argparse.Namespace) -> tuple[Callable[[], Awaitable[None]], Callable[[], dict[str, Any]]]:
    if args.row == "persist":
        server = await betterproto_nats.serve(nc, Persisted(), persist=bool(args.persist))
        report = lambda: {"dropped": server.persistence.persister.dropped if server.persistence else 0}  # noqa: E731
        return server.stop, report
    built = args.variant == "build"
    numbers = count_ups(args.n, args.same_object) if args.row in ("server-stream", "streams100") and not built else []
    chunks = [SnapshotChunk(data=c) for c in chunk_pool(args.n, args.chunk)] if args.row in ("download", "rss") else []
    server = await betterproto_nats.serve(nc, Ours(numbers, chunks, build=args.variant == "build"))
    return server.stop, dict


class RawService:
    """Plain nats-py doing the service's half of each row with pre-encoded bytes: requests answered
    in the subscription callback; streams sent as one NATS message per stream message with a
    `Nats-Stream-Seq` header and an end marker (the ceiling row: packed batches); what it receives
    counted, and reported when the end marker (or a report request) comes."""

    def __init__(self, nc: NATS, args: argparse.Namespace) -> None:
        self.nc, self.args = nc, args
        self.received = self.bytes = 0
        self.last = 0.0
        n, chunk = args.n, args.chunk
        self.reply = bytes(PingResponse(payload="x"))
        self.bodies = [bytes(m) for m in count_ups(n, args.same_object)] if args.row in ("server-stream", "ceiling") else []
        self.batches = [self.pack(self.bodies[i : i + BATCH]) for i in range(0, len(self.bodies), BATCH)] if args.row == "ceiling" else []
        self.chunks = [bytes(SnapshotChunk(data=c)) for c in chunk_pool(n, chunk)] if args.row == "download" else []

    @staticmethod
    def pack(bodies: list[bytes]) -> bytes:
        """Bodies behind their protobuf varint lengths, as a batched frame carries them."""
        out = bytearray()
        for body in bodies:
            size = len(body)
            while size > 0x7F:
                out.append(size & 0x7F | 0x80)
                size >>= 7
            out.append(size)
            out += body
        return bytes(out)

    async def start(self) -> None:
        row, nc = self.args.row, self.nc
        if row == "unary":
            await nc.subscribe("raw.ping", queue="q", cb=self.on_ping)
        elif row in ("server-stream", "ceiling", "download"):
            await nc.subscribe("raw.stream", cb=self.on_stream_request)
        elif row in ("client-stream", "upload"):
            await nc.subscribe("raw.sink", cb=self.on_sink)
            await nc.subscribe("raw.sink.report", cb=self.on_report)
        elif row in ("bidi", "ping-pong"):
            await nc.subscribe("raw.chat", cb=self.on_chat)
        else:
            raise SystemExit(f"raw has no row {row!r}")

    async def on_ping(self, msg: Msg) -> None:
        await self.nc.publish(msg.reply, self.reply)

    async def on_stream_request(self, msg: Msg) -> None:
        start, count = (int(x) for x in msg.data.split(b":"))
        nc, inbox = self.nc, msg.reply
        if self.args.row == "ceiling":
            seq = start + 1
            for i in range(start // BATCH, (start + count + BATCH - 1) // BATCH):
                batch = min(BATCH, start + count - i * BATCH)
                await nc.publish(inbox, self.batches[i], headers={"Nats-Stream-Seq": str(seq), "Nats-Stream-Batch": str(batch)})
                seq += batch
        else:
            bodies = self.chunks if self.args.row == "download" else self.bodies
            for i in range(start, start + count):
                await nc.publish(inbox, bodies[i % len(bodies)], headers={"Nats-Stream-Seq": str(i + 1)})
        await nc.publish(inbox, b"", headers={"Nats-Stream-End": "true"})

    async def on_sink(self, msg: Msg) -> None:
        if msg.headers and "Nats-Stream-End" in msg.headers:
            await self.on_report(msg)
            return
        self.received += 1
        self.bytes += len(msg.data)
        self.last = time.monotonic()

    async def on_report(self, msg: Msg) -> None:
        await self.nc.publish(msg.reply, json.dumps({"received": self.received, "bytes": self.bytes, "last": self.last}).encode())

    async def on_chat(self, msg: Msg) -> None:
        assert msg.headers is not None
        await self.nc.publish("raw.chat.back", msg.data, headers={"Nats-Stream-Seq": msg.headers["Nats-Stream-Seq"]})


async def serve_model(nc: NATS, args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    """The MODEL of the reference's unary service (bench/reference.py), not the reference itself."""
    import reference

    pb = reference.load_pb2(Path(args.pb2))
    pong = pb.PingResponse(payload="x")

    async def ping(request: Any, info: reference.ServerInfo) -> Any:
        return pong

    service = await reference.register(nc, pb, ping)
    return service.stop


def load_ref(ref_dir: str) -> tuple[Any, Any]:
    """The reference's generated modules (`stream_demo_pb2`, `stream_demo_nats_pb2`), imported from
    its own folder as its README says: nothing of it is copied here."""
    sys.path.insert(0, str(Path(ref_dir) / "gen"))
    from streaming.v1 import stream_demo_nats_pb2, stream_demo_pb2  # type: ignore[import-not-found]

    return stream_demo_pb2, stream_demo_nats_pb2


class RefDemo:
    """The handler object the reference's `register_stream_demo_service` calls, doing what `Ours`
    does (a prebuilt answer; the distinct CountUp messages built before `ready`), so the two
    runtimes' costs compare, not the handlers' (its server.py builds each answer)."""

    def __init__(self, pb: Any, n: int, build: bool = False) -> None:
        self.pb = pb
        self.build = build  # as `Ours`: answers built from the request, stream messages one by one
        self.pong = pb.PingResponse(payload="x")
        self.numbers = [] if build else [pb.CountUpResponse(number=i) for i in range(n)]

    async def ping(self, request: Any, info: Any) -> Any:
        return self.pb.PingResponse(payload=request.payload) if self.build else self.pong

    async def count_up(self, request: Any, stream: Any, info: Any) -> None:
        if self.build:
            for number in range(request.start, request.start + request.count):
                await stream.send_msg(self.pb.CountUpResponse(number=number))
            return
        for message in islice(self.numbers, request.start, request.start + request.count):
            await stream.send_msg(message)


async def serve_ref(nc: NATS, args: argparse.Namespace) -> Callable[[], Awaitable[None]]:
    """The reference's generated service (all of the demo's endpoints, as its server.py registers them)."""
    if args.row not in ("unary", "server-stream"):
        raise SystemExit("the reference runs the unary and server-stream rows")
    pb, generated = load_ref(args.ref_dir)
    service = await generated.register_stream_demo_service(nc, RefDemo(pb, args.n if args.row == "server-stream" else 0, build=args.variant == "build"))
    stop: Callable[[], Awaitable[None]] = service.stop
    return stop


class ServiceSide:
    """The service half of a row on its own connection, with the control subject answered."""

    def __init__(self, nc: NATS, window: Window, stop: Callable[[], Awaitable[None]] | None) -> None:
        self.nc, self.window, self.stop = nc, window, stop

    @classmethod
    async def start(cls, args: argparse.Namespace, profile: str) -> ServiceSide:
        nc = await connect(args.url)
        window = Window(profile, nc)
        stop: Callable[[], Awaitable[None]] | None = None
        report: Callable[[], dict[str, Any]] = dict
        if args.impl == "ours":
            stop, report = await serve_ours(nc, args)
        elif args.impl == "raw":
            await RawService(nc, args).start()
        elif args.impl == "ref":
            stop = await serve_ref(nc, args)
        else:
            stop = await serve_model(nc, args)

        async def control(msg: Msg) -> None:
            if msg.data == b"start":
                window.open()
                await msg.respond(b"{}")
            else:
                await msg.respond(json.dumps({"cpu": window.close(), "nats": window.nats, **report()}).encode())

        await nc.subscribe(CTL, cb=control)
        await flush_ordered(nc)
        return cls(nc, window, stop)

    async def close(self) -> None:
        self.window.dump()
        if self.stop is not None:
            await asyncio.wait_for(self.stop(), 30)
        await self.nc.close()


async def service_main(args: argparse.Namespace) -> None:
    service = await ServiceSide.start(args, args.profile)
    print("ready", flush=True)
    await stdin_line()  # until the parent closes our stdin
    await service.close()


async def both_main(args: argparse.Namespace) -> None:
    """Service and client in this one process, on two connections (the earlier bench's set-up): the
    client's CPU figure is then the whole process's, and only the client side is profiled."""
    service = await ServiceSide.start(args, "")
    try:
        await client_main(args)
    finally:
        await service.close()


# --- clients ----------------------------------------------------------------------------------------

Work = Callable[[], Awaitable[dict[str, Any]]]


async def _waves(call: Callable[[Any], Awaitable[Any]], requests: list[Any], in_flight: int) -> None:
    """`in_flight` calls at a time, all of them finished before the next group (as the earlier bench)."""
    for start in range(0, len(requests), in_flight):
        await asyncio.gather(*(call(r) for r in requests[start : start + in_flight]))


async def _waves_built(call: Callable[[Any], Awaitable[Any]], make: Callable[[int], Any], n: int, in_flight: int) -> None:
    """`_waves` with each request built just before its call (inside the timed part), as callers do."""
    for start in range(0, n, in_flight):
        await asyncio.gather(*(call(make(i)) for i in range(start, min(n, start + in_flight))))


async def _count(stream: Any) -> int:
    count = 0
    async for _ in stream:
        count += 1
    return count


async def _count_admitted(open_stream: Callable[[], Any]) -> int:
    """`_count` of a stream opened again after the hinted pause while the service refuses it, as a
    careful caller does (a refusal comes before any message): with many streams pumping at once the
    service's loop turns grow long, and admission control refuses new ones (docs/PERFORMANCE.md)."""
    for _ in range(100):
        try:
            return await _count(open_stream())
        except betterproto_nats.Overloaded as refused:
            await asyncio.sleep(refused.retry_after)
    raise RuntimeError("refused 100 times")


async def ours_client(nc: NATS, args: argparse.Namespace) -> tuple[Work, Callable[[], Awaitable[None]]]:
    """The timed work for our client, and its warm-up; messages built here, before either runs."""
    n, row = args.n, args.row
    client = StreamDemoServiceNatsClient(nc, timeout=600)
    plain = StreamDemoServiceNatsClient(nc)  # no timeout, so no deadline header: the default, as raw calls
    if row == "unary":
        requests = build(lambda i: PingRequest(payload=f"p{i}"), n, args.same_object)
        caller = client if args.variant == "deadline" else plain

        async def warm() -> None:
            await _waves(caller.ping, requests[:WARM], args.in_flight)

        async def work() -> dict[str, Any]:
            if args.variant == "build":
                await _waves_built(caller.ping, lambda i: PingRequest(payload=f"p{i}"), n, args.in_flight)
            else:
                await _waves(caller.ping, requests, args.in_flight)
            return {"items": n}

        return work, warm
    if row == "persist":
        profiles = ProfilesNatsClient(nc, timeout=60)
        call = profiles.save if args.variant == "best" else profiles.save_checked
        requests_p = [Profile(id=f"{args.tag}-{i}") for i in range(n + WARM)]

        async def warm() -> None:
            await _waves(call, requests_p[n:], args.in_flight)

        async def work() -> dict[str, Any]:
            await _waves(call, requests_p[:n], args.in_flight)
            return {"items": n}

        return work, warm

    async def warm_streams() -> None:
        # The first stream on a connection sets up what all its streams share (the inbox
        # subscription, liveness per peer), as raw's connection is warm too.
        await _count(client.count_up(CountUpRequest(count=min(WARM, n))))
        if args.impl == "ref":  # the reference's service here serves Ping and CountUp only (RefDemo)
            return
        await client.sum(SumRequest(value=1) for _ in range(WARM))
        await _count(client.chat(ChatMessage(text="x") for _ in range(WARM)))

    if row in ("server-stream", "streams100"):
        streams = 100 if row == "streams100" else 1
        per = n // streams

        async def work() -> dict[str, Any]:
            def opening(k: int) -> Callable[[], Any]:
                return lambda: client.count_up(CountUpRequest(start=k * per, count=per))

            got = await asyncio.gather(*(_count_admitted(opening(k)) for k in range(streams)))
            return {"items": sum(got)}

        return work, warm_streams
    if row == "client-stream":
        sums = [] if args.variant == "build" else build(lambda i: SumRequest(value=i), n, args.same_object)

        async def work() -> dict[str, Any]:
            if args.variant == "build":  # each request built as the stream takes it
                return {"items": (await client.sum(SumRequest(value=i) for i in range(n))).count}
            return {"items": (await client.sum(sums)).count}

        return work, warm_streams
    if row == "bidi":
        chats = build(lambda i: ChatMessage(text=f"m{i}"), n, args.same_object)

        async def work() -> dict[str, Any]:
            return {"items": await _count(client.chat(chats))}

        return work, warm_streams
    if row == "ping-pong":
        chats = build(lambda i: ChatMessage(text=f"m{i}"), n, args.same_object)

        async def work() -> dict[str, Any]:
            async with await client.chat() as chat:
                for message in chats:
                    await chat.send(message)
                    await chat.recv()
                await chat.close_send()
            return {"items": n}

        return work, warm_streams
    if row == "download":
        size = n // args.chunk * args.chunk

        async def work() -> dict[str, Any]:
            stream = await client.export_snapshot(ExportSnapshotRequest(id=f"{size}:{args.chunk}"))
            got = 0
            async for piece in stream.iter_bytes():
                got += len(piece)
            return {"items": size // args.chunk, "bytes": got}

        return work, warm_streams
    if row == "upload":
        size = n // args.chunk * args.chunk
        data = os.urandom(size)

        async def work() -> dict[str, Any]:
            stream = await client.import_snapshot()
            await stream.send_reader([data], chunk_size=args.chunk)
            got = (await stream.close_and_recv()).size
            return {"items": size // args.chunk, "bytes": got}

        return work, warm_streams
    raise SystemExit(f"ours has no client row {row!r}")


async def raw_receive(nc: NATS, request: bytes, batched: bool) -> dict[str, Any]:
    """Ask the raw service for a stream on a fresh inbox and count what arrives until its end marker,
    or until nothing came for IDLE seconds (raw has no flow control: the marker itself may be lost).
    The time is until the end marker, or until the last message that did arrive."""
    inbox = nc.new_inbox()
    done = asyncio.Event()
    got = {"items": 0, "bytes": 0}
    last = [0.0]

    async def on_msg(msg: Msg) -> None:
        headers = msg.headers
        if headers and "Nats-Stream-End" in headers:
            done.set()
            return
        got["items"] += int(headers["Nats-Stream-Batch"]) if batched and headers else 1
        if batched:
            split(msg.data)
        got["bytes"] += len(msg.data)
        last[0] = time.monotonic()

    sub = await nc.subscribe(inbox, cb=on_msg)
    await flush_ordered(nc)
    started = time.monotonic()
    await nc.publish("raw.stream", request, reply=inbox)
    result = await _until_done(done, lambda: got["items"])
    elapsed = time.monotonic() - started
    await sub.unsubscribe()
    if not result:
        return {**got, "elapsed": last[0] - started, "end_lost": True}
    return {**got, "elapsed": elapsed}


def split(data: bytes) -> list[bytes]:
    """The bodies of a packed batch (varint length before each)."""
    bodies, pos, end = [], 0, len(data)
    while pos < end:
        size = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        bodies.append(data[pos : pos + size])
        pos += size
    return bodies


async def _until_done(done: asyncio.Event, progress: Callable[[], int]) -> bool:
    """Wait for `done`; False once nothing progressed for IDLE seconds (bounded by GIVE_UP)."""
    give_up = time.monotonic() + GIVE_UP
    seen = -1
    while time.monotonic() < give_up:
        try:
            await asyncio.wait_for(done.wait(), IDLE)
            return True
        except asyncio.TimeoutError:
            if progress() == seen:
                return False
            seen = progress()
    return False


async def raw_send(nc: NATS, bodies: list[bytes], count: int) -> dict[str, Any]:
    """Publish `count` bodies to the raw sink with seq headers, then the end marker; the sink answers
    with what it received. When the marker is lost (raw has no flow control), the sink's report says
    what arrived and when the last did; the time is then until that arrival."""
    inbox = nc.new_inbox()
    answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_answer(msg: Msg) -> None:
        if not answer.done():
            answer.set_result(msg)

    sub = await nc.subscribe(inbox, cb=on_answer)
    await flush_ordered(nc)
    started = time.monotonic()
    for i in range(count):
        await nc.publish("raw.sink", bodies[i % len(bodies)], headers={"Nats-Stream-Seq": str(i + 1)})
    await nc.publish("raw.sink", b"", reply=inbox, headers={"Nats-Stream-End": "true"})
    give_up, seen = time.monotonic() + GIVE_UP, -1
    try:
        while time.monotonic() < give_up:
            try:
                got = json.loads((await asyncio.wait_for(asyncio.shield(answer), IDLE)).data)
                return {"items": got["received"], "bytes": got["bytes"], "elapsed": time.monotonic() - started}
            except asyncio.TimeoutError:
                got = json.loads((await nc.request("raw.sink.report", b"", timeout=30)).data)
                if got["received"] == seen:  # nothing arrived for IDLE seconds: the marker was lost
                    return {"items": got["received"], "bytes": got["bytes"], "elapsed": got["last"] - started, "end_lost": True}
                seen = got["received"]
        raise TimeoutError("the raw sink neither ended nor progressed")
    finally:
        await sub.unsubscribe()


async def raw_client(nc: NATS, args: argparse.Namespace) -> tuple[Work, Callable[[], Awaitable[None]]]:
    """Raw nats-py's timed work and warm-up: the same messages as ours, as bytes encoded beforehand."""
    n, row = args.n, args.row

    async def no_warm() -> None:
        pass

    if row == "unary":
        bodies = [bytes(m) for m in build(lambda i: PingRequest(payload=f"p{i}"), n, args.same_object)]
        call = lambda body: nc.request("raw.ping", body, timeout=10)  # noqa: E731

        async def warm() -> None:
            await _waves(call, bodies[:WARM], args.in_flight)

        async def work() -> dict[str, Any]:
            await _waves(call, bodies, args.in_flight)
            return {"items": n}

        return work, warm
    if row in ("server-stream", "ceiling", "download"):
        count = n // args.chunk if row == "download" else n

        async def work() -> dict[str, Any]:
            return await raw_receive(nc, f"0:{count}".encode(), batched=row == "ceiling")

        async def warm() -> None:
            await raw_receive(nc, f"0:{min(WARM, count)}".encode(), batched=row == "ceiling")

        return work, warm
    if row in ("client-stream", "upload"):
        if row == "upload":
            count = n // args.chunk
            bodies = [bytes(SnapshotChunk(data=c)) for c in chunk_pool(n, args.chunk)]
        else:
            count = n
            bodies = [bytes(m) for m in build(lambda i: SumRequest(value=i), n, args.same_object)]

        async def work() -> dict[str, Any]:
            return await raw_send(nc, bodies, count)

        return work, no_warm
    if row in ("bidi", "ping-pong"):
        bodies = [bytes(m) for m in build(lambda i: ChatMessage(text=f"m{i}"), n, args.same_object)]
        replies: asyncio.Queue[Msg] = asyncio.Queue()

        async def put(msg: Msg) -> None:
            replies.put_nowait(msg)

        await nc.subscribe("raw.chat.back", cb=put)
        await flush_ordered(nc)
        pipelined = row == "bidi"

        async def work() -> dict[str, Any]:
            for i in range(n):
                await nc.publish("raw.chat", bodies[i], headers={"Nats-Stream-Seq": str(i + 1)})
                if not pipelined:
                    await replies.get()
            if pipelined:
                for _ in range(n):
                    await replies.get()
            return {"items": n}

        async def warm() -> None:
            for i in range(WARM):
                await nc.publish("raw.chat", bodies[i % n], headers={"Nats-Stream-Seq": str(i + 1)})
                await asyncio.wait_for(replies.get(), 30)

        return work, warm
    raise SystemExit(f"raw has no client row {row!r}")


async def ref_client(nc: NATS, args: argparse.Namespace) -> tuple[Work, Callable[[], Awaitable[None]]]:
    """The reference's generated client (google protobuf requests built beforehand): unary calls as
    its client.py makes them (`ping(request, timeout=...)`, `(response, headers)` back), and one
    CountUp read with its receiver's `recv`. Its streams have no flow control and its receiver ends
    quietly when nothing came for the timeout; a stream that ended so is reported as a loss."""
    pb, generated = load_ref(args.ref_dir)
    client = generated.StreamDemoServiceClient(nc)
    if args.row == "server-stream":

        async def read(count: int) -> dict[str, Any]:
            started = time.monotonic()
            stream = await client.count_up(pb.CountUpRequest(start=0, count=count))
            got = 0
            try:
                while True:
                    await stream.recv(timeout=IDLE)
                    got += 1
            except StopAsyncIteration:
                pass
            elapsed = time.monotonic() - started
            ended = stream._done  # True only when its end marker came (the receiver's own flag)
            await stream.close()
            return {"items": got, "elapsed": elapsed if ended else elapsed - IDLE, "end_lost": not ended}

        async def warm_stream() -> None:
            await read(WARM)

        async def work_stream() -> dict[str, Any]:
            return await read(args.n)

        return work_stream, warm_stream
    if args.row != "unary":
        raise SystemExit("the reference runs the unary and server-stream rows")
    requests = build(lambda i: pb.PingRequest(payload=f"p{i}"), args.n, args.same_object)
    call = lambda request: client.ping(request, timeout=10)  # noqa: E731

    async def warm() -> None:
        await _waves(call, requests[:WARM], args.in_flight)

    async def work() -> dict[str, Any]:
        if args.variant == "build":
            await _waves_built(call, lambda i: pb.PingRequest(payload=f"p{i}"), args.n, args.in_flight)
        else:
            await _waves(call, requests, args.in_flight)
        return {"items": args.n}

    return work, warm


async def model_client(nc: NATS, args: argparse.Namespace) -> tuple[Work, Callable[[], Awaitable[None]]]:
    """The MODEL of the reference's client (bench/reference.py): google protobuf requests built
    beforehand, `(response, headers)` back."""
    import reference

    if args.row != "unary":
        raise SystemExit("the reference model has only the unary row")
    pb = reference.load_pb2(Path(args.pb2))
    client = reference.Client(nc, pb)
    requests = build(lambda i: pb.PingRequest(payload=f"p{i}"), args.n, args.same_object)

    async def warm() -> None:
        await _waves(client.ping, requests[:WARM], args.in_flight)

    async def work() -> dict[str, Any]:
        await _waves(client.ping, requests, args.in_flight)
        return {"items": args.n}

    return work, warm


async def client_main(args: argparse.Namespace) -> None:
    nc = await connect(args.url)
    make = {"ours": ours_client, "raw": raw_client, "ref": ref_client, "model": model_client}[args.client_impl or args.impl]
    work, warm = await make(nc, args)
    print("prepared", flush=True)
    if not (await stdin_line()).strip():
        raise SystemExit("no go from the parent")
    await asyncio.wait_for(warm(), GIVE_UP)
    await nc.request(CTL, b"start", timeout=30)
    window = Window(args.profile, nc, args.server_pid)
    window.open()
    started = time.monotonic()
    result = await asyncio.wait_for(work(), GIVE_UP)  # bounds every loop of the timed part
    elapsed = time.monotonic() - started
    window.close()
    service = json.loads((await nc.request(CTL, b"stop", timeout=30)).data)
    window.dump()
    result.setdefault("elapsed", elapsed)
    result.setdefault("bytes", 0)
    print(json.dumps({
        **result, "client_cpu": window.cpu, "service_cpu": service.pop("cpu"), "server_cpu": window.server_cpu,
        "client_nats": window.nats, "service": service, "same_process": args.role == "both",
    }), flush=True)
    await nc.close()


if __name__ == "__main__":
    options = arguments()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if options.window:  # an experiment (bench/modes.py): the runtime's default window, read per call
        import betterproto_nats.core.negotiation

        betterproto_nats.core.negotiation.DEFAULT_WINDOW_MESSAGES = options.window
    main = {"service": service_main, "client": client_main, "both": both_main}[options.role]
    asyncio.run(main(options))
