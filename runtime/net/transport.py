"""What the runtime uses of NATS, as one small interface: `Transport`.

`NatsTransport` implements it on a nats-py connection (with the correctness fixes of `nats_fixes`
and, where nats-py's internals allow, the fast paths of `nats_fast`);
`betterproto_nats.testing.InMemoryBus` implements it in memory, for tests without a nats-server.
`serve()` and generated clients accept a nats-py connection or any `Transport`.
"""

from __future__ import annotations

from functools import partial
from typing import Awaitable, Callable, Protocol, runtime_checkable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from .nats_fast import Requests, deliver_directly, outbound_pending, publish_nowait
from .nats_fixes import PermissionErrors, flush_ordered, guard_reads, new_inbox, unsubscribe_quietly

MessageHandler = Callable[[Msg], Awaitable[None]]


class Subscription(Protocol):
    """Interest in one subject; `unsubscribe` never raises (a closed connection has no interest)."""

    subject: str

    @property
    def pending_msgs(self) -> int:
        """Messages received for this subscription and not yet handed to its callback."""
        ...

    async def unsubscribe(self) -> None: ...


@runtime_checkable
class Transport(Protocol):
    """Publish with headers, subscribe, request, inboxes and limits: all the runtime needs of NATS.

    `request` raises nats-py's `NoRespondersError` / `TimeoutError`, and operations on a closed
    connection raise a `nats.errors.Error`, on every implementation.
    """

    @property
    def max_payload(self) -> int: ...

    @property
    def reconnects(self) -> int:
        """How often the connection was re-established: messages may have been lost each time."""
        ...

    def new_inbox(self) -> str:
        """A fresh subject nobody can guess, under this connection's inbox prefix."""
        ...

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
    ) -> None: ...

    async def subscribe(
        self,
        subject: str,
        cb: MessageHandler,
        queue: str = "",
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription: ...

    async def request(
        self, subject: str, payload: bytes, timeout: float | None, headers: dict[str, str] | None = None
    ) -> Msg: ...

    async def flush(self) -> bool | None:
        """A round trip after everything sent before it (subscriptions included) reached the server.
        When it returns, every message the server had for us before it was received (and queued for
        its subscription). False: the round trip failed (closed, reconnecting, timed out)."""
        ...

    def watch_permissions(self, subject: str, on_denied: Callable[[str], None]) -> None:
        """Call `on_denied(text)` when publishing to or subscribing on `subject` is denied."""
        ...

    def forget_permissions(self, subject: str) -> None: ...


class OutboundBuffer(Protocol):
    """Optional on a `Transport`: what it buffers on its way out (admission control refuses new
    calls while the NATS server or the network does not keep up)."""

    def outbound(self) -> tuple[int, int]:
        """(bytes published and waiting because the network takes no more now, the most the
        transport buffers; 0: unknown)."""
        ...


class NowaitPublisher(Protocol):
    """Optional on a `Transport`: queue a message synchronously (subjects and headers built by the
    runtime), in order with `publish`; False when it cannot, and then `publish` is used."""

    def publish_nowait(self, subject: str, payload: bytes, headers: dict[str, str] | None, reply: str = "") -> bool: ...


class _NatsSubscription:
    def __init__(self, sub: NatsSubscription) -> None:
        self._sub = sub
        self.subject = sub.subject

    @property
    def pending_msgs(self) -> int:
        return self._sub.pending_msgs

    async def unsubscribe(self) -> None:
        await unsubscribe_quietly(self._sub)


class NatsTransport:
    """`Transport` on a nats-py connection."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        guard_reads(nc)  # no message a peer sends can stop this connection's reading
        self._requests: Requests | None = None  # made on the first request (nats-py's response subscription)
        if type(self).publish_nowait is NatsTransport.publish_nowait:  # (a subclass may change what it sends)
            # It runs for every message the runtime sends: nats_fast's function itself, not a method around it.
            self.publish_nowait = partial(publish_nowait, nc)  # type: ignore[method-assign]
        if type(self).outbound is NatsTransport.outbound:  # (asked for every new call a service takes)
            self.outbound = partial(outbound_pending, nc)  # type: ignore[method-assign]

    @property
    def max_payload(self) -> int:
        return self.nc.max_payload

    @property
    def reconnects(self) -> int:
        return int(self.nc.stats["reconnects"])

    @property
    def dropped_messages(self) -> int:
        """Messages dropped because nats-py could not read them (`nats_fixes.ReadGuard`)."""
        guard = getattr(self.nc, "_betterproto_nats_guard", None)
        return guard.dropped if guard is not None else 0

    def new_inbox(self) -> str:
        return new_inbox(self.nc)

    async def publish(
        self, subject: str, payload: bytes = b"", reply: str = "", headers: dict[str, str] | None = None
    ) -> None:
        await self.nc.publish(subject, payload, reply=reply, headers=headers)

    def publish_nowait(self, subject: str, payload: bytes, headers: dict[str, str] | None, reply: str = "") -> bool:
        """Queue a message we built without a coroutine; False when `publish` must be used."""
        return publish_nowait(self.nc, subject, payload, headers, reply)

    def outbound(self) -> tuple[int, int]:
        return outbound_pending(self.nc)

    async def subscribe(
        self,
        subject: str,
        cb: MessageHandler,
        queue: str = "",
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription:
        limits: dict[str, int] = {}
        if pending_msgs_limit is not None:
            limits["pending_msgs_limit"] = pending_msgs_limit
        if pending_bytes_limit is not None:
            limits["pending_bytes_limit"] = pending_bytes_limit
        return _NatsSubscription(await self.nc.subscribe(subject, queue=queue, cb=cb, **limits))  # type: ignore[arg-type]

    async def subscribe_direct(
        self,
        subject: str,
        handler: Callable[[Msg], None],
        queue: str = "",
        pending_msgs_limit: int | None = None,
        pending_bytes_limit: int | None = None,
    ) -> Subscription:
        """A subscription whose messages go to a synchronous `handler` as nats-py reads them
        (`nats_fast.DirectDelivery`), or through its callback where that cannot be done."""

        async def cb(msg: Msg) -> None:
            handler(msg)

        sub = await self.subscribe(subject, cb, queue, pending_msgs_limit, pending_bytes_limit)
        if type(self).subscribe is NatsTransport.subscribe and isinstance(sub, _NatsSubscription):
            deliver_directly(sub._sub, handler)  # (a subclass that changes what arrives gets it through `cb`)
        return sub

    async def request(
        self, subject: str, payload: bytes, timeout: float | None, headers: dict[str, str] | None = None
    ) -> Msg:
        requests = self._requests
        if requests is None:
            requests = self._requests = Requests.of(self.nc)
            if requests.usable and type(self).request is NatsTransport.request:
                self.request = requests.request  # type: ignore[method-assign]  # later calls: one coroutine less
        if requests.usable:
            return await requests.request(subject, payload, timeout, headers)
        return await self.nc.request(subject, payload, timeout=timeout, headers=headers)  # type: ignore[arg-type]  # None: no timeout

    def requests(self) -> Requests | None:
        """The connection's requests on nats-py's response subscription, where they can be sent
        again to the same reply subject (`Requests.listen`); None when nats-py does not allow it."""
        requests = self._requests or Requests.of(self.nc)
        return requests if requests.usable and requests.prefix else None

    async def flush(self) -> bool:
        return await flush_ordered(self.nc)

    def watch_permissions(self, subject: str, on_denied: Callable[[str], None]) -> None:
        PermissionErrors.of(self.nc).watch(subject, on_denied)

    def forget_permissions(self, subject: str) -> None:
        PermissionErrors.of(self.nc).forget(subject)


async def subscribe_direct(
    nc: Transport,
    subject: str,
    handler: Callable[[Msg], None],
    queue: str = "",
    pending_msgs_limit: int | None = None,
    pending_bytes_limit: int | None = None,
) -> Subscription:
    """A subscription for a synchronous `handler` that only hands messages on: straight from the
    transport's reader where it can (`NatsTransport.subscribe_direct`), else through a callback."""
    direct = getattr(nc, "subscribe_direct", None)
    if direct is not None:
        return await direct(subject, handler, queue, pending_msgs_limit, pending_bytes_limit)  # type: ignore[no-any-return]

    async def cb(msg: Msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, cb, queue, pending_msgs_limit, pending_bytes_limit)


def outbound_backlog(nc: Transport) -> tuple[int, int]:
    """(bytes waiting to be written, the transport's buffer size): (0, 0) when it cannot tell."""
    outbound = getattr(nc, "outbound", None)
    return outbound() if outbound is not None else (0, 0)


def publish_now(nc: Transport, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> bool:
    """Queue a message the runtime built (subject and headers checked or ours) without a coroutine,
    when the transport can (`NowaitPublisher`); False: nothing was done, use `publish`."""
    nowait = getattr(nc, "publish_nowait", None)
    return nowait is not None and bool(nowait(subject, payload, headers, reply))


async def publish(nc: Transport, subject: str, payload: bytes, headers: dict[str, str] | None = None, reply: str = "") -> None:
    """Publish a message the runtime built: `publish_now` when it can, else the transport's `publish`."""
    if not publish_now(nc, subject, payload, headers, reply):
        await nc.publish(subject, payload, reply=reply, headers=headers)


def transport_of(connection: NATS | Transport) -> Transport:
    """The `Transport` for a nats-py connection (one per connection) or a `Transport` as it is."""
    if isinstance(connection, NATS):
        transport: NatsTransport | None = getattr(connection, "_betterproto_nats_transport", None)
        if transport is None:
            transport = NatsTransport(connection)
            connection._betterproto_nats_transport = transport  # type: ignore[attr-defined]
        return transport
    if isinstance(connection, Transport):
        return connection
    raise TypeError(f"expected a nats-py connection or a betterproto_nats Transport, not {type(connection).__name__}")
