"""The examples run end to end (they are what `make demo` shows users)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_streaming_demo() -> None:
    out = run("examples/streaming/demo.py")
    assert "[1, 2, 3, 4, 5]" in out and "total=60 count=3" in out and "'echo: goodbye'" in out


def test_snapshots_example() -> None:
    out = run("examples/snapshots/snapshots.py", "4")
    assert "imported snap-1: 4194304 bytes" in out and "sha256 matches on all three copies" in out


def test_auth_interceptor_example() -> None:
    out = run("examples/interceptors/auth.py")
    assert "pong: with a token" in out and "[1, 2, 3]" in out and "without a token: UNAUTHENTICATED" in out


def test_tracing_example() -> None:
    out = run("examples/interceptors/tracing.py")
    assert out.count('"name": "streaming.v1.StreamDemoService/CountUp"') == 2  # a client and a server span
    assert "client streaming.v1.StreamDemoService/Chat OK" in out and "['echo: traced']" in out
