"""The wheel carries what users need: both packages, the template, options.proto, the plugin command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contents(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stderr
    assert "Package would be ignored" not in built.stderr
    (wheel,) = tmp_path.glob("betterproto_nats-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "betterproto_nats/_api_v1.py",
        "betterproto_nats/py.typed",
        "betterproto_nats_plugin/adapter.py",
        "betterproto_nats_plugin/templates/nats.py.j2",
        "betterproto_nats_plugin/include/natsmicro/options.proto",
    ):
        assert required in names, required
    assert not any(name.startswith(("tests/", "gen/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "protoc-gen-python_nats = betterproto_nats_plugin.main:main" in text
