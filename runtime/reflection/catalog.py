"""What services and methods there are, with their message descriptors: from a running account
(`$SRV` INFO metadata and `$SRV.PROTO`, docs/PROTOCOL.md "Schema reflection"), from a
FileDescriptorSet (`buf build -o`, `protoc -o --include_imports`) or from .proto files.

Everything read from the wire is checked: replies that are not what the convention says are left
out and noted in `Catalog.problems`, never raised mid-discovery.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

from betterproto_nats_plugin import include_dir  # natsmicro/options.proto (the same wheel; a light import)
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, MethodDescriptor
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import error_from_headers
from ..core.subjects import is_literal
from ..schema import descriptors
from ..schema.descriptors import wire_fields

Shape = Literal["unary", "server", "client", "bidi"]

OPTIONS_PACKAGE = "natsmicro"
# Extension numbers of our options (proto/natsmicro/options.proto, the Go plugin's numbers).
_SERVICE_OPTIONS = {50001: "service"}
_METHOD_OPTIONS = {50002: "endpoint", 50003: "kv_store", 50004: "object_store", 50005: "stream", 50006: "chunked_io"}
_OPTION_TYPES = {
    "service": "ServiceOptions",
    "endpoint": "EndpointOptions",
    "kv_store": "KVStoreOptions",
    "object_store": "ObjectStoreOptions",
    "stream": "StreamOptions",
    "chunked_io": "ChunkedIOOptions",
}
MAX_INSTANCES = 10_000  # INFO replies read in one discovery, at most
QUIET = 0.25  # seconds without a new INFO reply after the first that end a discovery early


@dataclass(frozen=True)
class MethodInfo:
    """One RPC: its names, shape, message descriptors, subject and our options."""

    service: str  # proto full name: "streaming.v1.StreamDemoService"
    name: str  # proto method name: "CountUp"
    shape: Shape
    input: Descriptor
    output: Descriptor
    subject: str  # where calls go
    chunked: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # our (natsmicro.*) options as JSON values
    json: bool = False  # bodies on the wire are proto3 JSON ((natsmicro.service).json)
    timeout: float | None = None  # the proto's deadline, seconds
    chunk_field: str = "data"
    chunk_size: int = 65536

    @property
    def full_name(self) -> str:
        """`pkg.Service/Method`."""
        return f"{self.service}/{self.name}"


@dataclass(frozen=True)
class ServiceInfo:
    """One service: its names, instances (from `$SRV`) and methods (from its schema)."""

    full_name: str  # proto full name; "" for a service seen on `$SRV` whose schema we lack
    nats_name: str
    version: str
    ids: list[str]
    subject_prefix: str
    methods: list[MethodInfo]
    description: str = ""
    digest: str = ""  # of the schema it published; "" when its schema came from local files
    endpoints: list[tuple[str, str]] = field(default_factory=list)  # (name, subject) from `$SRV` INFO
    options: dict[str, Any] = field(default_factory=dict)


class Catalog:
    """Services, methods and messages, and the `DescriptorPool` they live in."""

    def __init__(self, pool: descriptor_pool.DescriptorPool, services: Sequence[ServiceInfo], problems: Sequence[str] = ()) -> None:
        self.pool = pool
        self.services = list(services)
        self.problems = list(problems)  # what discovery left out, and why

    # --- Constructors ---------------------------------------------------------------------------

    @classmethod
    def from_descriptor_set(cls, data: bytes) -> Catalog:
        """Every service of a serialized FileDescriptorSet (imports included, well-known types may be
        left out), with subjects as the proto's options give them."""
        pool = descriptor_pool.DescriptorPool()
        files = _load(pool, data)
        return cls(pool, [_service_from(pool, described) for described in _services_of(pool, files)])

    def add_descriptor_set(self, data: bytes) -> None:
        """Add the services of another serialized FileDescriptorSet (files already known are kept)."""
        files = _load(self.pool, data)
        self.services.extend(_service_from(self.pool, described) for described in _services_of(self.pool, files))

    @classmethod
    def from_proto_files(cls, proto_paths: Sequence[str | Path], files: Sequence[str | Path]) -> Catalog:
        """Compile .proto files with grpc_tools.protoc (the `cli` extra installs it; protoc's own
        well-known types and our natsmicro options are on the include path) and load them."""
        return cls.from_descriptor_set(compile_protos(proto_paths, files))

    @classmethod
    async def discover(
        cls,
        nc: NATS,
        timeout: float = 1.0,
        *,
        name: str | None = None,
        local: Catalog | None = None,
        service: str | None = None,
    ) -> Catalog:
        """The services on the account (or those named `name`): `$SRV.INFO`, then the schema of each
        service that publishes one (`$SRV.PROTO.<name>.<id>`, once per digest; with `service`, only
        of instances serving it: its proto full or short name, or NATS name). Services with no
        schema take it from `local` (by NATS name, then proto name), else are listed without methods."""
        problems: list[str] = []
        subject = "$SRV.INFO" + (f".{name}" if name else "")
        infos = [info for info in (_read_info(msg, problems) for msg in await gather_replies(nc, subject, timeout)) if info]
        pool = local.pool if local is not None else descriptor_pool.DescriptorPool()
        fetched: dict[str, set[str]] = {}  # digest -> service full names it covers (loaded schemas only)
        for info in infos:
            digest = info.digest
            if service and not _serves(info, service):
                continue
            if digest and digest not in fetched:  # one instance per digest; the next one if it fails
                data = await _fetch_schema(nc, info.name, info.id, digest, timeout, problems)
                if data is not None:
                    try:
                        _load(pool, data)
                        fetched[digest] = {m.split("/")[0] for m in info.methods.values()}
                    except Exception as error:  # remote bytes: DecodeError, TypeError from the pool, ...
                        problems.append(f"{info.name} {info.id}: schema does not load: {_short(error)}")
        return cls(pool, _merge(pool, infos, fetched, local, problems), problems)

    # --- Lookups --------------------------------------------------------------------------------

    def method(self, name: str) -> MethodInfo:
        """A method by `pkg.Service/Method`, `Service/Method`, `Service.Method` or `pkg.Service.Method`
        (the NATS name or the endpoint name work too); NOT_FOUND lists near misses."""
        service_name, method_name = _split_method(name)
        for service in self.services:
            if _names_service(service, service_name):
                for method in service.methods:
                    if method_name in (method.name, method.subject.rpartition(".")[2]):
                        return method
        for service in self.services:
            if not service.methods and _names_service(service, service_name):
                raise RpcError(ErrorCode.NOT_FOUND, f"{service_name} publishes no schema: give its .proto files or a descriptor set (--proto, --descriptor-set)")
        known = [m.full_name for s in self.services for m in s.methods]
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or difflib.get_close_matches(
            method_name, [k.rpartition("/")[2] for k in known], n=3
        )
        hint = f"; did you mean {', '.join(near)}?" if near else ("" if known else "; no method is known (no schema)")
        raise RpcError(ErrorCode.NOT_FOUND, f"no method {name!r}{hint}")

    def service(self, name: str) -> ServiceInfo:
        """A service by proto full name, short name or NATS name."""
        for service in self.services:
            if _names_service(service, name):
                return service
        raise RpcError(ErrorCode.NOT_FOUND, f"no service {name!r}")

    def message(self, full_name: str) -> Descriptor:
        """A message descriptor by full name (a leading dot is fine)."""
        try:
            return self.pool.FindMessageTypeByName(full_name.lstrip("."))
        except KeyError:
            raise RpcError(ErrorCode.NOT_FOUND, f"no message {full_name!r}") from None


