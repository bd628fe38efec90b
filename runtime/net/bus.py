"""An in-memory NATS for tests: `InMemoryBus().connect()` gives a `Transport` without a nats-server.

It honours what the runtime relies on: subjects with `*` and `>` wildcards, queue groups (one member
of each group gets a message), headers, no-responders (a `Status: 503` answer to a message with a reply
subject nobody listens on), `max_payload`, and per-subscription order (each subscription delivers in
its own task, one message at a time, like nats-py). Messages are nats-py `Msg` objects.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from typing import Callable

import nats.errors
from nats.aio.msg import Msg

from ..core.headers import NO_RESPONDERS_STATUS, STATUS, message_size
from .transport import MessageHandler, Subscription

log = logging.getLogger("betterproto_nats.bus")

DEFAULT_MAX_PAYLOAD = 1024 * 1024


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS matching: `*` is one token, a final `>` one or more."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


class _BusSubscription:
    def __init__(self, connection: BusConnection, subject: str, queue: str, cb: MessageHandler) -> None:
        self.connection = connection
        self.subject = subject
        self.queue = queue
        self._cb = cb
        self._pending: asyncio.Queue[Msg | None] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._deliver(), name=f"in-memory bus {subject}")

    def put(self, msg: Msg) -> None:
        self._pending.put_nowait(msg)

    @property
    def pending_msgs(self) -> int:
        return self._pending.qsize()

    async def _deliver(self) -> None:
        while True:
            msg = await self._pending.get()
            if msg is None:
                return
            try:
                await self._cb(msg)
            except Exception:
                log.exception("subscription callback for %s failed", self.subject)

    async def unsubscribe(self) -> None:
        self.connection.bus._remove(self)
        self.connection._subs.discard(self)
        self._pending.put_nowait(None)
        if self._task is not asyncio.current_task():
            await asyncio.gather(self._task, return_exceptions=True)


class InMemoryBus:
    """One in-memory NATS server; `connect()` for each party."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._subs: list[_BusSubscription] = []

    def connect(self, inbox_prefix: str = "_INBOX") -> BusConnection:
        return BusConnection(self, inbox_prefix)

    def _add(self, sub: _BusSubscription) -> None:
        self._subs.append(sub)

    def _remove(self, sub: _BusSubscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def _route(self, sender: BusConnection, msg: Msg) -> None:
        plain: list[_BusSubscription] = []
        groups: dict[str, list[_BusSubscription]] = {}
        for sub in self._subs:
            if subject_matches(sub.subject, msg.subject):
                if sub.queue:
                    groups.setdefault(sub.queue, []).append(sub)
                else:
                    plain.append(sub)
        receivers = plain + [random.choice(members) for members in groups.values()]
        for sub in receivers:
            sub.put(msg)
        if not receivers and msg.reply:
            status = Msg(_client=None, subject=msg.reply, headers={STATUS: NO_RESPONDERS_STATUS})  # type: ignore[arg-type]
            for sub in self._subs:  # as nats-server: only to the publisher's own subscriptions
                if sub.connection is sender and subject_matches(sub.subject, msg.reply):
                    sub.put(status)


class BusConnection:
    """A `Transport` on an `InMemoryBus`."""

    def __init__(self, bus: InMemoryBus, inbox_prefix: str = "_INBOX") -> None:
        self.bus = bus
        self.inbox_prefix = inbox_prefix
        self.reconnects = 0
        self.closed = False
        self._subs: set[_BusSubscription] = set()

    @property
    def max_payload(self) -> int:
        return self.bus.max_payload

    def new_inbox(self) -> str:
        return f"{self.inbox_prefix}.{secrets.token_hex(16)}"

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        if self.closed:
            raise nats.errors.ConnectionClosedError
        if not subject or any(c in subject for c in " \t\r\n"):
            raise nats.errors.BadSubjectError
        if message_size(len(payload), headers) > self.bus.max_payload:
            raise nats.errors.MaxPayloadError
        msg = Msg(_client=None, subject=subject, reply=reply, data=bytes(payload), headers=dict(headers) if headers else None)  # type: ignore[arg-type]
        self.bus._route(self, msg)

    async def subscribe(
        self,
        subject: str,
        cb: MessageHandler,
        queue: str = "",
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription:
        if self.closed:
            raise nats.errors.ConnectionClosedError
        sub = _BusSubscription(self, subject, queue, cb)
        self._subs.add(sub)
        self.bus._add(sub)
        return sub

    async def request(
        self, subject: str, payload: bytes, timeout: float | None, headers: dict[str, str] | None = None
    ) -> Msg:
        answer: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def answered(msg: Msg) -> None:
            if not answer.done():
                answer.set_result(msg)

        inbox = self.new_inbox()
        sub = await self.subscribe(inbox, answered)
        try:
            await self.publish(subject, payload, reply=inbox, headers=headers)
            try:
                msg = await asyncio.wait_for(answer, timeout)
            except asyncio.TimeoutError:
                raise nats.errors.TimeoutError from None
        finally:
            await sub.unsubscribe()
        if (msg.headers or {}).get(STATUS) == NO_RESPONDERS_STATUS:
            raise nats.errors.NoRespondersError
        return msg

    async def flush(self) -> bool:
        await asyncio.sleep(0)  # routing is synchronous: everything sent is already delivered to queues
        return not self.closed

    def watch_permissions(self, subject: str, on_denied: Callable[[str], None]) -> None:
        """The bus has no permissions."""

    def forget_permissions(self, subject: str) -> None:
        """The bus has no permissions."""

    async def close(self) -> None:
        self.closed = True
        subs, self._subs = self._subs, set()
        for sub in subs:
            await sub.unsubscribe()
