"""`ClientSettings`: a client's connection and options (subject prefix, timeout, heartbeat, inbox
prefixes, interceptors, JetStream, loop lag, retries), what every call of the client reads.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from ..core.heartbeats import DEFAULT_HEARTBEAT
from ..core.subjects import InboxPolicy
from ..features.interceptors import Chain, Interceptor
from ..features.stores import Stores
from ..features.retry import RetryPolicy
from .refusals import RetryBudget
from ..health.admission import DEFAULT_MAX_LOOP_LAG
from ..net.transport import NatsTransport, Transport, transport_of
from ..schema.spec import MethodSpec, ServiceSpec


class ClientSettings:
    """What a client was made with (see the module). Internals are `_nats_`-prefixed: generated
    clients subclass it (through `ClientBase`) and their methods are the users' names."""

    _nats_service: ClassVar[ServiceSpec]

    def __init__(
        self,
        nc: NATS | Transport,
        *,
        subject_prefix: str | None = None,
        timeout: float | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        inbox_prefixes: Sequence[str] = (),
        interceptors: Sequence[Interceptor] = (),
        jetstream_domain: str | None = None,
        jetstream_prefix: str | None = None,
        max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG,
        retry: RetryPolicy | None = None,
        absorb_refusals: bool = True,
    ) -> None:
        self._nats_nc = nc
        self._nats_retry = retry  # unary calls refused (and idempotent ones failed) are retried by it
        # A call refused before it ran is sent again where that is safe (calling/refusals.py).
        self._nats_absorb = absorb_refusals
        self._nats_named: dict[str, tuple[str, str]] = {}  # by endpoint: full name and subject
        self._nats_chain = Chain.of(interceptors)  # run around every call, in the order given
        self._nats_transport = transport_of(nc)
        self._nats_budget = RetryBudget.of(self._nats_transport)  # its calls taken earn retries
        self._nats_subject_prefix = subject_prefix or self._nats_service.subject_prefix
        self._nats_timeout = timeout
        self._nats_heartbeat = heartbeat  # seconds between v2 heartbeats; silence for 3 = peer gone
        # Opening a stream waits while the loop runs this far behind (None: never; admission.OpenGate).
        self._nats_max_loop_lag = max_loop_lag
        # Where a server may name its stream inboxes: `_INBOX.` and these (a service's own prefix).
        self._nats_inboxes = InboxPolicy(inbox_prefixes)
        # Where the helpers of persisted methods read (`(natsmicro.kv_store)`, `object_store`).
        self._nats_jetstream = (jetstream_domain, jetstream_prefix)
        self._nats_store: Stores | None = None

    def _nats_stores(self, method: MethodSpec[Any, Any]) -> Stores:
        """The JetStream stores the persisted-method helpers read (UNAVAILABLE without nats-py)."""
        if self._nats_store is None:
            transport = self._nats_transport
            if not isinstance(transport, NatsTransport):
                raise RpcError(
                    ErrorCode.UNAVAILABLE,
                    "stored responses are read from JetStream, which needs a nats-py connection",
                    method=self._nats_service.full_name(method),
                )
            domain, prefix = self._nats_jetstream
            self._nats_store = Stores(transport.nc, domain, prefix)
        return self._nats_store

    def _nats_method(self, method: str | MethodSpec[Any, Any]) -> MethodSpec[Any, Any]:
        """The descriptor (API v2 passes it; API v1 passes the method's name)."""
        return self._nats_service.method(method) if isinstance(method, str) else method

    def _nats_names(self, method: MethodSpec[Any, Any]) -> tuple[str, str]:
        """The method's full name and subject (made once per method and client)."""
        names = self._nats_named.get(method.endpoint)
        if names is None:
            names = self._nats_named[method.endpoint] = (
                self._nats_service.full_name(method),
                f"{self._nats_subject_prefix}.{method.endpoint}",
            )
        return names