# --- Schemas ------------------------------------------------------------------------------------


def compile_protos(proto_paths: Sequence[str | Path], files: Sequence[str | Path]) -> bytes:
    """A serialized FileDescriptorSet of `files` and their imports, by grpc_tools.protoc."""
    try:
        import grpc_tools
        from grpc_tools import protoc
    except ImportError:  # pragma: no cover - the cli extra installs it
        raise RpcError(ErrorCode.UNAVAILABLE, "--proto needs grpcio-tools: pip install 'betterproto-nats[cli]'") from None
    includes = [str(Path(grpc_tools.__file__).parent / "_proto"), include_dir()]  # well-known types, natsmicro
    with tempfile.TemporaryDirectory() as temp:
        out = Path(temp) / "set.binpb"
        args = ["protoc", *(f"-I{p}" for p in proto_paths), *(f"-I{p}" for p in includes)]
        args += [f"--descriptor_set_out={out}", "--include_imports", *map(str, files)]
        if protoc.main(args) != 0 or not out.exists():
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"protoc could not compile {', '.join(map(str, files))} (its errors are above)")
        return out.read_bytes()


def _load(pool: descriptor_pool.DescriptorPool, data: bytes) -> list[descriptor_pb2.FileDescriptorProto]:
    """Add a serialized FileDescriptorSet to `pool` (files already there are skipped; well-known types
    it leaves out come from protobuf's own); the files it held."""
    files = list(descriptor_pb2.FileDescriptorSet.FromString(data).file)
    by_name = {file.name: file for file in files}

    def add(name: str, chain: tuple[str, ...]) -> None:
        try:
            pool.FindFileByName(name)
            return
        except KeyError:
            pass
        if name in chain:
            raise ValueError(f"import cycle at {name}")
        file = by_name.get(name)
        if file is None:
            try:  # a well-known type: protobuf has it (its module registers it in the default pool)
                if name.startswith("google/protobuf/") and name.endswith(".proto"):
                    importlib.import_module("google.protobuf." + name[len("google/protobuf/") : -len(".proto")] + "_pb2")
                file = descriptor_pb2.FileDescriptorProto()
                descriptor_pool.Default().FindFileByName(name).CopyToProto(file)
            except (KeyError, ImportError):
                raise ValueError(f"{name} is imported but not in the set") from None
        for dependency in file.dependency:
            add(dependency, (*chain, name))
        pool.AddSerializedFile(file.SerializeToString())

    for file in files:
        add(file.name, ())
    return files


