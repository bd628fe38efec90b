"""Why the same-process bench read higher: a few rows run four ways, for ours and raw nats-py —
service and client in one process or in two, one prebuilt message object sent n times or n distinct
messages — with each process's CPU per item, the nats-server's, and the NATS messages per item on
the client's connection (how well streams batch; acks and credit included).

    .venv/bin/python bench/modes.py [--runs 3] [--rows unary50,server-stream,client-stream,bidi]

Prints a markdown table (docs/PERFORMANCE.md, "Measured as deployed"). About four minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import reference  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from run import Pair, Row, Side  # noqa: E402

ROWS: dict[str, tuple[str, str, int, int]] = {  # name: (worker row, unit, n, in flight)
    "unary1": ("unary", "req/s", 3000, 1),
    "unary50": ("unary", "req/s", 20000, 50),
    "server-stream": ("server-stream", "msg/s", 100_000, 1),
    "client-stream": ("client-stream", "msg/s", 100_000, 1),
    "bidi": ("bidi", "msg/s", 100_000, 1),
}


async def one_way(
    url: str, pid: int, pb2: Path, row: Row, side: Side, same_process: bool, same_object: bool, runs: int, window: int = 0
) -> dict[str, float]:
    """Medians over `runs` of the rate, CPU µs per item (client, service, nats-server) and NATS
    messages per 1,000 items in and out of the client's connection."""
    results: list[dict[str, Any]] = []
    for _ in range(runs):
        pair = Pair(url, row, side, pb2, server_pid=pid, same_process=same_process, same_object=same_object, window=window)
        results.append(await pair.run())

    def med(f: Any) -> float:
        return statistics.median(f(r) for r in results)

    per = lambda r, key: r[key] / r["items"] * 1e6  # noqa: E731
    return {
        "rate": med(lambda r: r["items"] / r["elapsed"]),
        # In one process the client's and the service's windows measure the same process: count it once.
        "client": med(lambda r: per(r, "client_cpu")),
        "service": 0.0 if same_process else med(lambda r: per(r, "service_cpu")),
        "server": med(lambda r: per(r, "server_cpu")),
        "nats": med(lambda r: (r["client_nats"]["in_msgs"] + r["client_nats"]["out_msgs"]) / r["items"] * 1000),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", default="unary50,server-stream,client-stream,bidi")
    parser.add_argument("--window", type=int, default=1024, help="the larger receive window tried for our streams (default 256)")
    args = parser.parse_args()
    print("| row | impl | processes | messages | rate | client µs | service µs | nats-server µs | client's NATS msgs per 1,000 items |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="bench-pb2-") as pb2, NatsServer() as server:
        reference.generate_pb2(Path(pb2))
        assert server.process is not None
        for name in args.rows.split(","):
            worker_row, unit, n, in_flight = ROWS[name]
            for impl in ("ours", "raw"):
                side = Side(impl, worker_row)
                row = Row(name, unit, side, side, n, in_flight)
                ways = [(True, True, 0), (True, False, 0), (False, True, 0), (False, False, 0)]
                if impl == "ours" and worker_row != "unary":
                    ways.append((False, False, args.window))  # what a larger default window would do
                for same_process, same_object, window in ways:
                    m = await one_way(server.url, server.process.pid, Path(pb2), row, side, same_process, same_object, args.runs, window)
                    where = "one (both)" if same_process else "two"
                    what = ("one object n times" if same_object else "n distinct") + (f", window {window}" if window else "")
                    service = "(in client)" if same_process else f"{m['service']:.1f}"
                    print(
                        f"| {name} | {impl} | {where} | {what} | {m['rate']:,.0f} {unit} | {m['client']:.1f} | {service} "
                        f"| {m['server']:.1f} | {m['nats']:,.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    asyncio.run(main())
