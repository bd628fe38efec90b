"""What services and methods there are, with their message descriptors: from a running account
(`$SRV` INFO metadata and `$SRV.PROTO`, docs/PROTOCOL.md "Schema reflection"), from a
FileDescriptorSet (`buf build -o`, `protoc -o --include_imports`) or from .proto files.

Each published schema (one per digest) has its own `DescriptorPool`, and so do the local files: two
versions of a service whose proto files share names (`foo/v1/service.proto`, changed between them)
are listed once each, each with its own methods and messages. Lookups by name take the newest
version unless a version is given.

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
MAX_SCHEMAS = 1_000  # distinct schemas (digests) loaded in one discovery, at most: a pool each
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
    version: str = ""  # of its service (`$SRV` INFO's, else the proto's option)

    @property
    def full_name(self) -> str:
        """`pkg.Service/Method`."""
        return f"{self.service}/{self.name}"

    @property
    def pool(self) -> descriptor_pool.DescriptorPool:
        """The pool of the schema this method came from: its messages and options are found there."""
        pool: descriptor_pool.DescriptorPool = self.input.file.pool
        return pool


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
    pool: descriptor_pool.DescriptorPool | None = None  # of the schema its methods came from; None without one


class SchemaPool:
    """One `DescriptorPool` and the files added to it, by name, as the bytes they were added from: the
    pool of one published schema (one per digest) or of local files. A file of a name already there is
    compared by these bytes (a descriptor copied back out with CopyToProto is not the bytes it was
    built from)."""

    def __init__(self, digest: str = "") -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.digest = digest  # of the published schema; "" for local files
        self.files: dict[str, bytes] = {}

    def clashing(self, files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[str]:
        """The names of `files` this pool holds with other bytes (well-known types aside: one
        definition of them is as good as another)."""
        return [
            file.name
            for file in files
            if not _well_known(file.name) and self.files.get(file.name, None) not in (None, file.SerializeToString())
        ]

    def load(self, files: Sequence[descriptor_pb2.FileDescriptorProto]) -> list[descriptor_pb2.FileDescriptorProto]:
        """Add a set's files, each after its imports (files already here are kept; well-known types it
        leaves out come from protobuf's own); the files of the set that were added."""
        by_name = {file.name: file for file in files}
        added: list[descriptor_pb2.FileDescriptorProto] = []

        def add(name: str, chain: tuple[str, ...]) -> None:
            if name in self.files:
                return
            if name in chain:
                raise ValueError(f"import cycle at {name}")
            file = by_name.get(name)
            if file is None:
                try:  # a well-known type: protobuf has it (its module registers it in the default pool)
                    if _well_known(name):
                        importlib.import_module("google.protobuf." + name[len("google/protobuf/") : -len(".proto")] + "_pb2")
                    own = descriptor_pb2.FileDescriptorProto()
                    descriptor_pool.Default().FindFileByName(name).CopyToProto(own)
                except (KeyError, ImportError):
                    raise ValueError(f"{name} is imported but not in the set") from None
                dependencies, data = list(own.dependency), own.SerializeToString()
            else:
                dependencies, data = list(file.dependency), file.SerializeToString()
            for dependency in dependencies:
                add(dependency, (*chain, name))
            self.pool.AddSerializedFile(data)
            self.files[name] = data
            if file is not None:
                added.append(file)

        for file in files:
            add(file.name, ())
        return added