def _services_of(pool: descriptor_pool.DescriptorPool, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[Any]:
    """The services of `files` that are served: not those with `(natsmicro.service).skip`."""
    return [
        service
        for file in files
        if file.package != OPTIONS_PACKAGE
        for service in pool.FindFileByName(file.name).services_by_name.values()
        if not _options(pool, service.GetOptions(), _SERVICE_OPTIONS).get("service", {}).get("skip")
    ]


def _options(pool: descriptor_pool.DescriptorPool, options: Any, numbers: Mapping[int, str]) -> dict[str, Any]:
    """Our extensions found in a descriptor's options, as JSON values (by option name)."""
    found: dict[str, Any] = {}
    raw = options.SerializeToString()
    for number, data in _length_delimited(raw):
        option = numbers.get(number)
        if option is None:
            continue
        try:
            kind = pool.FindMessageTypeByName(f"{OPTIONS_PACKAGE}.{_OPTION_TYPES[option]}")
        except KeyError:
            continue  # natsmicro/options.proto not in the schema
        message = message_factory.GetMessageClass(kind).FromString(data)
        found[option] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return found


def _length_delimited(data: bytes) -> Iterable[tuple[int, bytes]]:
    """The length-delimited fields of serialized options (protobuf's own output: framing intact)."""
    return ((number, payload) for number, _, _, payload in wire_fields(data) if payload is not None)


def snake_case(name: str) -> str:
    """Endpoint names and default subject prefixes: the rule of the plugins (plugin/naming.py, the Go
    plugin's): `GetHTTPStatus` -> `get_http_status`."""
    name = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _seconds(duration: Any) -> float | None:
    """A Duration option's JSON value ("1.5s") in seconds; None for none or zero."""
    if isinstance(duration, str) and duration.endswith("s"):
        try:
            seconds = float(duration[:-1])
        except ValueError:
            return None
        return seconds or None
    return None


def _shape(method: MethodDescriptor) -> Shape:
    client, server = method.client_streaming, method.server_streaming
    return "bidi" if client and server else "client" if client else "server" if server else "unary"


def _service_from(
    pool: descriptor_pool.DescriptorPool,
    described: Any,
    subjects: Mapping[str, str] | None = None,
    nats_name: str | None = None,
    version: str | None = None,
    ids: Sequence[str] = (),
    digest: str = "",
    endpoints: Sequence[tuple[str, str]] = (),
) -> ServiceInfo:
    """A service from its descriptor; `subjects` (by method name) from `$SRV` replace the proto's."""
    options = _options(pool, described.GetOptions(), _SERVICE_OPTIONS)
    service = options.get("service", {})
    prefix = service.get("subject_prefix") or snake_case(described.name)
    default_timeout = _seconds(service.get("timeout"))
    methods = []
    for method in described.methods:
        method_options = _options(pool, method.GetOptions(), _METHOD_OPTIONS)
        if method_options.get("endpoint", {}).get("skip"):
            continue
        chunked = method_options.get("chunked_io")
        subject = (subjects or {}).get(method.name) or f"{prefix}.{snake_case(method.name)}"
        methods.append(
            MethodInfo(
                service=described.full_name,
                name=method.name,
                shape=_shape(method),
                input=method.input_type,
                output=method.output_type,
                subject=subject,
                chunked=chunked is not None,
                options=method_options,
                json=bool(service.get("json")),
                timeout=_seconds(method_options.get("endpoint", {}).get("timeout")) or default_timeout,
                chunk_field=(chunked or {}).get("chunk_field") or "data",
                chunk_size=int((chunked or {}).get("default_chunk_size") or 65536),
            )
        )
    return ServiceInfo(
        full_name=described.full_name,
        nats_name=nats_name or service.get("name") or described.name,
        version=version or service.get("version") or "1.0.0",
        ids=list(ids),
        subject_prefix=prefix,
        methods=methods,
        description=service.get("description", ""),
        digest=digest,
        endpoints=list(endpoints),
        options=options,
    )


# --- Discovery ----------------------------------------------------------------------------------


async def gather_replies(nc: NATS, subject: str, timeout: float, payload: bytes = b"") -> list[Msg]:
    """Replies to one request from many responders: until `timeout`, or `QUIET` seconds without a new
    one after the first; at most MAX_INSTANCES."""
    replies: list[Msg] = []
    arrived = asyncio.Event()

    async def collect(msg: Msg) -> None:
        if len(replies) < MAX_INSTANCES:
            replies.append(msg)
            arrived.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subject, payload, reply=inbox)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while (left := give_up - loop.time()) > 0 and len(replies) < MAX_INSTANCES:
            arrived.clear()
            try:
                await asyncio.wait_for(arrived.wait(), min(left, QUIET) if replies else left)
            except asyncio.TimeoutError:
                if replies:
                    break
    finally:
        await sub.unsubscribe()
    return replies


