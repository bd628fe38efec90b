"""A raw nats-py peer for conformance tests: collects what arrives on a subject, exactly as sent."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from betterproto_nats.net.nats_fixes import flush_ordered


# Every header name the protocol (ours, the Go project's, NATS's status) reads: what attackers forge.
PROTOCOL_NAMES = [
    "Reply-To",
    "Nats-Stream-Inbox",
    "Nats-Stream-Seq",
    "Nats-Stream-End",
    "Nats-Stream-Count",
    "Nats-Stream-Version",
    "Nats-Stream-Window",
    "Nats-Stream-Window-Bytes",
    "Nats-Stream-Batch",
    "Nats-Stream-Sent",
    "Nats-Stream-Peer",
    "Nats-Stream-Ack",
    "Nats-Stream-Heartbeat",
    "Nats-Stream-Cancel",
    "Nats-Deadline",
    "Nats-Service-Error-Code",
    "Nats-Service-Error",
    "Status",
    "Description",
]


# Headers a raw peer drops from what it receives, as a Go peer ignores them (set while tracing is on).
IGNORED_HEADERS: set[str] = set()


def as_go_sees_it(msg: Msg) -> Msg:
    """`msg` without the headers a Go peer ignores (trace context)."""
    if IGNORED_HEADERS and msg.headers:
        msg.headers = {k: v for k, v in msg.headers.items() if k not in IGNORED_HEADERS} or None
    return msg


class Collector:
    """Subscribe first, then `await next()` each message (bounded by a timeout)."""

    def __init__(self, nc: NATS, subject: str | None = None) -> None:
        self.nc = nc
        self.subject = subject or nc.new_inbox()
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Subscription | None = None

    async def __aenter__(self) -> Collector:
        self.sub = await self.nc.subscribe(self.subject, cb=self._put)
        await flush_ordered(self.nc)
        return self

    async def _put(self, msg: Msg) -> None:
        self.queue.put_nowait(as_go_sees_it(msg))

    async def next(self, timeout: float = 5.0) -> Msg:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def __aexit__(self, *exc: object) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()
