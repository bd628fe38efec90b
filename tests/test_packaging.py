"""Packaging and a user's own project: the wheel carries what users need; installed into a fresh venv it
starts a project (`init`), generates with buf and with protoc, and serves; the plugin helps people."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from betterproto_nats.testing import NatsServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m build`: an sdist, and a wheel built from that sdist (so the sdist must be complete).
    --no-isolation takes setuptools from the dev venv: no network."""
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "Package would be ignored" not in built.stdout + built.stderr
    return out


@pytest.fixture(scope="module")
def wheel(dist: Path) -> Path:
    (path,) = dist.glob("betterproto_nats-*.whl")
    return path


def test_sdist_contents(dist: Path) -> None:
    (sdist,) = dist.glob("betterproto_nats-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
        info = archive.extractfile(next(m for m in archive.getmembers() if m.name.endswith("/PKG-INFO")))
        assert info is not None
        metadata = info.read().decode()
    for required in ("pyproject.toml", "README.md", "CHANGELOG.md", "docs/PROTOCOL.md", "runtime/calling/base.py", "plugin/include/natsmicro/options.proto", "runtime/gateway/page.html"):
        assert required in names, required
    assert not any(name.startswith((".venv/", "gen/", "build/", ".git/")) for name in names)
    for field in ("Requires-Python: >=3.11", "License-Expression: Apache-2.0", "Classifier: Typing :: Typed"):
        assert field in metadata, field
    assert "Project-URL:" in metadata


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "betterproto_nats/_api_v1.py",
        "betterproto_nats/py.typed",
        "betterproto_nats_plugin/adapter.py",
        "betterproto_nats_plugin/templates/nats.py.j2",
        "betterproto_nats_plugin/include/natsmicro/options.proto",
        "betterproto_nats/cli/main.py",
        "betterproto_nats/reflection/catalog.py",
        "betterproto_nats/gateway/app.py",
        "betterproto_nats/gateway/page.html",
    ):
        assert required in names, required
    assert not any(name.startswith(("tests/", "gen/", "bench/")) for name in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "protoc-gen-python_nats = betterproto_nats_plugin.main:main" in text
    assert "betterproto-nats = betterproto_nats.__main__:main" in text
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    runtime = [line for line in requires if "extra ==" not in line]
    assert any("betterproto2[grpclib]~=0.10.0" in line for line in runtime)
    assert not any("betterproto==" in line or "betterproto[" in line for line in requires)  # 2.0.0b7 is gone
    assert not any("compiler" in line for line in runtime)  # the generator's toolchain is an extra
    assert any("compiler" in line and "extra == \"compiler\"" in line for line in requires)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; its dependencies come from the dev venv (a .pth file), so
    no network is needed."""
    folder = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    installed = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    packages = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True, text=True)
    Path(packages.stdout.strip(), "dev-deps.pth").write_text(site.getsitepackages()[0] + "\n")
    return folder


def test_init_generate_and_serve_from_the_wheel(venv: Path, tmp_path: Path, nats_server: NatsServer) -> None:
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    project = tmp_path / "shop"
    started = subprocess.run([python, "-m", "betterproto_nats_plugin", "init", str(project)], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stderr
    assert (project / "proto" / "natsmicro" / "options.proto").is_file()
    assert "strategy: all" in (project / "buf.gen.yaml").read_text()
    (project / "service.py").write_text((project / "service.py").read_text() + "\n# mine\n")
    again = subprocess.run([python, "-m", "betterproto_nats_plugin", "init", str(project)], capture_output=True, text=True, env=env)
    assert "kept" in again.stdout and (project / "service.py").read_text().endswith("# mine\n")  # never overwritten

    generated = subprocess.run(["buf", "generate"], cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert generated.returncode == 0, generated.stderr
    assert "class GreeterNatsClient" in (project / "gen" / "hello" / "v1" / "__init__.py").read_text()
    (project / "gen2").mkdir()  # protoc writes only into folders that exist
    with_protoc = subprocess.run(
        [python, "-m", "grpc_tools.protoc", "-I", "proto", "--python_nats_out=gen2", "proto/hello/v1/hello.proto"],
        cwd=project, capture_output=True, text=True, env=env, timeout=120,
    )
    assert with_protoc.returncode == 0, with_protoc.stderr

    serving = subprocess.Popen(
        [python, "-m", "betterproto_nats", "serve", "service:Greeter", "--url", nats_server.url],
        cwd=project, stderr=subprocess.PIPE, env=env,
    )
    try:
        assert serving.stderr is not None
        assert b"serving Greeter" in serving.stderr.readline()
        call = (
            "import asyncio, nats\n"
            "from gen.hello.v1 import GreeterNatsClient, HelloRequest\n"
            "async def main():\n"
            f"    nc = await nats.connect({nats_server.url!r})\n"
            "    client = GreeterNatsClient(nc)\n"
            "    print((await client.say_hello(HelloRequest(name='ada'), timeout=5)).message)\n"
            "    print([r.message async for r in client.say_hellos(HelloRequest(name='bob'))])\n"
            "    await nc.close()\n"
            "asyncio.run(main())\n"
        )
        ran = subprocess.run([python, "-c", call], cwd=project, capture_output=True, text=True, env=env, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines() == ["hello ada", "['hello bob', 'hi bob', 'hey bob']"]
        # the CLI, from a folder without the generated code: the schema comes from the service
        cli = [str(venv / "bin" / "betterproto-nats"), "-s", nats_server.url, "--wait", "0.5"]
        called = subprocess.run([*cli, "call", "Greeter/SayHello", '{"name": "cy"}'], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
        assert (called.returncode, called.stdout) == (0, '{"message":"hello cy"}\n'), called.stderr
    finally:
        serving.terminate()
        serving.wait(10)


def test_the_plugin_helps_people() -> None:
    plugin = str(Path(sys.executable).parent / "protoc-gen-python_nats")
    helped = subprocess.run([plugin, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "strategy: all" in helped.stdout and "init" in helped.stdout
    version = subprocess.run([plugin, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("protoc-gen-python_nats ")
    without_compiler = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['betterproto2_compiler'] = None; from betterproto_nats_plugin.main import main; main()"],
        input="", capture_output=True, text=True,
    )
    assert without_compiler.returncode == 1 and "pip install 'betterproto-nats[compiler]'" in without_compiler.stderr


def test_the_runtime_imports_without_the_compiler() -> None:
    """The runtime never imports the generator's toolchain, nor betterproto 2.0.0b7."""
    probe = (
        "import sys; [sys.modules.__setitem__(m, None) for m in ('betterproto2_compiler', 'ruff', 'jinja2', 'betterproto')]; "
        "import betterproto_nats, betterproto_nats.testing, betterproto_nats._api_v1, betterproto_nats._api_v2; print('ok')"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert ran.stdout.strip() == "ok", ran.stderr

