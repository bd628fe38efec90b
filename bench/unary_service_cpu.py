"""The service's own cost per unary call, in one process, without a client: requests handed to the
connection's read path as nats-py's parser hands them (`nc._process_msg`, 50 per loop turn, as one
socket read brings them), answers published for real (to a subject nobody reads). What it measures
is what `bench/breakdown.py unary50` calls the service's CPU per call, less the socket reads: our
runtime, the codec, nats-py's writes and asyncio. Under valgrind it counts instructions, which other
load on the machine does not change; two runs of different sizes give a per-call difference that
still moves about ±5% (batches and writes follow the clock), so compare medians of a few.
`--impl ref`: the same for the Go project's real generated Python (../shared/reference-python, its
`register_stream_demo_service`, answering in nats-py's callback); `--build`: the handler builds its
answer from the request (as users' handlers do) instead of returning a prebuilt one; `--deadline`:
each request carries the `Nats-Deadline` header our client's timeout sends (the reference's sends none).

    .venv/bin/python bench/unary_service_cpu.py                 # µs of CPU per call (best of 5)
    .venv/bin/python bench/unary_service_cpu.py --impl ref --build
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg .venv/bin/python bench/unary_service_cpu.py --calls 5000 --rounds 1
                                                                # instructions, whatever else the machine does
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import PingRequest, PingResponse, StreamDemoServiceNatsBase  # noqa: E402

REF_DIR = ROOT.parent / "shared" / "reference-python"  # the Go project's generated Python (read-only)
IN_A_READ = 50  # requests per loop turn
BUILT = 3_000  # distinct requests (calls beyond them reuse them)


class Service(StreamDemoServiceNatsBase):
    def __init__(self, build: bool) -> None:
        self.answer = PingResponse(payload="pong", count=1)
        self.build = build

    async def ping(self, request: PingRequest) -> PingResponse:
        if self.build:
            return PingResponse(payload=request.payload, count=1)
        return self.answer


class RefService:
    """The reference's handlers (its generated `register_stream_demo_service` calls them)."""

    def __init__(self, pb: Any, build: bool) -> None:
        self.pb, self.build = pb, build
        self.answer = pb.PingResponse(payload="pong", count=1)

    async def ping(self, request: Any, info: Any) -> Any:
        if self.build:
            return self.pb.PingResponse(payload=request.payload, count=1)
        return self.answer


async def start(nc: NATS, impl: str, build: bool, reflection: bool = True) -> tuple[int, bytes, Callable[[], int], Callable[[], Awaitable[None]]]:
    """The service on `nc`: the Ping endpoint's subscription id and subject, a count of answers
    sent, and its stop."""
    if impl == "ours":
        server = await betterproto_nats.serve(nc, Service(build), reflection=reflection)
        endpoint = next(e for e in server.endpoints if e.method.name == "Ping")
        subject = endpoint.subject

        def answered() -> int:
            assert not server.refused, server.refused
            return endpoint.record.num_requests if not server.unary_calls else -1

        stop = server.stop
    else:
        sys.path.insert(0, str(REF_DIR / "gen"))
        from streaming.v1 import stream_demo_nats_pb2, stream_demo_pb2  # type: ignore[import-not-found]

        service = await stream_demo_nats_pb2.register_stream_demo_service(nc, RefService(stream_demo_pb2, build))
        subject = next(sub.subject for sub in nc._subs.values() if not sub.subject.startswith("$SRV.") and sub.subject.lower().endswith(".ping"))

        def answered() -> int:
            return int(nc.stats["out_msgs"])

        stop = service.stop
    sid = next(sid for sid, sub in nc._subs.items() if sub.subject == subject)
    return sid, subject.encode(), answered, stop


async def measure(
    url: str, calls: int, rounds: int, impl: str = "ours", build: bool = False, reflection: bool = True, deadline: bool = False
) -> list[float]:
    # Distinct requests, built before the service starts (its loop is not lagged by them), and as
    # many whatever `calls` is (so that two runs under valgrind differ only by the calls served).
    bodies = [bytes(PingRequest(payload=f"p{i}")) for i in range(BUILT)]
    replies = [f"_INBOX.nobody.{i}".encode() for i in range(BUILT)]
    # `--deadline`: each request carries a deadline ten minutes away, as our client sends its timeout
    header = f"NATS/1.0\r\nNats-Deadline: {int((time.time() + 600) * 1000)}\r\n\r\n".encode() if deadline else b""
    nc = await nats.connect(url)
    sid, subject, answered, stop = await start(nc, impl, build, reflection)
    await asyncio.sleep(0.2)  # the loop lag monitor settles after start-up
    process = nc._process_msg
    results = []
    for _ in range(rounds):
        before = answered()
        started = time.process_time()
        for first in range(0, calls, IN_A_READ):
            for i in range(first, min(first + IN_A_READ, calls)):
                await process(sid, subject, replies[i % BUILT], bodies[i % BUILT], header)
            await asyncio.sleep(0)  # the next loop turn: the batch runs, the flusher writes
            await asyncio.sleep(0)
        for _ in range(100_000):
            if answered() - before >= calls:
                break
            await asyncio.sleep(0)
        results.append((time.process_time() - started) / calls * 1e6)
        assert answered() - before == calls, (answered() - before, calls)
    await stop()
    await nc.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--impl", choices=("ours", "ref"), default="ours")
    parser.add_argument("--build", action="store_true", help="the handler builds its answer")
    parser.add_argument("--deadline", action="store_true", help="each request carries a deadline header (as our client's timeout sends)")
    parser.add_argument("--no-reflection", action="store_true", help="the service publishes no schema (issue 29's before/after)")
    args = parser.parse_args()
    with NatsServer() as server:
        results = asyncio.run(measure(server.url, args.calls, args.rounds, args.impl, args.build, not args.no_reflection, args.deadline))
    print(f"{args.impl}{' (answers built)' if args.build else ''}{' (deadline header)' if args.deadline else ''}: service CPU per unary call: best {min(results):.2f} µs, rounds {', '.join(f'{r:.2f}' for r in results)}")


if __name__ == "__main__":
    main()