@dataclass
class _Instance:
    """One `$SRV` INFO reply, checked."""

    name: str
    id: str
    version: str
    description: str
    endpoints: list[tuple[str, str]]  # (name, subject)
    methods: dict[str, str]  # endpoint name -> "pkg.Service/Method" (reflected ones)
    digest: str


def _read_info(msg: Msg, problems: list[str]) -> _Instance | None:
    try:
        info = json.loads(msg.data)
        name, id = info["name"], info["id"]
        if not (isinstance(name, str) and isinstance(id, str) and _token(name) and _token(id)):
            raise ValueError("name or id is not a subject token")
        endpoints: list[tuple[str, str]] = []
        methods: dict[str, str] = {}
        digests: set[str] = set()
        for endpoint in info.get("endpoints") or []:
            endpoint_name, subject = endpoint["name"], endpoint["subject"]
            if not (isinstance(endpoint_name, str) and isinstance(subject, str) and is_literal(subject)):
                raise ValueError("an endpoint without a literal subject")
            endpoints.append((endpoint_name, subject))
            metadata = endpoint.get("metadata") or {}
            method = metadata.get(descriptors.METHOD_KEY)
            digest = metadata.get(descriptors.SCHEMA_KEY)
            if isinstance(method, str) and isinstance(digest, str) and "/" in method:
                methods[endpoint_name] = method
                digests.add(digest)
        if len(digests) > 1:
            raise ValueError("endpoints name different schema digests")
        return _Instance(
            name, id, str(info.get("version", "")), str(info.get("description", "")), endpoints, methods,
            next(iter(digests), ""),
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
        problems.append(f"an INFO reply was left out: {_short(error)}")
        return None


def _serves(info: _Instance, service: str) -> bool:
    """Whether an instance is, or serves, `service` (as `Catalog.method` would name it)."""
    full_names = {m.split("/")[0] for m in info.methods.values()}
    return service == info.name or any(f == service or f.endswith("." + service) for f in full_names)


def _token(text: str) -> bool:
    return bool(text) and len(text) <= 256 and is_literal(text) and "." not in text


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:200]


