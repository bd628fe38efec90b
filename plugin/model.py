"""The NATS layer of a service, read from descriptors and options and checked against the rules.

Everything a generation-time error can be about is decided here, before any code is rendered, and
every error names the file, the service or method, and the rule.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Callable

from betterproto2_compiler.lib.google.protobuf import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FieldDescriptorProtoLabel,
    FieldDescriptorProtoType,
    FileDescriptorProto,
    MethodDescriptorProto,
    MethodOptionsIdempotencyLevel,
    ServiceDescriptorProto,
)
from betterproto_nats.core.errors import ErrorCode
from .naming import snake_case

from . import options as opts
from . import persist

DEFAULT_VERSION = "1.0.0"
DEFAULT_CHUNK_SIZE = 65536
_SEMVER = re.compile(
    r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
)
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_\-$]+(\.[A-Za-z0-9_\-$]+)*")
_SERVICE_NAME = re.compile(r"[A-Za-z0-9\-_]+")
_ERROR_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_BUILTIN_CODES = {name for name in vars(ErrorCode) if not name.startswith("_")}


class GenerationError(Exception):
    """A proto the plugin will not generate code for; the message names file, element and rule."""

    def __init__(self, file: str, where: str, rule: str) -> None:
        super().__init__(f"{file}: {where}: {rule}")


@dataclass
class ChunkModel:
    field: str
    size: int


@dataclass
class MethodModel:
    proto_name: str
    py_name: str
    endpoint: str
    client_streaming: bool
    server_streaming: bool
    timeout: float | None
    metadata: dict[str, str]
    queue_group_disabled: bool
    pending_msg_limit: int
    pending_bytes_limit: int
    max_inflight: int
    chunks: ChunkModel | None
    kv_store: persist.StoreModel | None = None
    object_store: persist.StoreModel | None = None
    helpers: list[str] = field(default_factory=list)  # client helpers of persisted methods
    idempotent: bool = False  # unary, `idempotency_level` IDEMPOTENT or NO_SIDE_EFFECTS (retries allowed)

    @property
    def cardinality(self) -> str:
        if self.client_streaming:
            return "BIDI" if self.server_streaming else "CLIENT_STREAM"
        return "SERVER_STREAM" if self.server_streaming else "UNARY"


@dataclass
class ServiceModel:
    proto_name: str  # as written: StreamDemoService
    full_name: str  # streaming.v1.StreamDemoService
    name: str
    subject_prefix: str
    version: str
    description: str
    metadata: dict[str, str]
    json: bool
    error_codes: list[str]
    queue_group_disabled: bool
    methods: list[MethodModel] = field(default_factory=list)


def _seconds(value: opts.Duration | None) -> float | None:
    seconds = opts.seconds(value) or 0.0
    return seconds if seconds > 0 else None


def _index(files: list[FileDescriptorProto], field_py_name: Callable[[str], str]) -> persist.RequestIndex:
    """Every message and enum of the request by fully qualified name (`.pkg.Outer.Inner`)."""
    messages: dict[str, DescriptorProto] = {}
    enums: dict[str, EnumDescriptorProto] = {}

    def add(prefix: str, nested: list[DescriptorProto], nested_enums: list[EnumDescriptorProto]) -> None:
        for enum in nested_enums:
            enums[f"{prefix}.{enum.name}"] = enum
        for message in nested:
            name = f"{prefix}.{message.name}"
            messages[name] = message
            add(name, message.nested_type, message.enum_type)

    for file in files:
        add(f".{file.package}" if file.package else "", file.message_type, file.enum_type)
    return persist.RequestIndex(messages, enums, field_py_name)


def read_services(
    files: list[FileDescriptorProto],
    packages: set[str],
    method_py_name: Callable[[str], str],
    field_py_name: Callable[[str], str],
) -> dict[str, list[ServiceModel]]:
    """NATS models of the services of `packages`, by package."""
    index = _index(files, field_py_name)
    result: dict[str, list[ServiceModel]] = {}
    for file in files:
        if file.package not in packages:
            continue
        services = result.setdefault(file.package, [])
        for service in file.service:
            model = _read_service(file, service, index, method_py_name)
            if model is not None:
                services.append(model)
    return result


def _read_service(
    file: FileDescriptorProto,
    service: ServiceDescriptorProto,
    index: persist.RequestIndex,
    method_py_name: Callable[[str], str],
) -> ServiceModel | None:
    where = service.name
    try:
        options = opts.read_extension(service.options, opts.SERVICE, opts.ServiceOptions) or opts.ServiceOptions()
    except opts.OptionError as error:
        raise GenerationError(file.name, where, f"(natsmicro.service): {error}") from None
    if options.skip:
        return None
    prefix = options.subject_prefix or snake_case(service.name)
    if not _SUBJECT_PREFIX.fullmatch(prefix):
        raise GenerationError(
            file.name, where, f"subject_prefix {prefix!r} must be dot-separated tokens without spaces or wildcards"
        )
    name = options.name or service.name
    if not _SERVICE_NAME.fullmatch(name):
        raise GenerationError(file.name, where, f"name {name!r} may contain only letters, digits, '-' and '_'")
    version = options.version or DEFAULT_VERSION
    if not _SEMVER.fullmatch(version):
        raise GenerationError(file.name, where, f"version {version!r} is not a semantic version (like 1.0.0)")
    if (opts.seconds(options.timeout) or 0.0) < 0:
        raise GenerationError(file.name, where, "timeout must not be negative")
    codes: list[str] = []
    for code in options.error_codes:
        if not _ERROR_CODE.fullmatch(code):
            raise GenerationError(file.name, where, f"error code {code!r} must be UPPER_SNAKE_CASE")
        if code in _BUILTIN_CODES:
            raise GenerationError(file.name, where, f"error code {code!r} is built in; do not declare it")
        if code in codes:
            raise GenerationError(file.name, where, f"error code {code!r} is declared twice")
        codes.append(code)
    model = ServiceModel(
        proto_name=service.name,
        full_name=f"{file.package}.{service.name}" if file.package else service.name,
        name=name,
        subject_prefix=prefix,
        version=version,
        description=options.description,
        metadata=dict(sorted(options.metadata.items())),
        json=options.json,
        error_codes=codes,
        queue_group_disabled=options.queue_group_disabled,
    )
    service_timeout = _seconds(options.timeout)
    endpoints: dict[str, str] = {}
    py_names: dict[str, str] = {}
    for method in service.method:
        method_model = _read_method(file, service, method, index, service_timeout, method_py_name)
        if method_model is None:
            continue
        taken = endpoints.get(method_model.endpoint) or py_names.get(method_model.py_name)
        if taken:
            raise GenerationError(
                file.name,
                f"{service.name}.{method.name}",
                f"its endpoint {method_model.endpoint!r} or Python name {method_model.py_name!r} is also {taken}'s",
            )
        endpoints[method_model.endpoint] = py_names[method_model.py_name] = method.name
        model.methods.append(method_model)
    for method_model in model.methods:  # a persisted method's client helpers are client methods too
        for helper in method_model.helpers:
            if helper in py_names:
                raise GenerationError(
                    file.name,
                    f"{service.name}.{method_model.proto_name}",
                    f"its client helper {helper!r} collides with {py_names[helper]}'s name; rename one",
                )
            py_names[helper] = f"{method_model.proto_name} (a helper)"
    return model


def _read_method(
    file: FileDescriptorProto,
    service: ServiceDescriptorProto,
    method: MethodDescriptorProto,
    index: persist.RequestIndex,
    service_timeout: float | None,
    method_py_name: Callable[[str], str],
) -> MethodModel | None:
    where = f"{service.name}.{method.name}"
    try:
        endpoint = opts.read_extension(method.options, opts.ENDPOINT, opts.EndpointOptions) or opts.EndpointOptions()
        stream = opts.read_extension(method.options, opts.STREAM, opts.StreamOptions)
        chunked = opts.read_extension(method.options, opts.CHUNKED_IO, opts.ChunkedIOOptions)
        kv = opts.read_extension(method.options, opts.KV_STORE, opts.KVStoreOptions)
        obj = opts.read_extension(method.options, opts.OBJECT_STORE, opts.ObjectStoreOptions)
    except opts.OptionError as error:
        raise GenerationError(file.name, where, str(error)) from None
    if endpoint.skip:
        return None
    messages = index.messages
    if (opts.seconds(endpoint.timeout) or 0.0) < 0:
        raise GenerationError(file.name, where, "timeout must not be negative")
    for limit_name in ("pending_msg_limit", "pending_bytes_limit"):
        if getattr(endpoint, limit_name) < -1:
            raise GenerationError(file.name, where, f"{limit_name} must be -1 (none), 0 (default) or positive")
    client_streaming = bool(method.client_streaming)
    server_streaming = bool(method.server_streaming)
    max_inflight = 0
    if stream is not None:
        if not (client_streaming or server_streaming):
            raise GenerationError(file.name, where, "(natsmicro.stream) applies to streaming methods only")
        if stream.max_inflight < 0:
            raise GenerationError(file.name, where, "(natsmicro.stream).max_inflight must not be negative")
        max_inflight = stream.max_inflight
    chunks = None
    if chunked is not None:
        chunks = _check_chunked(file, where, method, chunked, messages)
    unary = not (client_streaming or server_streaming)
    download = server_streaming and not client_streaming and chunks is not None
    kv_model = obj_model = None
    try:
        if kv is not None and _applies(file, where, "kv_store", unary, "unary methods"):
            kv_model = persist.kv_store(kv, method.input_type, index)
        if obj is not None and _applies(file, where, "object_store", unary or download, "unary methods and chunked downloads"):
            obj_model = persist.object_store(obj, method.input_type, index)
    except persist.PersistError as error:
        raise GenerationError(file.name, where, str(error)) from None
    for store in (kv_model, obj_model):
        for warning in store.warnings if store is not None else ():
            _warn(file, where, warning)
    py_name = method_py_name(method.name)
    return MethodModel(
        proto_name=method.name,
        py_name=py_name,
        endpoint=snake_case(method.name),
        client_streaming=client_streaming,
        server_streaming=server_streaming,
        timeout=_seconds(endpoint.timeout) or service_timeout,
        metadata=dict(sorted(endpoint.metadata.items())),
        queue_group_disabled=endpoint.queue_group_disabled,
        pending_msg_limit=endpoint.pending_msg_limit,
        pending_bytes_limit=endpoint.pending_bytes_limit,
        max_inflight=max_inflight,
        chunks=chunks,
        kv_store=kv_model,
        object_store=obj_model,
        helpers=persist.helper_names(py_name, kv_model, obj_model),
        idempotent=unary and _idempotent(method),
    )


def _idempotent(method: MethodDescriptorProto) -> bool:
    """protobuf's own `option idempotency_level = IDEMPOTENT;` (or NO_SIDE_EFFECTS) on a method: a
    client's RetryPolicy may send it again after a failure (docs/PROTOCOL.md, "Admission control")."""
    level = int(getattr(method.options, "idempotency_level", 0) or 0) if method.options is not None else 0
    return level in (MethodOptionsIdempotencyLevel.IDEMPOTENT, MethodOptionsIdempotencyLevel.NO_SIDE_EFFECTS)


