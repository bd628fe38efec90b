"""NATS topologies on loopback for tests: two clusters joined by gateways (a supercluster), a leaf
node on a hub, and a cluster of routed nodes. Each server runs from a config file in a temporary
folder."""

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


@contextmanager
def _servers(prefix: str, configs: dict[str, str]) -> Iterator[list[NatsServer]]:
    """One server per `name: config`, started in that order; all stopped and removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    servers: list[NatsServer] = []
    try:
        for name, config in configs.items():
            path = folder / f"{name}.conf"
            path.write_text(f"server_name: {name}\n{config}")
            servers.append(NatsServer(extra_args=["-c", str(path)]).start())
        yield servers
    finally:
        for server in servers:
            server.__exit__()
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def supercluster() -> Iterator[tuple[NatsServer, NatsServer]]:
    """Servers A and B, each its own cluster, joined by gateways (interest-only across them)."""
    ports = {"A": free_port(), "B": free_port()}
    gateways = ", ".join(f'{{name: {n}, url: "nats://127.0.0.1:{p}"}}' for n, p in ports.items())
    configs = {n: f'gateway {{ name: {n}, listen: "127.0.0.1:{p}", gateways: [{gateways}] }}\n' for n, p in ports.items()}
    with _servers("nats-gw-", configs) as (a, b):
        yield a, b


@contextmanager
def leaf_node() -> Iterator[tuple[NatsServer, NatsServer]]:
    """A hub and a leaf node connected to it."""
    port = free_port()
    configs = {
        "hub": f'leafnodes {{ listen: "127.0.0.1:{port}" }}\n',
        "leaf": f'leafnodes {{ remotes: [{{ url: "nats://127.0.0.1:{port}" }}] }}\n',
    }
    with _servers("nats-leaf-", configs) as (hub, leaf):
        yield hub, leaf


@contextmanager
def cluster(size: int = 3) -> Iterator[list[NatsServer]]:
    """`size` nodes of one cluster C, each with routes to all the others (a full mesh, so that any
    node can be killed and the rest stay connected)."""
    ports = {f"N{i}": free_port() for i in range(size)}
    routes = ", ".join(f'"nats://127.0.0.1:{p}"' for p in ports.values())
    configs = {n: f'cluster {{ name: C, listen: "127.0.0.1:{p}", routes: [{routes}] }}\n' for n, p in ports.items()}
    with _servers("nats-cluster-", configs) as nodes:
        yield nodes
