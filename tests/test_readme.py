"""The README's quick start works as written: its proto generates and its Python runs, and its shell
lines, run as written in a fresh venv and folder, install from a checkout, generate, serve and call."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from betterproto_nats.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent
# The README's stand-in for the path of the user's checkout: the one thing a reader replaces.
CHECKOUT = "/path/to/betterproto-nats"


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


def saved_as(code: str) -> str:
    """The file a code block is to be saved as, from its first line's comment (`// x.proto`, `# x.py`)."""
    first = code.splitlines()[0]
    match = re.fullmatch(r"(?://|#) (\S+)", first)
    assert match, f"the block's first line should name its file: {first!r}"
    return match.group(1)


def clean_copy_of_checkout(dest: Path) -> Path:
    """What a fresh clone holds: the checkout without venvs, generated code or build output (pip builds
    in the tree it is given, so the working checkout is left alone)."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "gen", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".hypothesis"
    )
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def free_port() -> int:
    """A loopback port nobody listens on now (the README's nats-server must not meet another's 4222)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fresh_machine_env(tmp_path: Path) -> dict[str, str]:
    """A shell as on a machine with only Python 3.11+: `python3` (this interpreter's base, not its venv)
    and the system's /usr/bin:/bin on PATH, no venv active, no PYTHONPATH; pip's own settings are kept."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "python3").symlink_to(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PATH"] = os.pathsep.join([str(shims), "/usr/bin", "/bin"])
    return env


def test_every_extra_installs_as_the_readme_says() -> None:
    """Each extra is shown installed from the checkout, the published form appears once (what changes on
    release), and the wheel the quick start names is the one `make dist` builds now."""
    readme = (ROOT / "README.md").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in set(project["optional-dependencies"]) - {"dev"}:
        assert f"{CHECKOUT}[{extra}]" in readme, f"the README should show the {extra} extra installed from {CHECKOUT}"
    assert len(re.findall(r"pip install '?betterproto-nats\b", readme)) == 1, "only the once-published note may name the index"
    assert f"betterproto_nats-{project['version']}-py3-none-any.whl" in readme


@pytest.mark.timeout(300)
def test_quick_start_shell_lines_as_written(tmp_path: Path) -> None:
    """The quick start word for word in a fresh venv and an empty folder: the README's files saved where
    their comments say, its shell lines run in one bash. Only the checkout's path is replaced (by a clean
    copy of this one) and, so as not to meet another server on 4222, the nats-server's port (a free
    loopback port, also in quick.py); the harness waits for that port before the next line."""
    blocks = quick_start_blocks()
    lines = [line for line in blocks["sh"].splitlines() if line.strip()]
    assert any(CHECKOUT in line for line in lines), f"the install line should name {CHECKOUT}"
    checkout = clean_copy_of_checkout(tmp_path / "betterproto-nats")
    port = free_port()
    url = f"nats://127.0.0.1:{port}"

    project = tmp_path / "greet"
    project.mkdir()
    for lang in ("proto", "python"):
        target = project / saved_as(blocks[lang])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(blocks[lang].replace("nats://127.0.0.1:4222", url))

    script = ["set -e", "trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for line in lines:
        line = line.replace(CHECKOUT, str(checkout))
        if line.startswith("nats-server &"):
            script.append(line.replace("nats-server &", f"nats-server -a 127.0.0.1 -p {port} &", 1))
            script.append(f"for _ in $(seq 200); do (: </dev/tcp/127.0.0.1/{port}) 2>/dev/null && break; sleep 0.05; done")
        else:
            script.append(line)
    assert sum(line.startswith("nats-server -a 127.0.0.1") for line in script) == 1, "the README should start `nats-server &`"

    shell = subprocess.Popen(
        ["bash", "-c", "\n".join(script)], cwd=project, env=fresh_machine_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = shell.communicate(timeout=240)
    finally:
        try:
            os.killpg(shell.pid, signal.SIGKILL)  # the backgrounded nats-server too, whatever happened
        except ProcessLookupError:
            pass
        shell.wait(10)
    assert shell.returncode == 0, out[-3000:] + err[-3000:]
    printed = ["Hello(name='hello you')", "launch 3", "launch 2", "launch 1"]
    assert out.splitlines()[-4:] == printed, out[-3000:] + err[-3000:]
    run_line = next(line for line in lines if line.startswith("python quick.py"))
    assert all(text in run_line for text in printed), "the README's comment should say what quick.py prints"
    where = subprocess.run(
        [str(project / ".venv" / "bin" / "python"), "-c", "import betterproto_nats; print(betterproto_nats.__file__)"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"},
    )
    assert where.stdout.startswith(str(project / ".venv")), where.stdout + where.stderr  # installed, not borrowed
    shutil.rmtree(project / ".venv")  # about 60 MB; kept when the test fails, for a look
