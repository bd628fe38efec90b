"""The README's quick start works as written: its proto generates and its Python runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from betterproto_nats.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent


def blocks_of(heading: str) -> dict[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return {lang: code for lang, code in re.findall(r"```(\w+)\n(.*?)```", section, re.S)}


def quick_start_blocks() -> dict[str, str]:
    return blocks_of("Quick start")


def generate_quick_start(tmp_path: Path) -> dict[str, str]:
    """The quick start's proto generated into tmp_path/gen; its code blocks."""
    blocks = quick_start_blocks()
    proto_path = tmp_path / "proto" / "greet" / "v1" / "greet.proto"
    proto_path.parent.mkdir(parents=True)
    proto_path.write_text(blocks["proto"])
    out = tmp_path / "gen"
    out.mkdir()
    generated = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'proto'}", f"-I{ROOT / 'proto'}",
            f"--plugin={Path(sys.executable).parent / 'protoc-gen-python_nats'}", f"--python_nats_out={out}",
            "greet/v1/greet.proto",
        ],
        capture_output=True, text=True,
    )
    assert generated.returncode == 0, generated.stderr
    return blocks


def test_quick_start_runs(tmp_path: Path, nats_server: NatsServer) -> None:
    blocks = generate_quick_start(tmp_path)
    (tmp_path / "quick.py").write_text(blocks["python"].replace("nats://127.0.0.1:4222", nats_server.url))
    ran = subprocess.run([sys.executable, "quick.py"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert "hello you" in ran.stdout and "launch 1" in ran.stdout


def test_testing_example_runs(tmp_path: Path) -> None:
    """The README's service test runs in memory, without a nats-server, on the quick start's code."""
    blocks = generate_quick_start(tmp_path)
    service = blocks["python"].split("async def main", 1)[0]  # the imports and the Greeter class
    script = service + blocks_of("Testing a service")["python"] + "\nimport asyncio\nasyncio.run(test_greeter())\nprint('ok')\n"
    (tmp_path / "example_test.py").write_text(script)
    ran = subprocess.run([sys.executable, "example_test.py"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "ok"
