"""NATS topologies on loopback for tests: two clusters joined by gateways (a supercluster), and a leaf
node on a hub. Each server runs from a config file in a temporary folder."""

from __future__ import annotations

import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from betterproto_nats.testing import NatsServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server(folder: Path, name: str, config: str) -> NatsServer:
    path = folder / f"{name}.conf"
    path.write_text(f'server_name: {name}\n{config}')
    return NatsServer(extra_args=["-c", str(path)]).start()


@contextmanager
def supercluster() -> Iterator[tuple[NatsServer, NatsServer]]:
    """Servers A and B, each its own cluster, joined by gateways (interest-only across them)."""
    folder = Path(tempfile.mkdtemp(prefix="nats-gw-"))
    ports = {"A": free_port(), "B": free_port()}
    gateways = ", ".join(f'{{name: {n}, url: "nats://127.0.0.1:{p}"}}' for n, p in ports.items())
    servers: list[NatsServer] = []
    try:
        for name, port in ports.items():
            servers.append(_server(folder, name, f'gateway {{ name: {name}, listen: "127.0.0.1:{port}", gateways: [{gateways}] }}\n'))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.__exit__()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def leaf_node() -> Iterator[tuple[NatsServer, NatsServer]]:
    """A hub and a leaf node connected to it."""
    folder = Path(tempfile.mkdtemp(prefix="nats-leaf-"))
    port = free_port()
    servers: list[NatsServer] = []
    try:
        servers.append(_server(folder, "hub", f'leafnodes {{ listen: "127.0.0.1:{port}" }}\n'))
        servers.append(_server(folder, "leaf", f'leafnodes {{ remotes: [{{ url: "nats://127.0.0.1:{port}" }}] }}\n'))
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.__exit__()
        shutil.rmtree(folder, ignore_errors=True)
