"""Serving: `serve(nc, impl)` subscribes one endpoint per RPC, registers `$SRV` discovery and runs
every call in its own task, so concurrent streams on one endpoint never wait for each other."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
from collections import Counter
from functools import partial
from typing import Any, Callable, Sequence

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro.service import DEFAULT_QUEUE_GROUP, EndpointStats

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.headers import END_TRUE, REPLY_TO, RETRY, STREAM_COUNT, STREAM_END, caller_headers, error_headers
from ..core.subjects import InboxPolicy, is_literal
from ..features.interceptors import CallInfo, Chain, Interceptor, Side
from ..core.logs import RateLimitedLog
from ..core.recent import RecentReplies
from ..features.persistence import MAX_PENDING_WRITES, Persistence
from ..health.admission import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_LOOP_LAG, Admission, retry_hint
from ..net.transport import NatsTransport, Subscription, Transport, publish_now, subscribe_direct, transport_of
from ..schema.spec import Cardinality, MethodSpec, ServiceSpec
from ..streaming.inbox import V1_BUFFER_BYTES, V1_BUFFER_MESSAGES
from .discovery import Discovery, EndpointRecord
from .policy import DEFAULT_STREAM_IDLE_TIMEOUT, ServingPolicy
from .responder import Responder
from .shapes import RESPONDERS
from .unary import ServedMethod, UnaryCall
from .unary_batch import PROBE_EVERY, UnaryBatch

log = logging.getLogger("betterproto_nats.server")
overloads = RateLimitedLog(log)  # refusals of admission control: at most 10 records a second

DEFAULT_GRACE_PERIOD = 10.0
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


class Endpoint:
    """One RPC's subscription: admits calls and hands each to a responder task."""

    def __init__(self, server: Server, method: MethodSpec[Any, Any], subject: str) -> None:
        self.server = server
        self.method = method
        self.subject = subject
        spec = server.spec
        disabled = spec.queue_group_disabled or method.queue_group_disabled
        self.queue_group = "" if disabled else DEFAULT_QUEUE_GROUP
        if server.queue_group is not None:  # the service's override: "" for none
            self.queue_group = server.queue_group
        self.record = EndpointRecord(
            name=method.endpoint, subject=subject, queue_group=self.queue_group, metadata=method.metadata or None
        )
        self.full_name = spec.full_name(method)
        self.task_name = f"betterproto-nats {self.full_name}"
        self._sub: Subscription | None = None
        self.unary = method.cardinality is Cardinality.UNARY
        self.responder = None if self.unary else RESPONDERS[method.cardinality]
        self.served = ServedMethod(
            server.transport, method, self.full_name, getattr(server.impl, method.py_name), spec.codec, server.policy, self.task_name,
            self.record, self._unary_done, spec.codec.decoder(method.request, self.full_name), self._shed,
            server.admission.max_loop_lag,
        )
        self.calls = server.stream_calls  # the streams in progress (their budget), by task: what `Server.stop` waits for
        self.active = 0  # this endpoint's calls in progress
        self.refused = 0  # calls refused by admission control (limits, load)
        self.retried = 0  # requests a client sent again after a refusal (`Nats-Retry`)
        self._batch: UnaryBatch | None = None  # the unary calls read in this loop turn, until their task starts
        self._calls_wait = False  # a call of its last batch had to wait: each call gets a task at once
        self._since_probe = 0  # calls given a task of their own since a batch last told whether calls wait
        self.new_task: Callable[..., asyncio.Task[None]] = asyncio.create_task  # how a unary call starts (see `start`)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # A unary call's task made directly when the loop has no task factory: `create_task` costs
        # four Python calls on top of the task itself (its checks and the task's name set apart).
        self.new_task = partial(asyncio.Task, loop=loop) if loop.get_task_factory() is None else loop.create_task

        def limit(option: int) -> int | None:
            return 0 if option < 0 else option or None  # nats-py: 0 = no limit; None = its default

        self._sub = await subscribe_direct(  # requests are taken as they are read: no queue or task step each
            self.server.transport,
            self.subject,
            self._on_request,
            queue=self.queue_group,
            pending_msgs_limit=limit(self.method.pending_msg_limit),
            pending_bytes_limit=limit(self.method.pending_bytes_limit),
        )

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.unsubscribe()

    def _on_request(self, msg: Msg) -> None:
        """A request, as it is read: refused at once, or its call started in a task of its own."""
        server = self.server
        record = self.record
        record.num_requests += 1
        if not server.accepting:
            self._refuse(msg, RpcError(ErrorCode.UNAVAILABLE, "the service is stopping", method=self.full_name))
            return
        headers = msg.headers
        if headers is not None and RETRY in headers:  # a client's try after a refusal (from anyone)
            self.retried += 1
            if msg.reply in server.taken:  # ...of a call taken here: it ran or runs, its answer goes to that reply
                return
        unary = self.unary
        refusal = server.admission.refusal(unary, len(server.unary_calls if unary else server.stream_calls), self._typical_call, msg.reply)
        if refusal is not None:
            self.refused += 1
            server.refused[refusal.reason] += 1
            overloads.warning("refusing calls to %s: %s", self.full_name, refusal.message)
            error = Overloaded(refusal.message, retry_after=refusal.retry_after, method=self.full_name, reason=refusal.reason)
            self._refuse(msg, error)
            return
        server.taken.add(msg.reply)
        if self.responder is None:  # it counts itself in STATS and calls `_unary_done` at its end
            call = UnaryCall(self.served, msg)
            server.unary_calls.add(call)
            self.active += 1
            if self._calls_wait:  # a task each, as its calls wait, but now and then one in a batch, to learn again
                self._since_probe += 1
                if self._since_probe < PROBE_EVERY:
                    UnaryBatch(self.new_task, self.task_name, server.unary_tasks, [call], self._batch_waited, alone=True)
                    return
                self._since_probe = 0
                self._batch = None
            batch = self._batch
            if batch is None or batch.started:
                self._batch = UnaryBatch(self.new_task, self.task_name, server.unary_tasks, [call], self._batch_waited)
            else:
                batch.calls.append(call)
            return
        responder = self.responder(server.transport, server.impl, self.method, self.full_name, server.spec.codec, msg, server.policy)
        task = asyncio.create_task(self._serve(responder), name=self.task_name)
        self.calls[task] = responder
        self.active += 1
        task.add_done_callback(self._call_done)

    def _shed(self, call: UnaryCall, kept: float) -> None:
        """A call read in a burst that has kept the loop for `max_loop_lag`: refused before it
        starts, as at admission (running it would make every call wait longer)."""
        call.done()
        self.server.taken.discard(call.msg.reply)
        self.refused += 1
        self.server.refused["loop_lag"] += 1
        message = f"the service is overloaded: the calls read with this one kept its event loop for {kept * 1000:.0f} ms"
        overloads.warning("refusing calls to %s: %s", self.full_name, message)
        self._refuse(call.msg, Overloaded(message, retry_after=retry_hint(2 * kept), method=self.full_name, reason="loop_lag"))

    def _typical_call(self) -> float:
        """Seconds this endpoint's calls took on average (when a refused caller may find a slot)."""
        record = self.record
        finished = record.num_requests - self.active - self.refused
        return record.processing_time / finished / 1e9 if finished > 0 else 0.0

    def _call_done(self, task: asyncio.Task[None]) -> None:
        if self.calls.pop(task, None) is not None:
            self.active -= 1

    def _batch_waited(self, waited: bool) -> None:
        self._calls_wait = waited

    def _unary_done(self, call: UnaryCall) -> None:
        unary_calls = self.server.unary_calls
        if call in unary_calls:
            unary_calls.remove(call)
            self.active -= 1

    async def _serve(self, responder: Responder) -> None:
        started = time.perf_counter_ns()
        code = await responder.run()
        self.record.record(time.perf_counter_ns() - started, code)

    def load(self) -> dict[str, Any]:
        """What `$SRV` STATS reports of this endpoint's admission control and, when it stores its answers,
        of its best-effort writes that failed or were dropped (its `data`)."""
        admission = self.server.admission
        persistence = self.server.persistence
        return {
            "in_progress": self.active,
            "refused": self.refused,
            "retried": self.retried,
            "max_concurrent": admission.max_unary if self.unary else admission.max_streams,
            "loop_lag_ms": round(admission.loop_lag() * 1000, 1),
            "max_loop_lag_ms": None if admission.max_loop_lag is None else round(admission.max_loop_lag * 1000, 1),
            **(persistence.figures(self.full_name) if persistence is not None and self.method.persists else {}),
        }

    def _refuse(self, msg: Msg, error: RpcError) -> None:
        """Refuse a call without starting it: at once when nothing needs awaiting (under load,
        refusals are many), else in a task (interceptors' `refused`, a transport that cannot queue)."""
        self.record.record(0, error.code)
        refusal = self._refusal(msg, error)
        if self.server.policy.interceptors is None and (refusal is None or publish_now(self.server.transport, *refusal)):
            return
        asyncio.get_running_loop().create_task(self._reject(msg, error, refusal), name=f"{self.task_name} refusal")

    def _refusal(self, msg: Msg, error: RpcError) -> tuple[str, bytes, dict[str, str]] | None:
        """Where and what the refusal goes: where the client listens for the answer (a `Reply-To`
        only when it passes the same checks as for a call); None: nowhere."""
        headers = error_headers(error.code, error.message, error.retry_after)
        reply_to = (msg.headers or {}).get(REPLY_TO, "")
        if self.method.cardinality is Cardinality.SERVER_STREAM and reply_to and self.server.policy.reply_to_problem(msg) is None:
            return reply_to, b"", {STREAM_END: END_TRUE, STREAM_COUNT: "0", **headers}
        if msg.reply and is_literal(msg.reply):
            return msg.reply, b"", headers
        return None

    async def _reject(self, msg: Msg, error: RpcError, refusal: tuple[str, bytes, dict[str, str]] | None) -> None:
        chain = self.server.policy.interceptors
        if chain is not None:
            await chain.refused(self._refused_info(msg), error)
        if refusal is None:
            return
        subject, body, headers = refusal
        try:
            await self.server.transport.publish(subject, body, headers=headers)
        except Exception as failed:
            log.warning("could not refuse a call to %s: %s", self.full_name, failed)

    def _refused_info(self, msg: Msg) -> CallInfo:
        method = self.method
        service = self.full_name.rsplit("/", 1)[0]
        return CallInfo(Side.SERVER, service, method.name, method.cardinality, msg.subject, caller_headers(msg.headers), method)


