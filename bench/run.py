"""`make bench`: every RPC shape, measured as users deploy: the service and its client in two separate
processes (bench/worker.py), one local nats-server started here, distinct messages built by the
producer before timing. Ours against raw nats-py doing the same traffic (or against the baseline the
row names: our own call without a deadline, ...). Median of 3 runs per side, ours and the baseline
alternating.

Then the reference section: the Go project's real generated Python (../shared/reference-python/gen,
imported from there) in four pairings per shape, client → service: ours → ours, ref → ref,
ours → ref, ref → ours; 3 rounds, the pairings' order rotating each round (unary 1 and 50 in
flight, one 100k-message server stream), with each side's CPU per call.

Then the same-process rows of the earlier bench as an extra section (bench/same_process.py).
Writes bench/results.md and bench/results.json. The machine is noisy: compare the ratios.

    .venv/bin/python bench/run.py                  # everything (about 6-7 minutes on 2 cores)
    .venv/bin/python bench/run.py --quick          # 1 run per side, 1/10 sizes: a smoke run
    .venv/bin/python bench/run.py --separate-only  # without the same-process extra
    .venv/bin/python bench/run.py --same-process   # only the same-process extra
    .venv/bin/python bench/run.py --rows unary     # only rows whose name contains this (no files written)
    .venv/bin/python bench/run.py --rows 'unary, 1 in flight|server stream, 100k small'  # any of these
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import reference  # noqa: E402
import same_process  # noqa: E402

from betterproto_nats.testing import NatsServer  # noqa: E402

MIB = 1 << 20
WORKER = BENCH / "worker.py"
START_TIMEOUT = 120.0  # seconds for a side to connect and build its messages
RUN_TIMEOUT = 420.0  # seconds for a client's timed part (the worker gives up after 300)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: which implementation runs which worker row, with what."""

    impl: str  # ours | raw | ref | model: the service's (and the client's, unless `client` says)
    row: str
    variant: str = ""
    persist: int = 1
    client: str = ""  # the client's implementation when it differs (the reference's cross pairings)

    def args(self) -> list[str]:
        client = ["--client-impl", self.client] if self.client else []
        return ["--impl", self.impl, "--row", self.row, "--variant", self.variant, "--persist", str(self.persist), *client]


@dataclass(frozen=True)
class Row:
    name: str
    unit: str  # req/s, msg/s, rt/s or MB/s
    ours: Side
    base: Side
    n: int
    in_flight: int = 1
    chunk: int = 0
    target: float | None = None
    runs: int = 3
    jetstream: bool = False


@dataclass
class Result:
    name: str
    unit: str
    ours: float
    raw: float  # the baseline: raw nats-py unless the row names another
    target: float | None = None
    ours_runs: list[float] = field(default_factory=list)
    raw_runs: list[float] = field(default_factory=list)
    # Median CPU microseconds per item (call, message or chunk) of each process, ours and baseline.
    cpu_us: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.ours / self.raw if self.raw else 0.0


