"""What generated code declares about a service: names, subjects, options and message types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, Sequence, TypeVar

import betterproto

from .codec import JSON, PROTO, Codec


class Cardinality(enum.Enum):
    """The four RPC shapes."""

    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    CLIENT_STREAM = "client_stream"
    BIDI = "bidi"

    @property
    def server_streams(self) -> bool:
        return self in (Cardinality.SERVER_STREAM, Cardinality.BIDI)


@dataclass(frozen=True)
class ChunkSpec:
    """`(natsmicro.chunked_io)` of a method: the bytes field of the chunk message and the chunk size."""

    field: str = "data"
    size: int = 65536


Req = TypeVar("Req", bound=betterproto.Message)
Resp = TypeVar("Resp", bound=betterproto.Message)


@dataclass(frozen=True)
class MethodSpec(Generic[Req, Resp]):
    """One RPC, typed by its request and response: names, shape, types and endpoint options
    (timeouts already resolved). Generated code declares one per method and passes it to the runtime."""

    name: str  # proto name: "CountUp"
    py_name: str  # the handler/client attribute: "count_up"
    endpoint: str  # snake_case endpoint name and last subject token: "count_up"
    cardinality: Cardinality
    request: type[Req]
    response: type[Resp]
    timeout: float | None = None  # seconds; None = no deadline
    metadata: Mapping[str, str] = field(default_factory=dict)
    queue_group_disabled: bool = False
    pending_msg_limit: int = 0  # -1 none, 0 library default
    pending_bytes_limit: int = 0
    max_inflight: int = 0  # flow-control window; 0 = runtime default
    chunks: ChunkSpec | None = None


@dataclass(frozen=True)
class ServiceSpec:
    """One service: `(natsmicro.service)` options and its methods."""

    proto_name: str  # "streaming.v1.StreamDemoService"
    name: str
    subject_prefix: str
    methods: tuple[MethodSpec[Any, Any], ...]
    version: str = "1.0.0"
    description: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    json: bool = False
    queue_group_disabled: bool = False
    error_codes: Sequence[str] = ()

    @property
    def codec(self) -> Codec:
        return JSON if self.json else PROTO

    def method(self, py_name: str) -> MethodSpec[Any, Any]:
        for method in self.methods:
            if method.py_name == py_name:
                return method
        raise KeyError(f"{self.proto_name} has no method {py_name!r}")

    def full_name(self, method: MethodSpec[Any, Any]) -> str:
        """`package.Service/Method`, as in error messages and the call context."""
        return f"{self.proto_name}/{method.name}"
