"""Opt-in pytest fixtures for testing services: `pytest_plugins = ["betterproto_nats.pytest_plugin"]`
in a conftest.py. Async fixtures need pytest-asyncio (asyncio_mode = "auto", or mark the tests)."""

from __future__ import annotations

from typing import Iterator

import pytest

from .net.bus import InMemoryBus
from .testing import NatsServer


@pytest.fixture
def nats_bus() -> InMemoryBus:
    """A fresh in-memory NATS: `serve(nats_bus.connect(), impl)`, `Client(nats_bus.connect())`."""
    return InMemoryBus()


@pytest.fixture(scope="session")
def nats_server_url() -> Iterator[str]:
    """A real nats-server on a free loopback port for the whole session (needs the nats-server binary)."""
    with NatsServer() as server:
        yield server.url
