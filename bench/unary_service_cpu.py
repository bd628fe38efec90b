"""The service's own cost per unary call, in one process, without a client: requests handed to the
connection's read path as nats-py's parser hands them (`nc._process_msg`, 50 per loop turn, as one
socket read brings them), answers published for real (to a subject nobody reads). What it measures
is what `bench/breakdown.py unary50` calls the service's CPU per call, less the socket reads: our
runtime, the codec, nats-py's writes and asyncio. Under valgrind it counts instructions, which other
load on the machine does not change; two runs of different sizes give a per-call difference that
still moves about ±5% (batches and writes follow the clock), so compare medians of a few:

    .venv/bin/python bench/unary_service_cpu.py                 # µs of CPU per call (best of 5)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg .venv/bin/python bench/unary_service_cpu.py --calls 5000 --rounds 1
                                                                # instructions, whatever else the machine does
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import PingRequest, PingResponse, StreamDemoServiceNatsBase  # noqa: E402

IN_A_READ = 50  # requests per loop turn
BUILT = 3_000  # distinct requests (calls beyond them reuse them)


class Service(StreamDemoServiceNatsBase):
    def __init__(self) -> None:
        self.answer = PingResponse(payload="pong", count=1)

    async def ping(self, request: PingRequest) -> PingResponse:
        return self.answer


async def measure(url: str, calls: int, rounds: int, reflection: bool = True) -> list[float]:
    # Distinct requests, built before the service starts (its loop is not lagged by them), and as
    # many whatever `calls` is (so that two runs under valgrind differ only by the calls served).
    bodies = [bytes(PingRequest(payload=f"p{i}")) for i in range(BUILT)]
    replies = [f"_INBOX.nobody.{i}".encode() for i in range(BUILT)]
    nc = await nats.connect(url)
    server = await betterproto_nats.serve(nc, Service(), reflection=reflection)
    await asyncio.sleep(0.2)  # the loop lag monitor settles after start-up
    endpoint = next(e for e in server.endpoints if e.method.name == "Ping")
    sid = next(sid for sid, sub in nc._subs.items() if sub.subject == endpoint.subject)
    subject = endpoint.subject.encode()
    process = nc._process_msg
    results = []
    for _ in range(rounds):
        before = endpoint.record.num_requests
        started = time.process_time()
        for first in range(0, calls, IN_A_READ):
            for i in range(first, min(first + IN_A_READ, calls)):
                await process(sid, subject, replies[i % BUILT], bodies[i % BUILT], b"")
            await asyncio.sleep(0)  # the next loop turn: the batch runs, the flusher writes
            await asyncio.sleep(0)
        while server.unary_calls:
            await asyncio.sleep(0)
        results.append((time.process_time() - started) / calls * 1e6)
        assert not server.refused, server.refused
        assert endpoint.record.num_requests - before == calls
    await server.stop()
    await nc.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-reflection", action="store_true", help="the service publishes no schema (issue 29's before/after)")
    args = parser.parse_args()
    with NatsServer() as server:
        results = asyncio.run(measure(server.url, args.calls, args.rounds, not args.no_reflection))
    print(f"service CPU per unary call: best {min(results):.2f} µs, rounds {', '.join(f'{r:.2f}' for r in results)}")


if __name__ == "__main__":
    main()
