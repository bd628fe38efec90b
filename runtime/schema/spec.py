"""What generated code declares about a service: names, subjects, options and message types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Generic, Mapping, Sequence, TypeVar

import betterproto

from ..encoding.codec import JSON, PROTO, Codec


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


class KeyKind(enum.Enum):
    """The type of a request field a key template names; each renders as the Go plugin's `%v` does."""

    STRING = "string"
    INT = "int"  # every integer type: decimal
    BOOL = "bool"  # true / false
    ENUM = "enum"  # the proto value name (the number when the value is unknown)


@dataclass(frozen=True)
class KeyField:
    """A `{field}` of a key template: the proto field name as written in the template."""

    name: str
    kind: KeyKind = KeyKind.STRING
    attr: str = ""  # the Python attribute when it differs from `name` ("class_", "user_id")
    names: Mapping[int, str] = field(default_factory=dict)  # an enum's value names by number


@dataclass(frozen=True)
class KeyTemplate:
    """`key_template` of a persisted method (`"user.{id}"`), checked against the request at generation."""

    text: str
    fields: tuple[KeyField, ...] = ()


class WriteMode(enum.Enum):
    """How a stored response meets a value already under its key (`KVWriteMode`, resolved)."""

    LAST_WRITE_WINS = "last_write_wins"
    COMPARE_AND_SET = "compare_and_set"  # create, or update the revision read just before
    CREATE_ONLY = "create_only"  # fails when the key exists


class PersistPolicy(enum.Enum):
    """What a failed write does to the call (`KVPersistFailurePolicy`)."""

    BEST_EFFORT = "best_effort"  # answer at once, write in the background (bounded), log failures
    REQUIRED = "required"  # write first; a failed write fails the call with INTERNAL


@dataclass(frozen=True)
class KvStoreSpec:
    """`(natsmicro.kv_store)` of a unary method: where and how its responses are stored."""

    bucket: str
    key: KeyTemplate
    ttl: float | None = None  # the bucket's max age, seconds
    description: str = ""
    history: int = 1
    client_only: bool = False  # the client reads; the server does not write
    metadata: Mapping[str, str] = field(default_factory=dict)
    limit_marker_ttl: float | None = None  # markers for keys removed by age (nats-server 2.11+)
    key_ttl: float | None = None  # per-write TTL (nats-server 2.11+)
    purge_ttl: float | None = None  # TTL of the marker a purge leaves (nats-server 2.11+)
    write_mode: WriteMode = WriteMode.LAST_WRITE_WINS
    policy: PersistPolicy = PersistPolicy.BEST_EFFORT
    compression: bool = False

    @property
    def message_ttls(self) -> bool:
        """Whether the bucket needs per-message TTLs (`allow_msg_ttl`)."""
        return bool(self.key_ttl or self.purge_ttl or self.limit_marker_ttl)


@dataclass(frozen=True)
class ObjectStoreSpec:
    """`(natsmicro.object_store)` of a unary method or a chunked download: responses as objects."""

    bucket: str
    key: KeyTemplate
    ttl: float | None = None
    description: str = ""
    client_only: bool = False
    compression: bool = False


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
    idempotent: bool = False  # `idempotency_level` IDEMPOTENT or NO_SIDE_EFFECTS: a RetryPolicy may retry it
    chunks: ChunkSpec | None = None
    kv_store: KvStoreSpec | None = None
    object_store: ObjectStoreSpec | None = None

    @property
    def persists(self) -> bool:
        """Whether the server writes this method's responses to a JetStream store."""
        return any(store is not None and not store.client_only for store in (self.kv_store, self.object_store))


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
    # The service's proto files and their imports as the plugin embeds them (schema/descriptors.py):
    # base64 of a zlib'd FileDescriptorSet; "" in code generated before schema reflection.
    schema: str = ""
    # Bodies through this codec instead of PROTO/JSON (the reflection client passes bytes through).
    body_codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self.body_codec is not None:
            return self.body_codec
        return JSON if self.json else PROTO

    def method(self, py_name: str) -> MethodSpec[Any, Any]:
        for method in self.methods:
            if method.py_name == py_name:
                return method
        raise KeyError(f"{self.proto_name} has no method {py_name!r}")

    def in_queue_group(self, method: MethodSpec[Any, Any]) -> bool:
        """Whether the proto lets the service take each call of `method` in one member of a queue
        group (neither the service nor the method turns it off)."""
        return not (self.queue_group_disabled or method.queue_group_disabled)

    def full_name(self, method: MethodSpec[Any, Any]) -> str:
        """`package.Service/Method`, as in error messages and the call context."""
        return f"{self.proto_name}/{method.name}"