def _applies(file: FileDescriptorProto, where: str, option: str, applies: bool, to: str) -> bool:
    """Persistence options apply to some shapes only; elsewhere they are ignored with a warning, as the
    Go plugin ignores them (a proto written for it must still compile)."""
    if not applies:
        _warn(file, where, f"(natsmicro.{option}) applies to {to} only; ignored")
    return applies


def _warn(file: FileDescriptorProto, where: str, text: str) -> None:
    """A generation warning on stderr (protoc shows it), naming the file and element as errors do."""
    print(f"protoc-gen-python_nats: warning: {file.name}: {where}: {text}", file=sys.stderr)


def _check_chunked(
    file: FileDescriptorProto,
    where: str,
    method: MethodDescriptorProto,
    chunked: opts.ChunkedIOOptions,
    messages: dict[str, DescriptorProto],
) -> ChunkModel:
    """The chunked_io rules of OPTIONS.md."""
    rule = "(natsmicro.chunked_io)"
    if method.client_streaming and method.server_streaming:
        raise GenerationError(file.name, where, f"{rule} is not allowed on bidirectional methods")
    if not (method.client_streaming or method.server_streaming):
        raise GenerationError(
            file.name, where, f"{rule} needs a server-streaming (download) or client-streaming (upload) method, not unary"
        )
    if chunked.default_chunk_size < 0:
        raise GenerationError(file.name, where, f"{rule}.default_chunk_size must not be negative")
    chunk_field = chunked.chunk_field or "data"
    type_name = method.output_type if method.server_streaming else method.input_type
    message = messages.get(type_name)
    if message is None:
        raise GenerationError(file.name, where, f"{rule}: chunk message {type_name} not found")
    fields: list[FieldDescriptorProto] = message.field
    shown = type_name.lstrip(".")
    if len(fields) != 1:
        raise GenerationError(
            file.name, where, f"{rule}: chunk message {shown} must have exactly one field (a singular bytes field), it has {len(fields)}"
        )
    only = fields[0]
    if only.type != FieldDescriptorProtoType.BYTES:
        raise GenerationError(file.name, where, f"{rule}: field {shown}.{only.name} must be of type bytes")
    if only.label == FieldDescriptorProtoLabel.REPEATED:
        raise GenerationError(file.name, where, f"{rule}: field {shown}.{only.name} must be singular, not repeated")
    if only.proto3_optional:
        raise GenerationError(file.name, where, f"{rule}: field {shown}.{only.name} must not be optional")
    if only.name != chunk_field:
        raise GenerationError(
            file.name, where, f"{rule}: chunk_field is {chunk_field!r} but {shown}'s bytes field is {only.name!r}"
        )
    return ChunkModel(field=chunk_field, size=chunked.default_chunk_size or DEFAULT_CHUNK_SIZE)
