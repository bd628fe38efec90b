"""Where the time goes, per RPC shape: cProfile's own time grouped into ours (the runtime), the
generated codec, betterproto2 (message objects built and read by handlers and callers), google
protobuf (the reference's codec), the reference's own code (the Go project's generated Python in
../shared/reference-python/gen; or bench/reference.py's MODEL of it, `--impl model`), nats-py,
asyncio, and the rest (builtins, epoll and socket calls, the bench's own loops).

By default as `make bench` runs a row: the service and the client in separate processes
(bench/worker.py), each profiled (CPU time, not wall time) over the client's timed part. Each shape
also runs once without the profiler: per side, that run's CPU microseconds per call or message,
split by the profile's shares of own time into the groups (and with one shape named, our top
functions on each side). The profiler inflates small frequent calls more than long ones, so read
the split as an estimate.

    .venv/bin/python bench/breakdown.py                      # every shape, both sides
    .venv/bin/python bench/breakdown.py unary50              # one shape, with our top functions per side
    .venv/bin/python bench/breakdown.py unary50 --impl ref   # the baseline's sides instead (raw, ref, model)
    .venv/bin/python bench/breakdown.py --same-process [shape]   # the earlier mode: both in this process
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
import reference  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import ChatMessage, CountUpRequest, StreamDemoServiceNatsClient, SumRequest  # noqa: E402
from run import Pair, Row, Side  # noqa: E402
from same_process import Bench, _drain, _unary  # noqa: E402

N = 50_000  # same-process mode
CATEGORIES = {  # first match wins: the reference's generated code before ours
    "reference (generated)": "reference-python/gen/",
    "betterproto2": "site-packages/betterproto2/",
    "codec (generated)": "/gen/",
    "ours": "betterproto_nats/",
    "nats-py": "site-packages/nats/",
    "asyncio": "/asyncio/",
    "google protobuf": "google",
    "reference model": "bench/reference.py",
}
COLUMNS = ["ours", "codec (generated)", "betterproto2", "reference (generated)", "reference model", "google protobuf", "nats-py", "asyncio", "rest"]

# The shapes of the separate-process mode: (worker row, calls or messages, calls in flight).
SHAPES: dict[str, tuple[str, int, int]] = {
    "unary1": ("unary", 3000, 1),
    "unary50": ("unary", 20000, 50),
    "unary50-deadline": ("unary", 20000, 50),  # calls with a timeout: the Nats-Deadline header, the server's timer
    "unary50-built": ("unary", 20000, 50),  # the handler builds its response, the caller each request
    "server-stream-built": ("server-stream", 100_000, 1),  # the handler builds each CountUpResponse
    "server-stream": ("server-stream", 100_000, 1),
    "client-stream": ("client-stream", 100_000, 1),
    "bidi": ("bidi", 100_000, 1),
    "ping-pong": ("ping-pong", 3000, 1),
    "streams100": ("streams100", 100_000, 1),
}


def category(filename: str, function: str) -> str:
    if filename == "~":  # a builtin: upb's methods name their module
        return "google protobuf" if "google." in function else "rest"
    for name, marker in CATEGORIES.items():
        if marker in filename:
            return name
    return "rest"


def grouped(stats: pstats.Stats) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Own time per group, and our functions with their own times (seconds)."""
    totals: dict[str, float] = {}
    ours: list[tuple[float, str]] = []
    for (filename, line, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        kind = category(filename, function)
        totals[kind] = totals.get(kind, 0.0) + tottime
        if kind == "ours":
            ours.append((tottime, f"{Path(filename).name}:{line} {function}"))
    return totals, ours


def report_side(side: str, stats: pstats.Stats, items: int, cpu: float, top: bool) -> None:
    """One process: its CPU per item (measured without the profiler) split by the profile's shares."""
    totals, ours = grouped(stats)
    whole = sum(totals.values())
    scale = cpu / whole / items * 1e6  # profiled seconds -> unprofiled µs per item
    cells = ", ".join(f"{kind} {totals.get(kind, 0.0) * scale:.1f}" for kind in COLUMNS if totals.get(kind))
    print(f"  {side:8} {cpu / items * 1e6:6.1f} µs CPU per item: {cells}")
    if top:
        for tottime, where in sorted(ours, reverse=True)[:15]:
            print(f"      {tottime * scale:6.2f} µs  {100 * tottime / whole:4.1f}%  {where}")


async def separate(selected: list[str], impl: str, keep: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pb2-") as pb2, NatsServer() as server:
        reference.generate_pb2(Path(pb2))
        for name, (row_name, n, in_flight) in SHAPES.items():
            if selected and name not in selected:
                continue
            side = Side(impl, row_name, variant=name.rsplit("-", 1)[1] if name.endswith(("-deadline", "-built")) else "")
            side = Side(side.impl, side.row, "build" if side.variant == "built" else side.variant)
            row = Row(name, "", side, side, n, in_flight)
            plain = await Pair(server.url, row, side, Path(pb2)).run()  # without the profiler: CPU per item
            with tempfile.TemporaryDirectory(prefix="bench-prof-") as folder:
                result = await Pair(server.url, row, side, Path(pb2), profile_dir=Path(folder)).run()
                items = result["items"]
                print(f"\n{name} ({impl}; {items:,} items; {plain['items'] / plain['elapsed']:,.0f}/s, {items / result['elapsed']:,.0f}/s profiled)")
                for role in ("service", "client"):
                    report_side(role, pstats.Stats(str(Path(folder) / f"{role}.prof")), items, plain[f"{role}_cpu"] / plain["items"] * items, top=bool(selected))
                    if keep is not None:  # for a closer look: python -m pstats <file>
                        keep.mkdir(parents=True, exist_ok=True)
                        shutil.copy(Path(folder) / f"{role}.prof", keep / f"{name}-{impl}-{role}.prof")


# --- the earlier mode: client and service in this one process ----------------------------------------


def shapes(client: StreamDemoServiceNatsClient) -> dict[str, Callable[[], Awaitable[Any]]]:
    one_sum, one_chat = SumRequest(value=1), ChatMessage(text="x")  # as bench/same_process.py sends them
    return {
        "unary1": lambda: _unary(client, N // 20, 1),
        "unary50": lambda: _unary(client, N // 2, 50),
        "server-stream": lambda: _drain(client.count_up(CountUpRequest(count=N))),
        "client-stream": lambda: client.sum(one_sum for _ in range(N)),
        "bidi": lambda: _drain(client.chat(one_chat for _ in range(N))),
    }


def report_same_process(name: str, stats: pstats.Stats, top: bool) -> None:
    totals, ours = grouped(stats)
    whole = sum(totals.values())
    print(f"\n{name}: " + ", ".join(f"{kind} {100 * t / whole:.0f}%" for kind, t in sorted(totals.items(), key=lambda x: -x[1])))
    if top:
        for tottime, where in sorted(ours, reverse=True)[:12]:
            print(f"    {100 * tottime / whole:5.1f}%  {where}")


async def same_process(selected: list[str]) -> None:
    with NatsServer() as server:
        snc = await nats.connect(server.url, pending_size=64 * 2**20)
        cnc = await nats.connect(server.url, pending_size=64 * 2**20)
        service = await betterproto_nats.serve(snc, Bench())
        client = StreamDemoServiceNatsClient(cnc, timeout=600)
        for name, work in shapes(client).items():
            if selected and name not in selected:
                continue
            await work()  # warm up
            profile = cProfile.Profile()
            profile.enable()
            await work()
            profile.disable()
            report_same_process(name, pstats.Stats(profile), top=bool(selected))
        await service.stop()
        await snc.close()
        await cnc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shapes", nargs="*", help=", ".join(SHAPES))
    parser.add_argument("--impl", choices=("ours", "raw", "ref", "model"), default="ours", help="whose sides to profile (ref: unary and server stream; model: unary)")
    parser.add_argument("--same-process", action="store_true", help="the earlier mode: client and service in this process")
    parser.add_argument("--keep", type=Path, help="keep each side's profile in this folder (<shape>-<impl>-<side>.prof)")
    args = parser.parse_args()
    if args.same_process:
        asyncio.run(same_process(args.shapes))
    else:
        asyncio.run(separate(args.shapes, args.impl, args.keep))


if __name__ == "__main__":
    main()
