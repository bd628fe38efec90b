"""`$SRV` discovery (NATS ADR-32): PING, INFO and STATS answered exactly as nats.micro answers them.

We run our own endpoint subscriptions (a task per call, optional queue group, pending limits: none
of which nats.micro's `add_endpoint` offers) and use nats.micro's own response types here, so that
a Go, nats-py micro and betterproto-nats instance of one service look the same to `nats micro`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Mapping

from nats.aio.msg import Msg
from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

from ..core.errors import ErrorCode
from ..core.headers import error_headers, message_size
from ..core.subjects import is_literal
from ..schema import descriptors
from ..net.transport import Subscription, Transport


@dataclass
class EndpointRecord:
    """What discovery reports of one endpoint; the server updates the counters."""

    name: str
    subject: str
    queue_group: str
    metadata: Mapping[str, str] | None
    num_requests: int = 0
    num_errors: int = 0
    processing_time: int = 0  # nanoseconds, all calls
    last_error: str = ""

    def record(self, elapsed_ns: int, error: str | None) -> None:
        self.processing_time += elapsed_ns
        if error is not None:
            self.num_errors += 1
            self.last_error = error


@dataclass
class Discovery:
    """Answers `$SRV.<VERB>`, `$SRV.<VERB>.<name>` and `$SRV.<VERB>.<name>.<id>`."""

    nc: Transport
    name: str
    version: str
    description: str
    metadata: Mapping[str, str]
    endpoints: list[EndpointRecord]
    id: str = field(default_factory=lambda: NUID().next().decode())
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    stats_handler: Callable[[EndpointStats], Any] | None = None
    # Per endpoint name: its admission control's figures, the endpoint's `data` unless a stats_handler gives it.
    load: Mapping[str, Callable[[], dict[str, Any]]] = field(default_factory=dict)
    # The service's FileDescriptorSet (schema/descriptors.py): answered on `$SRV.PROTO.<name>[.<id>]`.
    schema: bytes = b""
    schema_digest: str = ""  # its `descriptors.digest`, made once
    _subs: list[Subscription] = field(default_factory=list)

    def ping(self) -> dict[str, Any]:
        return ServicePing(id=self.id, name=self.name, version=self.version, metadata=dict(self.metadata)).to_dict()

    def info(self) -> dict[str, Any]:
        return ServiceInfo(
            id=self.id,
            name=self.name,
            version=self.version,
            description=self.description,
            metadata=dict(self.metadata),
            endpoints=[
                EndpointInfo(
                    name=e.name,
                    subject=e.subject,
                    queue_group=e.queue_group,
                    metadata=dict(e.metadata) if e.metadata else None,  # type: ignore[arg-type]
                )
                for e in self.endpoints
            ],
        ).to_dict()

    def stats(self) -> dict[str, Any]:
        stats = ServiceStats(
            id=self.id,
            name=self.name,
            version=self.version,
            metadata=dict(self.metadata),
            started=self.started,
            endpoints=[
                EndpointStats(
                    name=e.name,
                    subject=e.subject,
                    queue_group=e.queue_group,
                    num_requests=e.num_requests,
                    num_errors=e.num_errors,
                    last_error=e.last_error,
                    processing_time=e.processing_time,
                    average_processing_time=e.processing_time // e.num_requests if e.num_requests else 0,
                )
                for e in self.endpoints
            ],
        )
        for endpoint in stats.endpoints:
            if self.stats_handler is not None:  # as nats.micro's: per-endpoint `data`
                endpoint.data = self.stats_handler(endpoint)
            elif endpoint.name in self.load:
                endpoint.data = self.load[endpoint.name]()
        return stats.to_dict()

    async def start(self) -> None:
        answers: dict[ServiceVerb, Callable[[], dict[str, Any]]] = {
            ServiceVerb.PING: self.ping,
            ServiceVerb.INFO: self.info,
            ServiceVerb.STATS: self.stats,
        }
        for verb, answer in answers.items():
            handler = self._responder(answer)
            for name, id in ((None, None), (self.name, None), (self.name, self.id)):
                subject = control_subject(verb, name=name, id=id)
                self._subs.append(await self.nc.subscribe(subject, cb=handler))
        if self.schema:
            for id in (None, self.id):
                subject = descriptors.schema_subject(self.name, id)
                self._subs.append(await self.nc.subscribe(subject, cb=self._answer_schema))

    async def _answer_schema(self, msg: Msg) -> None:
        """The schema, whatever the request holds (it is not read); to literal reply subjects only. A
        schema beyond the connection's max_payload is answered with RESOURCE_EXHAUSTED instead."""
        if not msg.reply or not is_literal(msg.reply):
            return
        headers = {descriptors.SCHEMA_DIGEST_HEADER: self.schema_digest or descriptors.digest(self.schema)}
        body = self.schema
        if message_size(len(body), headers) > self.nc.max_payload:
            body = b""
            headers.update(
                error_headers(ErrorCode.RESOURCE_EXHAUSTED, f"schema of {len(self.schema)} bytes exceeds max_payload")
            )
        try:
            await self.nc.publish(msg.reply, body, headers=headers)
        except Exception:  # the connection is closing: no answer
            pass

    def _responder(self, answer: Callable[[], dict[str, Any]]) -> Callable[[Msg], Awaitable[None]]:
        async def respond(msg: Msg) -> None:
            if msg.reply and is_literal(msg.reply):
                try:
                    await self.nc.publish(msg.reply, json.dumps(answer()).encode())
                except Exception:  # the connection is closing: no answer
                    pass

        return respond

    async def stop(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.unsubscribe()