async def _fetch_schema(nc: NATS, name: str, id: str, digest: str, timeout: float, problems: list[str]) -> bytes | None:
    """The schema one instance publishes: the first reply whose bytes match the digest its INFO named
    (another responder on the subject cannot displace it), within `timeout`; at most 16 replies read."""
    replies: asyncio.Queue[Msg] = asyncio.Queue(maxsize=16)

    async def collect(msg: Msg) -> None:
        if not replies.full():
            replies.put_nowait(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    why = "no answer"
    try:
        await nc.publish(descriptors.schema_subject(name, id), b"", reply=inbox)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        for _ in range(16):
            try:
                msg = await asyncio.wait_for(replies.get(), max(0.0, give_up - loop.time()))
            except asyncio.TimeoutError:
                break
            failure = error_from_headers(msg.headers)
            if failure is not None:
                why = f"{failure.code}: {failure.message}"
            elif descriptors.digest(msg.data) == digest:
                return bytes(msg.data)
            else:
                why = "its schema does not match the digest it publishes"
    finally:
        await sub.unsubscribe()
    problems.append(f"{name} {id}: {why}" if why.startswith("its") else f"{name} {id}: no schema ({why})")
    return None


def _merge(
    pool: descriptor_pool.DescriptorPool,
    infos: list[_Instance],
    fetched: Mapping[str, set[str]],
    local: Catalog | None,
    problems: list[str],
) -> list[ServiceInfo]:
    """One ServiceInfo per (NATS name, version, proto service): instances grouped, subjects from INFO."""
    groups: dict[tuple[str, str, str], list[_Instance]] = {}
    for info in infos:
        full_names = {m.split("/")[0] for m in info.methods.values()} if info.digest in fetched and fetched[info.digest] else set()
        if not full_names and local is not None:
            for service in local.services:
                if info.name in (service.nats_name, service.full_name.rpartition(".")[2]):
                    full_names.add(service.full_name)
        for full_name in sorted(full_names) or [""]:
            groups.setdefault((info.name, info.version, full_name), []).append(info)
    services: list[ServiceInfo] = []
    for (name, version, full_name), members in sorted(groups.items()):
        first = members[0]
        ids = [m.id for m in members]
        if full_name:
            try:
                described = pool.FindServiceByName(full_name)
            except KeyError:
                problems.append(f"{name}: its schema has no service {full_name}")
                described = None
            if described is not None:
                subjects = {m.split("/")[1]: s for e, s in first.endpoints for m in [first.methods.get(e, "")] if m}
                if not first.methods:  # schema from local files: endpoints by name
                    by_endpoint = dict(first.endpoints)
                    subjects = {
                        method.name: by_endpoint[snake_case(method.name)]
                        for method in described.methods
                        if snake_case(method.name) in by_endpoint
                    }
                services.append(_service_from(pool, described, subjects, name, version, ids, first.digest, first.endpoints))
                continue
        prefix = _common_prefix([s for _, s in first.endpoints])
        services.append(ServiceInfo("", name, version, ids, prefix, [], first.description, first.digest, first.endpoints))
    if local is not None:  # local services no instance answered for: callable by their proto subjects
        seen = {s.full_name for s in services}
        services.extend(s for s in local.services if s.full_name not in seen)
    return services


def _common_prefix(subjects: Sequence[str]) -> str:
    parts = [s.split(".")[:-1] for s in subjects]
    if not parts:
        return ""
    common = parts[0]
    for other in parts[1:]:
        while other[: len(common)] != common:
            common = common[:-1]
    return ".".join(common)


def _split_method(name: str) -> tuple[str, str]:
    if "/" in name:
        service, _, method = name.rpartition("/")
    else:
        service, _, method = name.rpartition(".")
    return service, method


def _names_service(service: ServiceInfo, name: str) -> bool:
    short = service.full_name.rpartition(".")[2]
    return bool(name) and name in (service.full_name, short, service.nats_name) or (
        bool(service.full_name) and service.full_name.endswith("." + name)
    )
