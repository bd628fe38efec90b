"""Serving: `serve(nc, impl)` subscribes one endpoint per RPC (`endpoint.py`), registers `$SRV`
discovery and stops gracefully; the server holds what its endpoints share (admission, the calls in
progress, persistence)."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections import Counter
from typing import Any, Unpack

from nats.aio.client import Client as NATS

from ..core.recent import RecentReplies
from ..core.subjects import InboxPolicy
from ..features.interceptors import Chain
from ..features.persistence import Persistence
from ..health.admission import Admission
from ..net.transport import NatsTransport, Transport, transport_of
from ..schema import descriptors
from ..schema.spec import ServiceSpec
from .discovery import Discovery
from .endpoint import Endpoint
from .options import ServeKeywords, ServeOptions
from .policy import ServingPolicy
from .responder import Responder
from .unary import UnaryCall

# At stop(), a stream waiting for a client that sent nothing for this long ends at once.
STOP_QUIET = 0.5
_NAME = re.compile(r"[A-Za-z0-9\-_]+")  # used with fullmatch (a `$` anchor passes "name\n")


def check_handlers(impl: Any, spec: ServiceSpec) -> None:
    """Each handler is what its RPC shape needs, checked once when serving starts rather than at the
    first call: a TypeError that names the handler and says what it must be."""
    if isinstance(impl, type):
        raise TypeError(f"serve() needs an instance, not the class {impl.__name__}: serve(nc, {impl.__name__}())")
    for method in spec.methods:
        where = f"{type(impl).__name__}.{method.py_name}"
        handler = getattr(impl, method.py_name, None)
        if not callable(handler):
            raise TypeError(f"{where} is not a method")
        if method.cardinality.server_streams:
            if not inspect.isasyncgenfunction(handler):
                raise TypeError(f"{where} serves a stream: it must be an `async def` that yields its responses")
        elif not inspect.iscoroutinefunction(handler):
            raise TypeError(f"{where} must be an `async def` that returns one {method.response.__name__}")


class Server:
    """A running service, configured by one `ServeOptions`: its endpoints (an `Endpoint` per RPC), `$SRV`
    discovery, and what the endpoints share (admission, the calls in progress, persistence)."""

    def __init__(self, nc: NATS | Transport, impl: Any, options: ServeOptions | None = None) -> None:
        options = options or ServeOptions()
        spec: ServiceSpec | None = getattr(impl, "_nats_service", None)
        if spec is None:
            raise TypeError(f"{type(impl).__name__} is not a generated <Service>NatsBase subclass")
        check_handlers(impl, spec)
        self.nc = nc  # as given: a nats-py connection or a Transport
        self.transport = transport_of(nc)
        self.impl = impl
        self.spec = spec
        self.options = options
        self.subject_prefix = options.subject_prefix or spec.subject_prefix
        self.name = options.name or spec.name
        self.version = options.version or spec.version
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"service name {self.name!r} may contain only letters, digits, '-' and '_'")
        self.admission = Admission(
            self.transport,
            max_streams=options.max_concurrent_streams,
            max_unary=options.max_concurrent_unary,
            max_loop_lag=options.max_loop_lag,
            max_outbound_bytes=options.max_outbound_bytes,
        )
        self.refused: Counter[str] = Counter()  # calls refused, by what ran out (Refusal.reason)
        self.taken = RecentReplies()  # the reply subjects of calls taken lately: a retry of one is dropped
        self.persistence: Persistence | None = None
        if options.persist and any(m.persists for m in spec.methods):
            if not isinstance(self.transport, NatsTransport):
                raise TypeError(
                    f"{spec.proto_name} stores responses in JetStream ((natsmicro.kv_store) / object_store), which "
                    "needs a nats-py connection; serve(..., persist=False) serves it without storing"
                )
            self.persistence = Persistence(
                self.transport.nc,
                domain=options.jetstream_domain,
                prefix=options.jetstream_prefix,
                max_pending=options.max_pending_writes,
            )
        self.policy = ServingPolicy(
            inboxes=InboxPolicy(options.inbox_prefixes),
            stream_idle_timeout=options.stream_idle_timeout,
            buffer_messages=options.stream_buffer_messages,
            buffer_bytes=options.stream_buffer_bytes,
            expose_errors=options.expose_errors,
            interceptors=Chain.of(options.interceptors),
            persistence=self.persistence,
        )
        self.accepting = False
        self.unary_calls: set[UnaryCall] = set()  # in progress (their budget)
        self.unary_tasks: set[asyncio.Task[None]] = set()  # what runs them (`UnaryBatch`): what `stop` waits for
        self.stream_calls: dict[asyncio.Task[None], Responder] = {}
        self.endpoints = [Endpoint(self, m, f"{self.subject_prefix}.{m.endpoint}") for m in spec.methods]
        schema = descriptors.schema_bytes(spec.schema) if options.reflection else b""
        schema_digest = ""
        if schema:  # what the CLI and gateways read: each endpoint's method, shape and types
            types = descriptors.method_types(schema, spec.proto_name)
            schema_digest = descriptors.digest(schema)
            for endpoint in self.endpoints:
                reflected = descriptors.endpoint_metadata(spec, endpoint.method, types, schema_digest)
                if reflected:
                    endpoint.record.metadata = {**(endpoint.record.metadata or {}), **reflected}
        self.discovery = Discovery(
            nc=self.transport,
            schema=schema,
            schema_digest=schema_digest,
            name=self.name,
            version=self.version,
            description=spec.description,
            metadata=spec.metadata,
            endpoints=[e.record for e in self.endpoints],
            stats_handler=options.stats_handler,
            load={e.record.name: e.load for e in self.endpoints},
        )

    @property
    def calls(self) -> set[asyncio.Task[None]]:
        """The tasks of the calls in progress (unary calls' batches, streams)."""
        return {*self.unary_tasks, *self.stream_calls}

    @property
    def id(self) -> str:
        """This instance's `$SRV` id."""
        return self.discovery.id

    async def start(self) -> None:
        if self.persistence is not None:  # before any subscription: a service that cannot store does not start
            await self.persistence.check(self.spec)
        self.accepting = True
        self.admission.start()
        for endpoint in self.endpoints:
            await endpoint.start()
        await self.discovery.start()
        await self.transport.flush()  # the NATS server holds every subscription before we return

    async def stop(self, grace_period: float | None = None) -> None:
        """Stop taking calls, let running ones finish within the grace period, cancel the rest."""
        self.accepting = False
        for endpoint in self.endpoints:
            await endpoint.stop()
        await self.transport.flush()  # the NATS server has dropped our interest: no new call arrives
        grace = self.options.grace_period if grace_period is None else grace_period
        for responder in self.stream_calls.values():
            responder.end_idle(STOP_QUIET)  # streams waiting on a silent client do not hold us up
        if self.calls:
            _, pending = await asyncio.wait(set(self.calls), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            for endpoint in self.endpoints:  # a task cancelled before it ran never told its endpoint
                if endpoint.unary:
                    continue  # (a unary batch's task tells it when it ends: `UnaryBatch`)
                for task in [task for task in endpoint.calls if task.done()]:
                    endpoint._call_done(task)
        if self.persistence is not None:  # background writes of answered calls, bounded by the grace too
            await self.persistence.close(grace)
        await self.discovery.stop()
        self.admission.stop()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()



async def serve(
    nc: NATS | Transport, impl: Any, *, options: ServeOptions | None = None, **keywords: Unpack[ServeKeywords]
) -> Server:
    """Serve `impl` (a `<Service>NatsBase` subclass instance) on `nc` until `await server.stop()`.

    Streams and unary calls are admitted up to their own limits, and only while the event loop runs
    at most `max_loop_lag` seconds behind (None: no such limit) and the connection's outgoing buffer
    holds at most `max_outbound_bytes` (None: half of nats-py's `pending_size`; 0: no limit); a call
    refused for any of these gets RESOURCE_EXHAUSTED with a retry hint (`betterproto_nats.Overloaded`
    on our clients) and never started. Calls already accepted are never ended for load. A stream that hears nothing from
    its client for `stream_idle_timeout` seconds ends (DEADLINE_EXCEEDED). Clients' stream inboxes
    must start with `_INBOX.`, the first token of the request's reply subject, or one of
    `inbox_prefixes`. A client without flow control (v1) may make the service buffer at most
    `stream_buffer_messages` / `stream_buffer_bytes` per stream. Unexpected handler exceptions
    reach callers as INTERNAL "internal error" unless `expose_errors` (for development).
    `interceptors` run around every call, in the order given (`betterproto_nats.Interceptor`);
    `stats_handler(endpoint_stats)` gives each endpoint's `data` in `$SRV` STATS, as in nats.micro;
    `queue_group` overrides every endpoint's queue group ("" for none).
    Methods with `(natsmicro.kv_store)` / `object_store` store their responses in JetStream (through
    `jetstream_domain` or `jetstream_prefix` when given); serving fails with `JetStreamUnavailable` when
    JetStream does not answer. At most `max_pending_writes` best-effort writes wait at a time (more are
    dropped and logged); `persist=False` serves without storing anything.

    The options may come as one `ServeOptions` (`options=`), shared by many services; keyword
    arguments given as well override its fields.
    """
    server = Server(nc, impl, (options or ServeOptions()).updated(keywords))
    await server.start()
    return server