class Catalog:
    """Services, methods and messages. Each service's descriptors live in the `DescriptorPool` of the
    schema it came from (`ServiceInfo.pool`, `MethodInfo.pool`): one per published digest, one for the
    local files (another when a local set redefines a file already loaded)."""

    def __init__(self, services: Sequence[ServiceInfo], problems: Sequence[str] = (), schemas: Sequence[SchemaPool] = ()) -> None:
        self.services = list(services)
        self.problems = list(problems)  # what discovery left out, and why
        self.schemas = list(schemas)

    @property
    def pools(self) -> list[descriptor_pool.DescriptorPool]:
        """Every schema's pool."""
        return [schema.pool for schema in self.schemas]

    # --- Constructors ---------------------------------------------------------------------------

    @classmethod
    def from_descriptor_set(cls, data: bytes) -> Catalog:
        """Every service of a serialized FileDescriptorSet (imports included, well-known types may be
        left out), with subjects as the proto's options give them."""
        catalog = cls([])
        catalog.add_descriptor_set(data)
        return catalog

    def add_descriptor_set(self, data: bytes) -> None:
        """Add the services of another serialized FileDescriptorSet: in the pool of the local files
        loaded before, unless it defines one of their files differently (then in a pool of its own)."""
        files = _files_of(data)
        schema = next((s for s in self.schemas if not s.digest and not s.clashing(files)), None)
        if schema is None:
            schema = SchemaPool()
            self.schemas.append(schema)
        added = schema.load(files)
        self.services.extend(_service_from(schema.pool, described) for described in _services_of(schema.pool, added))

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
        schemas: dict[str, SchemaPool] = {}  # digest -> its own pool (loaded schemas only)
        broken: set[str] = set()  # digests whose bytes arrived (they match) but do not load
        for info in infos:
            digest = info.digest
            if service and not _serves(info, service):
                continue
            if digest and digest not in schemas and digest not in broken:  # one instance per digest; the next one if it fails
                if len(schemas) + len(broken) >= MAX_SCHEMAS:
                    problems.append(f"{info.name} {info.id}: schema not read (more than {MAX_SCHEMAS} schemas)")
                    broken.add(digest)
                    continue
                data = await _fetch_schema(nc, info.name, info.id, digest, timeout, problems)
                if data is not None:
                    schema = SchemaPool(digest)
                    try:
                        schema.load(_files_of(data))
                        schemas[digest] = schema
                    except Exception as error:  # remote bytes: DecodeError, TypeError from the pool, ...
                        problems.append(f"{info.name} {info.id}: schema does not load: {_short(error)}")
                        broken.add(digest)
        found = cls(_merge(schemas, infos, local, problems), problems, list(schemas.values()))
        if local is not None:
            found.schemas.extend(local.schemas)
        return found

    # --- Lookups --------------------------------------------------------------------------------

    def versions(self, name: str, version: str | None = None) -> list[ServiceInfo]:
        """Every service `name` names (proto full or short name, NATS name), the newest version
        first: a service running in versions whose schemas differ is listed once per schema. With
        `version` (a version, or a schema's digest or its start: `sha256:1f2e`), only those of it;
        NOT_FOUND, with the versions there are, when `name` has none of it."""
        found = newest_first(s for s in self.services if _names_service(s, name))
        if version is None:
            return found
        chosen = [s for s in found if _is_version(s, version)]
        if not chosen and found:
            known = ", ".join(dict.fromkeys(s.version for s in found))
            raise RpcError(ErrorCode.NOT_FOUND, f"{name} has no version {version!r} (its versions: {known})")
        return chosen

    def schema_of(self, pool: descriptor_pool.DescriptorPool) -> SchemaPool | None:
        """The schema a pool belongs to (its digest, its files)."""
        return next((schema for schema in self.schemas if schema.pool is pool), None)

    def method(self, name: str, version: str | None = None) -> MethodInfo:
        """A method by `pkg.Service/Method`, `Service/Method`, `Service.Method` or `pkg.Service.Method`
        (the NATS name or the endpoint name work too), of the newest version of its service that has
        it unless `version` names one; NOT_FOUND lists near misses."""
        service_name, method_name = _split_method(name)
        chosen = self.versions(service_name, version)
        for service in chosen:
            for method in service.methods:
                if method_name in (method.name, method.subject.rpartition(".")[2]):
                    return method
        for service in chosen:
            if not service.methods:
                raise RpcError(ErrorCode.NOT_FOUND, f"{service_name} publishes no schema: give its .proto files or a descriptor set (--proto, --descriptor-set)")
        known = list(dict.fromkeys(m.full_name for s in self.services for m in s.methods))  # (versions: once)
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or difflib.get_close_matches(
            method_name, [k.rpartition("/")[2] for k in known], n=3
        )
        hint = f"; did you mean {', '.join(near)}?" if near else ("" if known else "; no method is known (no schema)")
        raise RpcError(ErrorCode.NOT_FOUND, f"no method {name!r}{hint}")

    def service(self, name: str, version: str | None = None) -> ServiceInfo:
        """A service by proto full name, short name or NATS name: its newest version unless `version`
        names one."""
        chosen = self.versions(name, version)
        if chosen:
            return chosen[0]
        raise RpcError(ErrorCode.NOT_FOUND, f"no service {name!r}")

    def message(self, full_name: str, version: str | None = None) -> Descriptor:
        """A message descriptor by full name (a leading dot is fine): from the schema of the newest
        service version that has it (of `version` if given), else from any schema."""
        for descriptor in self._messages(full_name, version):
            return descriptor
        raise RpcError(ErrorCode.NOT_FOUND, f"no message {full_name!r}" + (f" in version {version!r}" if version else ""))

    def messages(self, full_name: str, version: str | None = None) -> list[Descriptor]:
        """Each definition of a message the schemas hold (one per defining file's bytes), the newest
        service version's first (of `version` only, when given): two versions of a schema may define
        it differently."""
        found: list[Descriptor] = []
        seen: set[tuple[str, bytes]] = set()
        for descriptor in self._messages(full_name, version):
            file = descriptor.file.name
            schema = self.schema_of(descriptor.file.pool)
            definition = (file, schema.files.get(file, b"") if schema is not None else b"")
            if definition not in seen:
                seen.add(definition)
                found.append(descriptor)
        return found

    def _messages(self, full_name: str, version: str | None) -> Iterable[Descriptor]:
        name = full_name.lstrip(".")
        pools: list[descriptor_pool.DescriptorPool] = []
        services = newest_first(self.services) if version is None else [s for s in newest_first(self.services) if _is_version(s, version)]
        for pool in [s.pool for s in services if s.pool is not None] + (self.pools if version is None else []):
            if not any(pool is known for known in pools):
                pools.append(pool)
        for pool in pools:
            try:
                yield pool.FindMessageTypeByName(name)
            except KeyError:
                continue


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


