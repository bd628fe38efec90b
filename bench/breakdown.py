"""Where the time goes, per RPC shape: cProfile's own time grouped into betterproto (message objects
built and read by handlers and callers), the generated codec, ours (the runtime), nats-py, asyncio,
and the rest (builtins, the benchmark's own loops). Client and service run in this one process.

    .venv/bin/python bench/breakdown.py            # every shape, a table per shape
    .venv/bin/python bench/breakdown.py unary50    # one shape, with the top functions of ours
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from gen.streaming.v1 import ChatMessage, CountUpRequest, StreamDemoServiceNatsClient, SumRequest  # noqa: E402
from run import Bench, _drain, _unary  # noqa: E402

N = 50_000
CATEGORIES = {
    "betterproto": "site-packages/betterproto/",
    "codec (generated)": "/gen/",
    "ours": "betterproto_nats/",
    "nats-py": "site-packages/nats/",
    "asyncio": "/asyncio/",
}


def category(filename: str) -> str:
    for name, marker in CATEGORIES.items():
        if marker in filename:
            return name
    return "rest"


def shapes(client: StreamDemoServiceNatsClient) -> dict[str, Callable[[], Awaitable[Any]]]:
    one_sum, one_chat = SumRequest(value=1), ChatMessage(text="x")  # as bench/run.py sends them
    return {
        "unary1": lambda: _unary(client, N // 20, 1),
        "unary50": lambda: _unary(client, N // 2, 50),
        "server-stream": lambda: _drain(client.count_up(CountUpRequest(count=N))),
        "client-stream": lambda: client.sum(one_sum for _ in range(N)),
        "bidi": lambda: _drain(client.chat(one_chat for _ in range(N))),
    }


def report(name: str, stats: pstats.Stats, top: bool) -> None:
    totals: dict[str, float] = {}
    ours: list[tuple[float, str]] = []
    for (filename, line, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        kind = category(filename)
        totals[kind] = totals.get(kind, 0.0) + tottime
        if kind == "ours":
            ours.append((tottime, f"{Path(filename).name}:{line} {function}"))
    whole = sum(totals.values())
    print(f"\n{name}: " + ", ".join(f"{kind} {100 * t / whole:.0f}%" for kind, t in sorted(totals.items(), key=lambda x: -x[1])))
    if top:
        for tottime, where in sorted(ours, reverse=True)[:12]:
            print(f"    {100 * tottime / whole:5.1f}%  {where}")


async def main(selected: list[str]) -> None:
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
            report(name, pstats.Stats(profile), top=bool(selected))
        await service.stop()
        await snc.close()
        await cnc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
