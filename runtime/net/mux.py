"""A connection's stream inboxes on one subscription: `InboxMux`.

Every inbox the runtime receives on (a stream's `R` or `S`, a control inbox, the shared-liveness
subjects of `peers.py`) is `<base>.<128 random bits>` under one wildcard subscription `<base>.>` per
connection, and a message goes to the handler registered for its exact subject. A nats-py
subscription costs a queue, an event and a task (about 4 KiB); a registered inbox costs a dictionary
entry. Names stay unguessable (`docs/SECURITY.md`): the random part is per inbox.

What it changes on the wire: interest in an inbox exists as long as the connection has any inbox at
all, so a message to an inbox that was already let go of is dropped here rather than answered with
no-responders by the NATS server (when the whole connection is gone, it still is).

It also knows how far this side has read (`progress`, `catch_up`): a peer is judged silent only
against what we have read, never because our own loop or socket fell behind (docs/DESIGN.md,
"Liveness under load").
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Awaitable, Callable, ClassVar, Sequence

from nats.aio.msg import Msg

from .transport import Subscription, Transport, subscribe_direct

Handler = Callable[[Msg], None]
# nats-py's queue for the shared subscription, at most (beyond it nats-py drops: a slow consumer).
async def let_go(steps: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Await each release step in turn. Cancelled on the way (a service stopping without grace),
    the steps not yet taken still run, in a task of their own: a call never keeps what it held."""
    for index, step in enumerate(steps):
        try:
            await step()
        except asyncio.CancelledError:
            rest = steps[index + 1 :]
            if rest:
                asyncio.get_running_loop().create_task(let_go(rest), name="betterproto-nats release")
            raise


MUX_PENDING_MESSAGES = 1_000_000
MUX_PENDING_BYTES = 512 * 1024 * 1024


class InboxMux:
    """The inboxes of one connection (see the module): `InboxMux.of(nc)`, then `reserve` a subject,
    `open` it with a handler (subscribed by then), `release` it; the last release unsubscribes."""

    _muxes: ClassVar[dict[int, InboxMux]] = {}  # by id() of the transport, while in use

    def __init__(self, nc: Transport) -> None:
        self.nc = nc
        self.loop = asyncio.get_running_loop()
        self.base = nc.new_inbox()
        self.handlers: dict[str, Handler] = {}
        self.users = 0  # reserved subjects not yet released
        self.closed = False
        self._sub: Subscription | None = None
        self._opening: asyncio.Task[None] | None = None
        self.delivered = 0  # messages handed to handlers (or dropped: no handler), in arrival order
        # Everything the NATS server had for this connection before this loop time has been handed
        # to the handlers (a round trip after it came back, and the subscription's queue was read).
        self.progress = self.loop.time()
        self._catching_up: asyncio.Task[None] | None = None
        self._then: list[Callable[[bool], None]] = []  # called when the round under way is over
        self._target = 0  # the round waits until `delivered` reaches this
        self._reached: asyncio.Future[None] | None = None

    @classmethod
    def of(cls, nc: Transport) -> InboxMux:
        """The connection's mux (a new one when it has none in use)."""
        mux = cls._muxes.get(id(nc))
        if mux is None or mux.closed or mux.nc is not nc or mux.loop is not asyncio.get_running_loop():
            mux = cls._muxes[id(nc)] = cls(nc)
        return mux

    @classmethod
    def owns(cls, nc: Transport, subject: str) -> bool:
        """Whether `subject` is one of `nc`'s own inboxes (under the base of its mux in use): a peer
        that names one as its own (a liveness subject a client learned from a handshake) names us,
        and our own messages there must never count as word from a peer."""
        mux = cls._muxes.get(id(nc))
        return mux is not None and not mux.closed and mux.nc is nc and subject.startswith(mux.base + ".")

    def reserve(self) -> str:
        """A new inbox subject; the mux stays until it is released."""
        self.users += 1
        return f"{self.base}.{secrets.token_hex(16)}"

    def add(self, subject: str, handler: Handler) -> None:
        """Deliver what arrives on `subject` (reserved here) to `handler` (once subscribed: `open`)."""
        self.handlers[subject] = handler

    async def open(self, subject: str, handler: Handler) -> None:
        """`add`, and return once the subscription exists (the first inbox makes it, all share it)."""
        self.handlers[subject] = handler
        if self._opening is None:
            self._opening = self.loop.create_task(self._subscribe(), name="betterproto-nats inboxes")
        await asyncio.shield(self._opening)

    async def _subscribe(self) -> None:
        # Handlers only queue (bounded per stream by its window or buffer), so nats-py's queue in front
        # of them stays short; its limits are a last bound (a loop starved for seconds), not flow control.
        self._sub = await subscribe_direct(
            self.nc, f"{self.base}.>", self._deliver, pending_msgs_limit=MUX_PENDING_MESSAGES, pending_bytes_limit=MUX_PENDING_BYTES
        )

    def _deliver(self, msg: Msg) -> None:
        handler = self.handlers.get(msg.subject)
        if handler is not None:
            handler(msg)
        self.delivered += 1
        reached = self._reached
        if reached is not None and self.delivered >= self._target and not reached.done():
            reached.set_result(None)

    # --- How far we have read ---------------------------------------------------------------------

    def catch_up(self, then: Callable[[bool], None]) -> None:
        """Read everything the NATS server has for this connection now, then advance `progress` and
        call `then(True)`; `then(False)` when the round failed (closed, reconnecting: `progress`
        stays). One round at a time: a caller that needs a later one asks again from `then`."""
        self._then.append(then)
        if self._catching_up is None and not self.closed:
            self._catching_up = self.loop.create_task(self._catch_up(), name="betterproto-nats catch up")

    async def _catch_up(self) -> None:
        """A round trip to the NATS server (its PONG follows every message it sent us before), then
        wait until the shared subscription has handed on what was queued by then."""
        started = self.loop.time()
        caught_up = False
        try:
            if await self.nc.flush() is False:
                return  # closed or reconnecting: nothing can be judged from here
            sub = self._sub
            if sub is not None:
                self._target = self.delivered + sub.pending_msgs
                if self.delivered < self._target:
                    self._reached = self.loop.create_future()
                    await self._reached
            if started > self.progress:
                self.progress = started
            caught_up = True
        finally:
            self._catching_up = self._reached = None
            then, self._then = self._then, []
            for callback in then:
                callback(caught_up)

    async def release(self, subject: str) -> None:
        """`subject` is done with (reserved, opened or not); the last one closes the subscription."""
        if self._drop(subject):
            await self.close()

    def discard(self, subject: str) -> None:
        """`release` from synchronous code (closing, if it was the last, in a task of its own)."""
        if self._drop(subject):
            self.loop.create_task(self.close(), name="betterproto-nats inboxes close")

    def _drop(self, subject: str) -> bool:
        self.handlers.pop(subject, None)
        self.users -= 1
        return self.users <= 0 and not self.closed

    async def close(self) -> None:
        """Unsubscribe (idempotent); inboxes still registered hear nothing more. Cancelled on the
        way, the unsubscription still happens (shielded): once closed, this mux is no longer found by
        `of`, so an interrupted close would leave its subscription behind for good."""
        self.closed = True
        if self._muxes.get(id(self.nc)) is self:
            del self._muxes[id(self.nc)]
        if self._catching_up is not None:
            self._catching_up.cancel()
        await asyncio.shield(self._unsubscribe())

    async def _unsubscribe(self) -> None:
        if self._opening is not None:
            await asyncio.gather(self._opening, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()