def _files_of(data: bytes) -> list[descriptor_pb2.FileDescriptorProto]:
    """The files of a serialized FileDescriptorSet (DecodeError when it is not one)."""
    return list(descriptor_pb2.FileDescriptorSet.FromString(data).file)


def _well_known(name: str) -> bool:
    return name.startswith("google/protobuf/") and name.endswith(".proto")


def newest_first(services: Iterable[ServiceInfo]) -> list[ServiceInfo]:
    """Services by version, the newest first (the order they came in among equal versions)."""
    return sorted(services, key=lambda service: version_order(service.version), reverse=True)


_SEMVER = re.compile(r"v?(\d{1,18})(?:\.(\d{1,18}))?(?:\.(\d{1,18}))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?")


def version_order(version: str) -> tuple[Any, ...]:
    """A sort key of versions: semantic versions by their numbers ("1.10.0" after "1.9.0"), a
    pre-release before its release; any other text before them, by itself."""
    match = _SEMVER.fullmatch(version)
    if match is None:
        return (0, (), False, version)
    numbers = tuple(int(number or 0) for number in match.group(1, 2, 3))
    pre = match.group(4)
    return (1, numbers, pre is None, pre or "")


def _is_version(service: ServiceInfo, version: str) -> bool:
    """Whether `version` picks `service`: its version, or its schema's digest (or a start of it)."""
    return service.version == version or (version.startswith("sha256:") and len(version) > 7 and service.digest.startswith(version))


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
    version = version or service.get("version") or "1.0.0"
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
                version=version,
            )
        )
    return ServiceInfo(
        full_name=described.full_name,
        nats_name=nats_name or service.get("name") or described.name,
        version=version,
        ids=list(ids),
        subject_prefix=prefix,
        methods=methods,
        description=service.get("description", ""),
        digest=digest,
        endpoints=list(endpoints),
        options=options,
        pool=pool,
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
    schemas: Mapping[str, SchemaPool],
    infos: list[_Instance],
    local: Catalog | None,
    problems: list[str],
) -> list[ServiceInfo]:
    """One ServiceInfo per (NATS name, version, proto service, schema): instances grouped, subjects
    from INFO, descriptors from the pool of the schema they published (else of the local files)."""
    groups: dict[tuple[str, str, str, str], list[_Instance]] = {}
    for info in infos:
        source = info.digest if info.digest in schemas else ""  # "": the local files, or no schema
        full_names = {m.split("/")[0] for m in info.methods.values()} if source else set()
        if not full_names and local is not None:
            for service in local.services:
                if info.name in (service.nats_name, service.full_name.rpartition(".")[2]):
                    full_names.add(service.full_name)
        for full_name in sorted(full_names) or [""]:
            groups.setdefault((info.name, info.version, full_name, source), []).append(info)
    services: list[ServiceInfo] = []
    for (name, version, full_name, source), members in sorted(groups.items(), key=lambda group: (group[0][0], version_order(group[0][1]), group[0][2:])):
        first = members[0]
        ids = [m.id for m in members]
        pool = schemas[source].pool if source else _local_pool(local, full_name)
        if full_name and pool is not None:
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
                services.append(_service_from(pool, described, subjects, name, version, ids, source, first.endpoints))
                continue
        prefix = _common_prefix([s for _, s in first.endpoints])
        services.append(ServiceInfo("", name, version, ids, prefix, [], first.description, first.digest, first.endpoints))
    if local is not None:  # local services no instance answered for: callable by their proto subjects
        seen = {s.full_name for s in services}
        services.extend(s for s in local.services if s.full_name not in seen)
    return services


def _local_pool(local: Catalog | None, full_name: str) -> descriptor_pool.DescriptorPool | None:
    """The pool of the local files that define service `full_name` (the first, if several do)."""
    for service in local.services if local is not None else ():
        if service.full_name == full_name and service.pool is not None:
            return service.pool
    return None


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
