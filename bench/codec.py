"""Messages in one process. First the cost of a generated message itself, as handlers and callers pay
it: construct one and read a field (issue 31's budget: <= 2 us and <= 0.1 us). Then codecs side by
side: betterproto2's own, the codec our plugin generates (through the runtime's Codec, as calls use
it) and google protobuf (upb), on three messages: a small two-field one, one with nested, repeated and
map fields, and a 64 KiB bytes field. Prints ops/s and the ratios. `--quick` runs shorter.

Run after `make gen`: .venv/bin/python bench/codec.py
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from betterproto_nats.encoding.codec import PROTO  # noqa: E402
from gen.fixtures.common.v1 import Color, Money  # noqa: E402
from gen.fixtures.hard import v1 as hard  # noqa: E402
from gen.streaming.v1 import CountUpResponse, PingResponse, SnapshotChunk  # noqa: E402

QUICK = "--quick" in sys.argv
SECONDS = 0.02 if QUICK else 0.15  # per timing; the best of seven rounds is kept


def google_classes() -> dict[str, Any]:
    """upb classes for the same .proto files (protoc --python_out into a temporary folder)."""
    out = Path(tempfile.mkdtemp(prefix="bench-pb2-"))
    try:
        protos = ["streaming/v1/stream_demo.proto", "fixtures/hard/v1/hard.proto", "fixtures/common/v1/common.proto", "natsmicro/options.proto"]
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", *protos],
            check=True, capture_output=True,
        )
        sys.path.insert(0, str(out))
        streaming = importlib.import_module("streaming.v1.stream_demo_pb2")
        hard_pb2 = importlib.import_module("fixtures.hard.v1.hard_pb2")
        sys.path.remove(str(out))
    finally:
        shutil.rmtree(out)
    return {"CountUpResponse": streaming.CountUpResponse, "Outer": hard_pb2.Outer, "SnapshotChunk": streaming.SnapshotChunk}


def rates(*calls: Callable[[], object]) -> list[float]:
    """Calls per second of each: the best of seven rounds of about SECONDS each, taken in turns so
    that a busy moment on the machine hits all of them alike."""
    counts = []
    for call in calls:
        count = 1
        while True:
            start = time.perf_counter()
            for _ in range(count):
                call()
            elapsed = time.perf_counter() - start
            if elapsed > SECONDS / 10:
                break
            count *= 4
        counts.append(max(1, int(count * SECONDS / elapsed)))
    best = [float("inf")] * len(calls)
    for _ in range(7):
        for i, (call, count) in enumerate(zip(calls, counts)):
            start = time.perf_counter()
            for _ in range(count):
                call()
            best[i] = min(best[i], (time.perf_counter() - start) / count)
    return [1 / b for b in best]


def messages() -> list[tuple[str, Any]]:
    at = datetime(2026, 11, 29, 12, 0, 0, 250000, tzinfo=timezone.utc)
    outer = hard.Outer(
        inner=hard.OuterInner(kind=hard.OuterInnerKind.A, value="inner"),
        inners=[hard.OuterInner(value=f"item {i}") for i in range(4)],
        by_name={f"key {i}": hard.OuterInner(value=str(i)) for i in range(4)},
        prices={i: Money(currency="EUR", units=100 * i) for i in range(1, 4)},
        money=Money(currency="USD", units=12345),
        maybe=0,
        color=Color.RED,
        at=at,
        took=timedelta(seconds=90),
        class_="c",
        typing=7,
        from_=True,
    )
    return [
        ("small (2 fields)", CountUpResponse(number=12345, timestamp="2026-11-29T12:00:00.250Z")),
        ("nested/repeated/map", outer),
        ("64 KiB bytes", SnapshotChunk(data=bytes(range(256)) * 256)),
    ]


def micro() -> None:
    """The per-message cost users pay in handlers and callers (targets: construct <= 2 us, read <= 0.1 us)."""
    ping = PingResponse(payload="x", count=3)
    construct_ping, construct_count, read = rates(
        lambda: PingResponse(payload="x", count=3), lambda: CountUpResponse(number=5), lambda: ping.count
    )
    print("| generated message | µs | target |")
    print("|---|---:|---:|")
    print(f"| construct PingResponse(payload=\"x\", count=3) | {1e6 / construct_ping:.2f} | 2 |")
    print(f"| construct CountUpResponse(number=5) | {1e6 / construct_count:.2f} | 2 |")
    print(f"| read a field (m.count; the lambda's call included) | {1e6 / read:.3f} | 0.1 |")
    print()


def main() -> None:
    google = google_classes()
    print(f"betterproto2 0.10, Python {sys.version.split()[0]}")
    print()
    micro()
    print("| message | op | betterproto2 | generated | upb | generated / betterproto2 | generated / upb |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, message in messages():
        cls = type(message)
        body = bytes(message)
        google_cls = google[cls.__name__]
        google_message = google_cls.FromString(body)
        assert google_cls.FromString(PROTO.encode(message)) == google_message  # the same message three ways
        rows = {
            "encode": (lambda: bytes(message), lambda: PROTO.encode(message), google_message.SerializeToString),
            "decode": (lambda: cls.parse(body), lambda: PROTO.decode(cls, body), lambda: google_cls.FromString(body)),
        }
        for op, (theirs, ours, upb) in rows.items():
            b, o, g = rates(theirs, ours, upb)
            size = f" ({o * len(body) / 1e6:,.0f} MB/s)" if len(body) > 10000 else ""
            print(f"| {name} | {op} | {b:,.0f} | {o:,.0f}{size} | {g:,.0f} | {o / b:.1f}x | {o / g:.2f} |")


if __name__ == "__main__":
    main()
