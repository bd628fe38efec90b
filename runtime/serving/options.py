"""`ServeOptions`: every option of `serve()`, `Server` and the `serve` command in one frozen value, with
the defaults defined here once; `ServeKeywords` is the same set as `serve()`'s keyword arguments."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypedDict

from nats.micro.service import EndpointStats

from ..features.interceptors import Interceptor
from ..features.persistence import MAX_PENDING_WRITES
from ..health.admission import DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_LOOP_LAG
from ..streaming.inbox import V1_BUFFER_BYTES, V1_BUFFER_MESSAGES
from .policy import DEFAULT_STREAM_IDLE_TIMEOUT

DEFAULT_GRACE_PERIOD = 10.0


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """How a service is served (`serve()` documents each option). Sequences are kept as tuples, so
    one value can be shared by many services and never changes under them."""

    subject_prefix: str | None = None  # None: the proto's
    name: str | None = None  # None: the proto's
    version: str | None = None  # None: the proto's
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT
    max_concurrent_unary: int = DEFAULT_MAX_CONCURRENT
    max_loop_lag: float | None = DEFAULT_MAX_LOOP_LAG  # None: no such limit
    max_outbound_bytes: int | None = None  # None: half of nats-py's pending_size; 0: no limit
    grace_period: float = DEFAULT_GRACE_PERIOD
    stream_idle_timeout: float = DEFAULT_STREAM_IDLE_TIMEOUT
    inbox_prefixes: Sequence[str] = ()
    stream_buffer_messages: int = V1_BUFFER_MESSAGES
    stream_buffer_bytes: int = V1_BUFFER_BYTES
    expose_errors: bool = False
    interceptors: Sequence[Interceptor] = ()
    stats_handler: Callable[[EndpointStats], Any] | None = None
    queue_group: str | None = None  # None: the proto's; "" for none
    persist: bool = True
    jetstream_domain: str | None = None
    jetstream_prefix: str | None = None
    max_pending_writes: int = MAX_PENDING_WRITES
    reflection: bool = True  # publish the embedded schema: `proto.*` endpoint metadata, `$SRV.PROTO`

    def __post_init__(self) -> None:
        if self.stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be positive")
        object.__setattr__(self, "inbox_prefixes", tuple(self.inbox_prefixes))
        object.__setattr__(self, "interceptors", tuple(self.interceptors))

    def updated(self, changes: ServeKeywords, caller: str = "serve()") -> ServeOptions:
        """These options with `changes` (keyword arguments of `caller`) applied; a TypeError names an
        unknown one as Python would for `caller`'s own keywords."""
        for key in changes:
            if key not in _FIELDS:
                raise TypeError(f"{caller} got an unexpected keyword argument {key!r}")
        return dataclasses.replace(self, **changes) if changes else self


_FIELDS = frozenset(field.name for field in dataclasses.fields(ServeOptions))


class ServeKeywords(TypedDict, total=False):
    """`ServeOptions`' fields as keyword arguments (`serve(nc, impl, max_loop_lag=0.05)`), for type
    checkers; tests/test_options.py checks that both name the same options with the same types."""

    subject_prefix: str | None
    name: str | None
    version: str | None
    max_concurrent_streams: int
    max_concurrent_unary: int
    max_loop_lag: float | None
    max_outbound_bytes: int | None
    grace_period: float
    stream_idle_timeout: float
    inbox_prefixes: Sequence[str]
    stream_buffer_messages: int
    stream_buffer_bytes: int
    expose_errors: bool
    interceptors: Sequence[Interceptor]
    stats_handler: Callable[[EndpointStats], Any] | None
    queue_group: str | None
    persist: bool
    jetstream_domain: str | None
    jetstream_prefix: str | None
    max_pending_writes: int
    reflection: bool