class Server:
    """A running service: its endpoints, discovery and calls in progress."""

    def __init__(
        self,
        nc: NATS | Transport,
        impl: Any,
        *,
        subject_prefix: str | None = None,
        name: str | None = None,
        version: str | None = None,
        max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT,
        max_concurrent_unary: int = DEFAULT_MAX_CONCURRENT,
        max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG,
        max_outbound_bytes: int | None = None,
        grace_period: float = DEFAULT_GRACE_PERIOD,
        stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
        inbox_prefixes: Sequence[str] = (),
        stream_buffer_messages: int = V1_BUFFER_MESSAGES,
        stream_buffer_bytes: int = V1_BUFFER_BYTES,
        expose_errors: bool = False,
        interceptors: Sequence[Interceptor] = (),
        stats_handler: Callable[[EndpointStats], Any] | None = None,
        queue_group: str | None = None,
        persist: bool = True,
        jetstream_domain: str | None = None,
        jetstream_prefix: str | None = None,
        max_pending_writes: int = MAX_PENDING_WRITES,
    ) -> None:
        spec: ServiceSpec | None = getattr(impl, "_nats_service", None)
        if spec is None:
            raise TypeError(f"{type(impl).__name__} is not a generated <Service>NatsBase subclass")
        check_handlers(impl, spec)
        self.nc = nc  # as given: a nats-py connection or a Transport
        self.transport = transport_of(nc)
        self.impl = impl
        self.spec = spec
        self.subject_prefix = subject_prefix or spec.subject_prefix
        self.name = name or spec.name
        self.version = version or spec.version
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"service name {self.name!r} may contain only letters, digits, '-' and '_'")
        if stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be positive")
        self.queue_group = queue_group
        self.max_concurrent_streams = max_concurrent_streams
        self.max_concurrent_unary = max_concurrent_unary
        self.admission = Admission(
            self.transport,
            max_streams=max_concurrent_streams,
            max_unary=max_concurrent_unary,
            max_loop_lag=max_loop_lag,
            max_outbound_bytes=max_outbound_bytes,
        )
        self.refused: Counter[str] = Counter()  # calls refused, by what ran out (Refusal.reason)
        self.taken = RecentReplies()  # the reply subjects of calls taken lately: a retry of one is dropped
        self.grace_period = grace_period
        self.persistence: Persistence | None = None
        if persist and any(m.persists for m in spec.methods):
            if not isinstance(self.transport, NatsTransport):
                raise TypeError(
                    f"{spec.proto_name} stores responses in JetStream ((natsmicro.kv_store) / object_store), which "
                    "needs a nats-py connection; serve(..., persist=False) serves it without storing"
                )
            self.persistence = Persistence(
                self.transport.nc, domain=jetstream_domain, prefix=jetstream_prefix, max_pending=max_pending_writes
            )
        self.policy = ServingPolicy(
            inboxes=InboxPolicy(inbox_prefixes),
            stream_idle_timeout=stream_idle_timeout,
            buffer_messages=stream_buffer_messages,
            buffer_bytes=stream_buffer_bytes,
            expose_errors=expose_errors,
            interceptors=Chain.of(interceptors),
            persistence=self.persistence,
        )
        self.accepting = False
        self.unary_calls: set[UnaryCall] = set()  # in progress (their budget)
        self.unary_tasks: set[asyncio.Task[None]] = set()  # what runs them (`UnaryBatch`): what `stop` waits for
        self.stream_calls: dict[asyncio.Task[None], Responder] = {}
        self.endpoints = [Endpoint(self, m, f"{self.subject_prefix}.{m.endpoint}") for m in spec.methods]
        self.discovery = Discovery(
            nc=self.transport,
            name=self.name,
            version=self.version,
            description=spec.description,
            metadata=spec.metadata,
            endpoints=[e.record for e in self.endpoints],
            stats_handler=stats_handler,
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
        grace = self.grace_period if grace_period is None else grace_period
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
    nc: NATS | Transport,
    impl: Any,
    *,
    subject_prefix: str | None = None,
    name: str | None = None,
    version: str | None = None,
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT,
    max_concurrent_unary: int = DEFAULT_MAX_CONCURRENT,
    max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG,
    max_outbound_bytes: int | None = None,
    grace_period: float = DEFAULT_GRACE_PERIOD,
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT,
    inbox_prefixes: Sequence[str] = (),
    stream_buffer_messages: int = V1_BUFFER_MESSAGES,
    stream_buffer_bytes: int = V1_BUFFER_BYTES,
    expose_errors: bool = False,
    interceptors: Sequence[Interceptor] = (),
    stats_handler: Callable[[EndpointStats], Any] | None = None,
    queue_group: str | None = None,
    persist: bool = True,
    jetstream_domain: str | None = None,
    jetstream_prefix: str | None = None,
    max_pending_writes: int = MAX_PENDING_WRITES,
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
    """
    server = Server(
        nc,
        impl,
        subject_prefix=subject_prefix,
        name=name,
        version=version,
        max_concurrent_streams=max_concurrent_streams,
        max_concurrent_unary=max_concurrent_unary,
        max_loop_lag=max_loop_lag,
        max_outbound_bytes=max_outbound_bytes,
        grace_period=grace_period,
        stream_idle_timeout=stream_idle_timeout,
        inbox_prefixes=inbox_prefixes,
        stream_buffer_messages=stream_buffer_messages,
        stream_buffer_bytes=stream_buffer_bytes,
        expose_errors=expose_errors,
        interceptors=interceptors,
        stats_handler=stats_handler,
        queue_group=queue_group,
        persist=persist,
        jetstream_domain=jetstream_domain,
        jetstream_prefix=jetstream_prefix,
        max_pending_writes=max_pending_writes,
    )
    await server.start()
    return server
