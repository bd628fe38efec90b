"""An RPC's endpoint: its subscription, the admission check of every request as it is read, and the
start of each admitted call (a task per stream, unary calls in batches); refusals answered at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from functools import partial
from typing import Any, Callable, Protocol

from nats.aio.msg import Msg
from nats.micro.service import DEFAULT_QUEUE_GROUP

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.headers import REPLY_TO, RETRY, caller_headers, error_headers
from ..core.logs import RateLimitedLog
from ..core.recent import RecentReplies
from ..core.sender import refused_end
from ..core.subjects import is_literal
from ..features.interceptors import CallInfo, Side
from ..features.persistence import Persistence
from ..health.admission import Admission, Refusal, retry_hint
from ..net.transport import Subscription, Transport, publish_now, subscribe_direct
from ..schema.spec import Cardinality, MethodSpec, ServiceSpec
from .discovery import EndpointRecord
from .options import ServeOptions
from .policy import ServingPolicy
from .responder import Responder
from .shapes import SHAPES
from .unary import ServedMethod, UnaryCall
from .unary_batch import PROBE_EVERY, UnaryBatch

class EndpointHost(Protocol):
    """What an endpoint reads and counts of its server (`Server`): the service, its limits and the
    calls in progress that every endpoint shares."""

    transport: Transport
    impl: Any
    spec: ServiceSpec
    options: ServeOptions
    policy: ServingPolicy
    admission: Admission
    persistence: Persistence | None
    accepting: bool
    refused: Counter[str]
    taken: RecentReplies
    unary_calls: set[UnaryCall]
    unary_tasks: set[asyncio.Task[None]]
    stream_calls: dict[asyncio.Task[None], Responder]

log = logging.getLogger("betterproto_nats.server")
overloads = RateLimitedLog(log)  # refusals of admission control: at most 10 records a second


class Endpoint:
    """One RPC's subscription: admits calls and hands each to a responder task."""

    def __init__(self, server: EndpointHost, method: MethodSpec[Any, Any], subject: str) -> None:
        self.server = server
        self.method = method
        self.subject = subject
        spec = server.spec
        self.queue_group = DEFAULT_QUEUE_GROUP if spec.in_queue_group(method) else ""
        if server.options.queue_group is not None:  # the service's override: "" for none
            self.queue_group = server.options.queue_group
        self.record = EndpointRecord(
            name=method.endpoint, subject=subject, queue_group=self.queue_group, metadata=method.metadata or None
        )
        self.full_name = spec.full_name(method)
        self.task_name = f"betterproto-nats {self.full_name}"
        self._sub: Subscription | None = None
        self.unary = method.cardinality is Cardinality.UNARY
        self.shape = None if self.unary else SHAPES[method.cardinality]
        self.served = ServedMethod(
            server.transport, method, self.full_name, getattr(server.impl, method.py_name), spec.codec, server.policy, self.task_name,
            self.record, self._unary_done, self._unary_ended, spec.codec.decoder(method.request, self.full_name),
            spec.codec.encoder(method.response), self._shed,
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
            self._overloaded(msg, refusal)
            return
        server.taken.add(msg.reply)
        if self.shape is None:  # it counts itself in STATS and calls `_unary_done` at its end
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
        responder = Responder(server.transport, server.impl, self.method, self.full_name, server.spec.codec, msg, server.policy, self.shape)
        task = asyncio.create_task(self._serve(responder), name=self.task_name)
        self.calls[task] = responder
        self.active += 1
        task.add_done_callback(self._call_done)

    def _shed(self, call: UnaryCall, kept: float) -> None:
        """A call read in a burst that has kept the loop for `max_loop_lag`: refused before it
        starts, as at admission (running it would make every call wait longer)."""
        call.done()
        self.server.taken.discard(call.msg.reply)
        message = f"the service is overloaded: the calls read with this one kept its event loop for {kept * 1000:.0f} ms"
        self._overloaded(call.msg, Refusal("loop_lag", message, retry_hint(2 * kept)))

    def _overloaded(self, msg: Msg, refusal: Refusal) -> None:
        """Refuse a call for load (admission control): counted by reason, warned about (rate-limited),
        answered `RESOURCE_EXHAUSTED` with the retry hint."""
        self.refused += 1
        self.server.refused[refusal.reason] += 1
        overloads.warning("refusing calls to %s: %s", self.full_name, refusal.message)
        self._refuse(msg, Overloaded(refusal.message, retry_after=refusal.retry_after, method=self.full_name, reason=refusal.reason))

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

    def _unary_ended(self, call: UnaryCall, elapsed_ns: int, code: str | None) -> None:
        """A call that ran: counted in STATS (`EndpointRecord.record`, inlined: once per call) and let go."""
        record = self.record
        record.processing_time += elapsed_ns
        if code is not None:
            record.num_errors += 1
            record.last_error = code
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
            return reply_to, b"", refused_end(headers)
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