def rows(quick: bool) -> list[Row]:
    """The main table, in order. Targets: unary 0.9 of raw nats-py (issue 20; the reference Python's
    rows are `reference_shapes`), streams 2x raw publishing one NATS message per stream message (the scale issue), the
    earlier ones for ping-pong, concurrency and chunks."""
    scale = 10 if quick else 1
    runs = 1 if quick else 3
    two = min(runs, 2)  # rows further from the targets run twice per side, to keep `make bench` near 6 minutes
    ours = lambda row, **kw: Side("ours", row, **kw)  # noqa: E731
    raw = lambda row: Side("raw", row)  # noqa: E731
    u1, u50 = 3000 // scale, 20000 // scale
    n = 100_000 // scale
    table = [
        Row("unary, 1 in flight", "req/s", ours("unary"), raw("unary"), u1, 1, target=0.9),
        Row("unary, 50 in flight", "req/s", ours("unary"), raw("unary"), u50, 50, target=0.9),
        Row("unary with a deadline, 1 in flight (vs without)", "req/s", ours("unary", variant="deadline"), ours("unary"), u1, 1, runs=two),
        Row("unary with a deadline, 50 in flight (vs without)", "req/s", ours("unary", variant="deadline"), ours("unary"), u50, 50, runs=two),
        Row("server stream, 100k small messages", "msg/s", ours("server-stream"), raw("server-stream"), n, target=2.0),
        Row("client stream, 100k small messages", "msg/s", ours("client-stream"), raw("client-stream"), n, target=2.0),
        # As users run them: handlers build their responses, callers their requests, inside the timed part
        # (raw nats-py still sends prebuilt bytes).
        Row("built: unary, 1 in flight", "req/s", ours("unary", variant="build"), raw("unary"), u1, 1, runs=two),
        Row("built: unary, 50 in flight", "req/s", ours("unary", variant="build"), raw("unary"), u50, 50, runs=two),
        Row("built: server stream, handler builds 100k CountUpResponse", "msg/s", ours("server-stream", variant="build"), raw("server-stream"), n, target=1.5, runs=two),
        Row("built: client stream, caller builds 100k SumRequest", "msg/s", ours("client-stream", variant="build"), raw("client-stream"), n, target=1.5, runs=two),
        Row("bidi pipelined, 100k echoed", "msg/s", ours("bidi"), raw("bidi"), n, target=2.0),
        Row("server stream, 100k (vs raw pre-packed batches: ceiling)", "msg/s", ours("server-stream"), raw("ceiling"), n),
        Row("bidi ping-pong, sequential round trips", "rt/s", ours("ping-pong"), raw("ping-pong"), 3000 // scale, target=0.5),
        Row("100 concurrent server streams (vs one stream)", "msg/s", ours("streams100"), ours("server-stream"), n, target=0.8),
    ]
    # Chunked transfers: 256 MiB each way. Two runs per side instead of three in a full run (these
    # rows are long and steady); the median of two is their mean.
    for chunk in (64 * 1024, 512 * 1024):
        size = (256 * MIB // scale) // chunk * chunk
        for way in ("download", "upload"):
            name = f"chunked {way} 256 MiB, {chunk // 1024} KiB chunks"
            table.append(Row(name, "MB/s", ours(way), raw(way), size, chunk=chunk, target=0.7, runs=min(runs, 2)))
    # Unary calls whose answers are kept in JetStream KV, against the same calls served with
    # persist=False: best effort (answer, then write) and required (write, then answer).
    for in_flight, calls in ((1, 1000 // scale), (50, 5000 // scale)):
        for label, variant in (("best effort", "best"), ("required", "required")):
            name = f"unary + KV {label}, {in_flight} in flight (vs not stored)"
            table.append(Row(name, "req/s", ours("persist", variant=variant, persist=1), ours("persist", variant=variant, persist=0), calls, in_flight, runs=two, jetstream=True))
    return table


@dataclass(frozen=True)
class Shape:
    """One shape of the reference section, and the main-table row whose raw side gives raw's CPU."""

    name: str
    unit: str
    row: str
    n: int
    in_flight: int
    raw_row: str
    variant: str = ""  # "build": every handler and caller builds its messages in the timed part


# Client → service. The service's implementation is the Side's impl, the client's its `client`.
PAIRINGS = (("ours → ours", "ours", "ours"), ("ref → ref", "ref", "ref"), ("ours → ref", "ours", "ref"), ("ref → ours", "ref", "ours"))


@dataclass
class RefResult:
    """A shape's four pairings: rates of each round, median CPU µs per item of each process, and
    raw nats-py's CPU per item from the main table's row of the same shape."""

    name: str
    unit: str
    rates: dict[str, list[float]] = field(default_factory=dict)
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)
    raw_cpu_us: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def rate(self, pairing: str) -> float:
        return statistics.median(self.rates[pairing]) if self.rates.get(pairing) else 0.0

    def ratio(self, pairing: str) -> float:
        """A pairing's rate over ref → ref's."""
        base = self.rate("ref → ref")
        return self.rate(pairing) / base if base else 0.0


def reference_shapes(quick: bool) -> list[Shape]:
    """The reference section's shapes: the main table's sizes, so raw's CPU compares."""
    scale = 10 if quick else 1
    return [
        Shape("unary, 1 in flight (vs reference Python)", "req/s", "unary", 3000 // scale, 1, "unary, 1 in flight"),
        Shape("unary, 50 in flight (vs reference Python)", "req/s", "unary", 20000 // scale, 50, "unary, 50 in flight"),
        Shape("server stream, 100k small messages (vs reference Python)", "msg/s", "server-stream", 100_000 // scale, 1, "server stream, 100k small messages"),
        Shape("built: unary, 1 in flight (vs reference Python)", "req/s", "unary", 3000 // scale, 1, "built: unary, 1 in flight", "build"),
        Shape("built: unary, 50 in flight (vs reference Python)", "req/s", "unary", 20000 // scale, 50, "built: unary, 50 in flight", "build"),
        Shape("built: server stream, 100k (vs reference Python)", "msg/s", "server-stream", 100_000 // scale, 1, "built: server stream, handler builds 100k CountUpResponse", "build"),
    ]


async def measure_reference(shape: Shape, url: str, pb2: Path, rounds: int, server_pid: int) -> RefResult:
    """`rounds` rounds of the four pairings on one nats-server, the order rotated each round so no
    pairing always runs first (or right after the same one)."""
    row = Row(shape.name, shape.unit, Side("ours", shape.row, shape.variant), Side("ours", shape.row, shape.variant), shape.n, shape.in_flight)
    got: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in PAIRINGS}
    for run in range(rounds):
        for name, client, service in PAIRINGS[run % 4 :] + PAIRINGS[: run % 4]:
            side = Side(service, shape.row, shape.variant, client=client)
            got[name].append(await Pair(url, row, side, pb2, tag=f"{name}{run}", server_pid=server_pid).run())
    result = RefResult(shape.name, shape.unit)
    for name, results in got.items():
        result.rates[name] = [rate(row, r) for r in results]
        result.cpu_us[name] = {
            process: statistics.median(r[f"{process}_cpu"] / max(r["items"], 1) * 1e6 for r in results)
            for process in ("client", "service", "server")
        }
        for r in results:
            if r["items"] < shape.n or r.get("end_lost"):
                lost = " and the end marker" if r.get("end_lost") else ""
                result.notes.append(f"{name}: lost {shape.n - r['items']} of {shape.n} messages{lost}")
    return result


def show_reference(result: RefResult) -> None:
    print(result.name, flush=True)
    for name, _, _ in PAIRINGS:
        c = result.cpu_us[name]
        runs = "/".join(f"{x:,.0f}" for x in result.rates[name])
        print(
            f"    {name:12} {result.rate(name):10,.0f} {result.unit:5} x{result.ratio(name):4.2f} of ref → ref  "
            f"cpu µs client {c['client']:.1f} service {c['service']:.1f} nats-server {c['server']:.1f}  [{runs}]",
            flush=True,
        )
    for note in result.notes:
        print(f"    {note}", flush=True)


class Pair:
    """A service process and a client process of one run (or, `same_process`, one process running
    both, as the earlier bench did); every process ended on the way out, even on error."""

    def __init__(
        self, url: str, row: Row, side: Side, pb2: Path, profile_dir: Path | None = None, tag: str = "",
        server_pid: int = 0, same_process: bool = False, same_object: bool = False, window: int = 0,
    ) -> None:
        self.common = [
            "--url", url, "--n", str(row.n), "--in-flight", str(row.in_flight), "--chunk", str(row.chunk or 65536),
            "--pb2", str(pb2), "--tag", tag, "--server-pid", str(server_pid), *side.args(),
            *(["--same-object"] if same_object else []), *(["--window", str(window)] if window else []),
        ]
        self.profile_dir = profile_dir
        self.same_process = same_process
        self.service: asyncio.subprocess.Process | None = None
        self.client: asyncio.subprocess.Process | None = None

    async def _start(self, role: str) -> asyncio.subprocess.Process:
        profile = ["--profile", str(self.profile_dir / f"{role}.prof")] if self.profile_dir else []
        return await asyncio.create_subprocess_exec(
            sys.executable, str(WORKER), "--role", role, *self.common, *profile,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )

    @staticmethod
    async def _line(proc: asyncio.subprocess.Process, timeout: float) -> str:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode().strip()
        if not line:
            raise RuntimeError(f"worker exited with {await proc.wait()} without answering")
        return line

    async def run(self) -> dict[str, Any]:
        """Start both sides (they build their messages at the same time), let the client go once the
        service is ready, and return the client's JSON line."""
        try:
            if self.same_process:
                self.client = await self._start("both")
            else:
                self.service = await self._start("service")
                self.client = await self._start("client")
                if (line := await self._line(self.service, START_TIMEOUT)) != "ready":
                    raise RuntimeError(f"service said {line!r}")
            if (line := await self._line(self.client, START_TIMEOUT)) != "prepared":
                raise RuntimeError(f"client said {line!r}")
            assert self.client.stdin is not None
            self.client.stdin.write(b"go\n")
            await self.client.stdin.drain()
            result: dict[str, Any] = json.loads(await self._line(self.client, RUN_TIMEOUT))
            await asyncio.wait_for(self.client.wait(), 30)
            return result
        finally:
            await self.end()

    async def end(self) -> None:
        """Close the service's stdin (it stops and writes its profile), then make sure both are gone."""
        for proc in (self.client, self.service):
            if proc is not None and proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
        for proc in (self.client, self.service):
            if proc is None:
                continue
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def rate(row: Row, result: dict[str, Any]) -> float:
    """The row's unit from a client's result: items per second, or MB/s of chunk payload."""
    if row.unit == "MB/s":
        return result["items"] * row.chunk / result["elapsed"] / 1e6
    return result["items"] / result["elapsed"]


async def measure(row: Row, url: str, pb2: Path, runs: int, server_pid: int = 0) -> Result:
    """`runs` runs of each side, alternating which goes first; medians, CPU per item, losses."""
    got: dict[str, list[dict[str, Any]]] = {"ours": [], "base": []}
    for run in range(runs):
        order = (("ours", row.ours), ("base", row.base)) if run % 2 == 0 else (("base", row.base), ("ours", row.ours))
        for key, side in order:
            tag = f"{key}{run}-{time.monotonic_ns()}"
            got[key].append(await Pair(url, row, side, pb2, tag=tag, server_pid=server_pid).run())
    rates = {key: [rate(row, r) for r in results] for key, results in got.items()}
    result = Result(row.name, row.unit, statistics.median(rates["ours"]), statistics.median(rates["base"]), row.target, rates["ours"], rates["base"])
    for key, results in got.items():
        for process in ("client", "service", "server"):
            result.cpu_us[f"{key} {process}"] = statistics.median(r[f"{process}_cpu"] / max(r["items"], 1) * 1e6 for r in results)
        impl = (row.ours if key == "ours" else row.base).impl
        expected = row.n // row.chunk if row.chunk else row.n
        for r in results:
            if r["items"] < expected or r.get("end_lost"):
                size = f" ({row.chunk // 1024} KiB each)" if row.chunk else ""
                result.notes.append(f"{impl} lost {expected - r['items']} of {expected} messages{size}" + (" and the end marker" if r.get("end_lost") else ""))
            if r["service"].get("dropped"):
                result.notes.append(f"{r['service']['dropped']} KV writes dropped")
    return result


def show(result: Result) -> None:
    target = f"  (target ≥ {result.target})" if result.target else ""
    runs = "/".join(f"{x:,.0f}" for x in result.ours_runs) + " vs " + "/".join(f"{x:,.0f}" for x in result.raw_runs)
    print(f"{result.name:58} ours {result.ours:10,.0f}  base {result.raw:10,.0f} {result.unit:5} ratio {result.ratio:5.2f}{target}  [{runs}]", flush=True)
    for note in result.notes:
        print(f"    {note}", flush=True)


async def rss_of_1gib_download(url: str, pb2: Path, quick: bool) -> dict[str, float]:
    """Our service in one process, bench/rss_download.py downloading 1 GiB in another: the
    downloader's RSS idle and at peak (MB)."""
    size = (1 << 30) // (10 if quick else 1) // 65536 * 65536
    row = Row("rss", "MB/s", Side("ours", "rss"), Side("ours", "rss"), size, chunk=65536)
    pair = Pair(url, row, row.ours, pb2)
    try:
        pair.service = await pair._start("service")
        if (line := await pair._line(pair.service, START_TIMEOUT)) != "ready":
            raise RuntimeError(f"service said {line!r}")
        pair.client = await asyncio.create_subprocess_exec(
            sys.executable, str(BENCH / "rss_download.py"), url, str(size), stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE,
        )
        out: dict[str, float] = json.loads(await pair._line(pair.client, RUN_TIMEOUT))
        return out
    finally:
        await pair.end()


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"nats-py {importlib.metadata.version('nats-py')}, protobuf {importlib.metadata.version('protobuf')}"
    )


def reference_lines(refs: list[RefResult], rounds: int) -> list[str]:
    """results.md's reference section: rates and ratios, then CPU per item of each side."""
    lines = [
        "",
        "## Against the reference Python (the Go project's generated code)",
        "",
        "protoc-gen-nats-micro's real generated Python (../shared/reference-python/gen, run from there), its "
        "handlers doing what ours do (a prebuilt answer; CountUp's distinct messages built before timing; in the "
        "built: shapes both build every message in the timed part, as users' handlers and callers do), "
        f"client → service in four pairings on the same nats-server, {rounds} round{'s' if rounds > 1 else ''} with "
        "the order rotating, median. Ratios are over ref → ref; ours → ours / ref → ref is ours against the reference.",
        "",
        "| benchmark | ours → ours | ref → ref | ours → ref | ref → ours | unit | ours/ref |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in refs:
        cells = " | ".join(f"{r.rate(name):,.0f}" for name, _, _ in PAIRINGS)
        lines.append(f"| {r.name} | {cells} | {r.unit} | {r.ratio('ours → ours'):.2f} |")
    lines += [
        "",
        "CPU µs per call or message, median (client / service; the nats-server's at 10 ms resolution); raw is "
        "raw nats-py's pair in the main table's row of the same shape:",
        "",
        "| benchmark | ours → ours | ref → ref | ours → ref | ref → ours | raw → raw | nats-server (ours, ref, raw) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in refs:
        pairs = " | ".join(f"{r.cpu_us[name]['client']:.1f} / {r.cpu_us[name]['service']:.1f}" for name, _, _ in PAIRINGS)
        raw = f"{r.raw_cpu_us['client']:.1f} / {r.raw_cpu_us['service']:.1f}" if r.raw_cpu_us else "–"
        servers = ", ".join(f"{x:.1f}" for x in (r.cpu_us["ours → ours"]["server"], r.cpu_us["ref → ref"]["server"], r.raw_cpu_us.get("server", 0.0)))
        lines.append(f"| {r.name} | {pairs} | {raw} | {servers} |")
    notes = [f"- {r.name}: {note}" for r in refs for note in dict.fromkeys(r.notes)]
    return lines + (["", *notes] if notes else [])


def write(
    results: list[Result], rss: dict[str, float] | None, extra: list[same_process.Result], quick: bool, runs: int,
    refs: list[RefResult], load: tuple[float, float],
) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Benchmark results ({stamp}{', quick' if quick else ''})", "",
        f"Machine: {machine()}. 1-minute load average {load[0]:.2f} at the start, {load[1]:.2f} at the end.", "",
    ]
    if results:
        lines += [
            f"**Service and client ran in separate processes** (plus the one local nats-server); median of {runs} "
            f"run{'s' if runs > 1 else ''} per side{' (deadline, built:, chunked and KV rows: 2)' if runs > 2 else ''}, ours and the baseline alternating; each producer built its distinct "
            "messages before timing, except in the built: rows (ours builds each message in the timed part; raw sends prebuilt bytes). The baseline is raw nats-py unless the row names another.",
            "",
            "| benchmark | ours | raw nats-py / baseline | unit | ratio | target |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for r in results:
            met = "" if r.target is None else (f"≥ {r.target} ✓" if r.ratio >= r.target else f"≥ {r.target} ✗")
            lines.append(f"| {r.name} | {r.ours:,.0f} | {r.raw:,.0f} | {r.unit} | {r.ratio:.2f} | {met} |")
        notes = [f"- {r.name}: {note}" for r in results for note in dict.fromkeys(r.notes)]
        lines += ["", *notes] if notes else []
        lines += [
            "",
            "CPU per item (µs of each process's CPU time over the timed part / calls or messages; the nats-server's "
            "at 10 ms resolution), median:",
            "",
            "| benchmark | ours client | ours service | nats-server | baseline client | baseline service | nats-server |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results:
            c = r.cpu_us
            lines.append(
                f"| {r.name} | {c['ours client']:.1f} | {c['ours service']:.1f} | {c['ours server']:.1f} "
                f"| {c['base client']:.1f} | {c['base service']:.1f} | {c['base server']:.1f} |"
            )
    if refs:
        lines += reference_lines(refs, runs)
    if rss:
        growth = rss["peak_mb"] - rss["idle_mb"]
        lines += [
            "",
            f"1 GiB chunked download, service and client in separate processes: client RSS idle {rss['idle_mb']:.0f} MB, peak "
            f"{rss['peak_mb']:.0f} MB, growth {growth:.0f} MB (target < 100 MB {'✓' if growth < 100 else '✗'}), {rss['mb_per_s']:.0f} MB/s.",
        ]
    if extra:
        lines += [
            "",
            "## Same process (extra)",
            "",
            "The earlier bench, kept for comparison: client and service in ONE process, one prebuilt message "
            "object sent n times, ours and raw nats-py in the same run (bench/same_process.py).",
            "",
            "| benchmark | ours | raw nats-py | unit | ratio | target |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for e in extra:
            met = "" if e.target is None else (f"≥ {e.target} ✓" if e.ratio >= e.target else f"≥ {e.target} ✗")
            lines.append(f"| {e.name} | {e.ours:,.0f} | {e.raw:,.0f} | {e.unit} | {e.ratio:.2f} | {met} |")
        lines += ["", *(f"- {loss}" for loss in same_process.LOSSES)] if same_process.LOSSES else []
    (BENCH / "results.md").write_text("\n".join(lines) + "\n")
    payload = {
        "date": stamp,
        "machine": machine(),
        "quick": quick,
        "processes": "service and client in separate processes",
        "runs_per_side": runs,
        "results": [asdict(r) | {"ratio": r.ratio} for r in results],
        "load_average_1min": {"start": load[0], "end": load[1]},
        "reference": [asdict(r) | {"rate": {name: r.rate(name) for name, _, _ in PAIRINGS}} for r in refs],
        "rss_1gib_download": rss,
        "same_process": [asdict(e) | {"ratio": e.ratio} for e in extra],
        "same_process_raw_losses": same_process.LOSSES,
    }
    (BENCH / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    print("\n".join(lines))


async def separate(quick: bool, only: str | None, runs: int | None) -> tuple[list[Result], dict[str, float] | None, list[RefResult]]:
    results: list[Result] = []
    refs: list[RefResult] = []
    rss = None
    wanted = lambda name: only is None or any(part in name for part in only.split("|"))  # noqa: E731
    table = [r for r in rows(quick) if wanted(r.name)]
    shapes = [s for s in reference_shapes(quick) if wanted(s.name)]
    with tempfile.TemporaryDirectory(prefix="bench-pb2-") as pb2, tempfile.TemporaryDirectory(prefix="bench-js-") as store:
        reference.generate_pb2(Path(pb2))
        with NatsServer() as server, NatsServer(extra_args=["-js", "-sd", store]) as js_server:
            for row in table:
                nats_server = js_server if row.jetstream else server
                assert nats_server.process is not None
                result = await measure(row, nats_server.url, Path(pb2), runs or row.runs, nats_server.process.pid)
                results.append(result)
                show(result)
            assert server.process is not None
            for shape in shapes:
                ref = await measure_reference(shape, server.url, Path(pb2), runs or (1 if quick else 3), server.process.pid)
                raw = next((r for r in results if r.name == shape.raw_row), None)
                if raw is not None:
                    ref.raw_cpu_us = {p: raw.cpu_us[f"base {p}"] for p in ("client", "service", "server")}
                refs.append(ref)
                show_reference(ref)
            if only is None:
                rss = await rss_of_1gib_download(server.url, Path(pb2), quick)
                print(f"1 GiB download: RSS growth {rss['peak_mb'] - rss['idle_mb']:.0f} MB, {rss['mb_per_s']:.0f} MB/s", flush=True)
    return results, rss, refs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run per side, 1/10 sizes")
    parser.add_argument("--separate-only", action="store_true", help="skip the same-process extra")
    parser.add_argument("--same-process", action="store_true", help="only the same-process extra")
    parser.add_argument("--rows", help="only rows whose name contains this (or one of these, split by |); writes no files")
    parser.add_argument("--runs", type=int, help="runs per side (default 3, 1 with --quick)")
    args = parser.parse_args()
    started = time.monotonic()
    results: list[Result] = []
    refs: list[RefResult] = []
    rss = None
    load_start = os.getloadavg()[0]
    if not args.same_process:
        results, rss, refs = await separate(args.quick, args.rows, args.runs)
    extra: list[same_process.Result] = []
    if not args.separate_only and not args.rows:
        print("\nsame process (extra):", flush=True)
        extra = await same_process.main_rows()
    if not args.rows:
        write(results, rss, extra, args.quick, args.runs or (1 if args.quick else 3), refs, (load_start, os.getloadavg()[0]))
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    if "--quick" in sys.argv:
        same_process.QUICK, same_process.SCALE = True, 10
    asyncio.run(main())
