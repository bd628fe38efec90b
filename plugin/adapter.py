"""Everything that touches betterproto2's compiler (betterproto2_compiler 0.10) lives here: parsing the
request, building its model, rendering its templates around ours, and formatting.

Each emitted module is: betterproto2's header (which imports everything a module might use; ruff drops
what is unused) and body (messages, enums, its trailing cross-package imports), then our NATS classes
and codecs, which name other packages' classes at import time and so must follow those imports."""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
import sys
from importlib import metadata
from typing import Any, Iterator, cast

import jinja2
from betterproto2_compiler.compile.naming import pythonize_class_name, pythonize_field_name, pythonize_method_name
from betterproto2_compiler.lib.google.protobuf.compiler import (
    CodeGeneratorRequest,
    CodeGeneratorResponse,
    CodeGeneratorResponseFeature,
    CodeGeneratorResponseFile,
)
from betterproto2_compiler.plugin import models as bp2_models
from betterproto2_compiler.plugin.models import OutputTemplate, PluginRequestCompiler
from betterproto2_compiler.plugin.parser import read_protobuf_service, read_protobuf_type, traverse
from betterproto2_compiler.settings import ClientGeneration, ServerGeneration, Settings

from . import __version__, bufcheck, codecgen, reflect
from .model import GenerationError, ServiceModel, read_services

OPTIONS_PACKAGE = "natsmicro"
OPTIONS_FILE = "natsmicro/options.proto"
GOOGLE = "google.protobuf"
_BP2_TEMPLATES = pathlib.Path(str(bp2_models.__file__)).parent.parent / "templates"
_OUR_TEMPLATES = pathlib.Path(__file__).parent / "templates"


CODEGEN_API = 2  # the `betterproto_nats._api_v<N>` module generated code imports
RUNTIME_IMPORTS = (f"import betterproto_nats._api_v{CODEGEN_API} as _nats", "from typing import overload as _overload")
CODEC_IMPORTS = RUNTIME_IMPORTS[:1]  # modules without services import the runtime API for their codecs only
# betterproto2's own message_pool.py, its MessagePool call marked for mypy --strict (it is unannotated).
MESSAGE_POOL = (
    "import betterproto2\n\n"
    "default_message_pool = betterproto2.MessagePool()  # type: ignore[no-untyped-call]\n"
)
# betterproto2's methods of the well-known types (Timestamp.from_dict, Struct.to_dict, ...) are partly
# unannotated and use python-dateutil, which has no stubs: mypy --strict is told so in that module only.
WELL_KNOWN_TYPES_MYPY = '# mypy: disable-error-code="no-untyped-def,import-untyped"\n'
_TYPING = ("direct", "root", "310")  # accepted for old buf.gen.yaml files; betterproto2 has one typing style


class Parameters:
    """The plugin parameter: ours (`grpclib=false`) and betterproto2's (`pydantic_dataclasses`, ...)."""

    def __init__(self, text: str) -> None:
        self.grpclib = True
        self.pydantic = False
        self.include_google = False
        for item in filter(None, (part.strip() for part in text.split(","))):
            if item in ("grpclib=false", "grpclib=true"):
                self.grpclib = item.endswith("true")
            elif item.startswith("typing."):
                if item[len("typing.") :] not in _TYPING:
                    raise GenerationError("(plugin parameter)", item, f"typing must be one of {', '.join(_TYPING)}")
            elif item == "pydantic_dataclasses":
                self.pydantic = True
            elif item == "INCLUDE_GOOGLE":
                self.include_google = True
            else:
                raise GenerationError("(plugin parameter)", item, "unknown parameter")


class _Docstring:
    """A service or method as our template reads it: `comment` as an indented docstring, from
    betterproto2's plain comment text (already escaped by it)."""

    def __init__(self, inner: Any, indent: int) -> None:
        self._inner = inner
        self._indent = indent

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def comment(self) -> str:
        text = str(self._inner.comment).strip()
        if not text:
            return ""
        pad = " " * self._indent
        return f'{pad}"""\n' + "\n".join(f"{pad}{line}".rstrip() for line in text.split("\n")) + f'\n{pad}"""'

    @property
    def methods(self) -> list[Any]:
        return [_Docstring(m, self._indent + 4) for m in self._inner.methods]


def _settings(params: Parameters) -> Settings:
    """Our parameters as betterproto2's: grpclib stubs map to its async client and server."""
    stubs = params.grpclib
    return Settings(
        pydantic_dataclasses=params.pydantic,
        google_protobuf_descriptors=False,
        client_generation=ClientGeneration.ASYNC if stubs else ClientGeneration.NONE,
        server_generation=ServerGeneration.ASYNC if stubs else ServerGeneration.NONE,
    )


def _uses_google(package: OutputTemplate) -> bool:
    """Whether a module refers to a well-known type, which betterproto2 generates into the tree."""
    for file in package.input_files:
        for dependency in file.dependency:
            if dependency.startswith("google/protobuf/") and dependency != "google/protobuf/descriptor.proto":
                return True
    return False


def _needed_files(request: CodeGeneratorRequest, emitted: set[str]) -> set[str]:
    """The files of the request that the emitted packages import, directly or not, leaving out what only
    our options file needs (descriptor.proto: thousands of lines of descriptor classes nobody uses)."""
    by_name = {file.name: file for file in request.proto_file}
    needed: set[str] = set()
    todo = [file.name for file in request.proto_file if file.package in emitted]
    while todo:
        name = todo.pop()
        if name in needed or name == OPTIONS_FILE or name not in by_name:
            continue
        needed.add(name)
        todo.extend(by_name[name].dependency)
    return needed


def build(request: CodeGeneratorRequest, params: Parameters, emitted: set[str]) -> tuple[PluginRequestCompiler, set[str]]:
    """betterproto2's model of the request, ready to render; `emitted` plus `google.protobuf` when used.
    The well-known types module holds only the google files the emitted packages need."""
    compiler = PluginRequestCompiler(plugin_request_obj=request)
    settings = _settings(params)
    needed = _needed_files(request, emitted)
    for file in request.proto_file:
        if file.package == GOOGLE and file.name not in needed:
            continue
        package = compiler.output_packages.get(file.package)
        if package is None:
            package = compiler.output_packages[file.package] = OutputTemplate(
                parent_request=compiler, package_proto_obj=file, settings=settings
            )
        package.input_files.append(file)
    for package in compiler.output_packages.values():
        for file in package.input_files:
            for item, path, prefixed in traverse(file):
                read_protobuf_type(source_file=file, item=item, path=path, output_package=package, prefixed_proto_name=prefixed)
    for package in compiler.output_packages.values():
        for file in package.input_files:
            for index, descriptor in enumerate(file.service):
                read_protobuf_service(file, descriptor, index, package)
    for package in compiler.output_packages.values():
        for message in package.messages.values():
            for field in message.fields:
                field.ready()
            message.ready()
        for enum in package.enums.values():
            enum.ready()
        for service in package.services.values():
            for method in service.methods:
                method.ready()
            service.ready()
    names = set(emitted)
    if any(_uses_google(compiler.output_packages[name]) for name in emitted if name in compiler.output_packages):
        names.add(GOOGLE)
    return compiler, names


def render(package: OutputTemplate, services: list[ServiceModel], imports: tuple[str, ...], schema: str = "") -> str:
    """betterproto2's header and body, then our NATS classes (with the module's `schema` for
    reflection, plugin/reflect.py) and codecs; formatted with ruff."""
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        loader=jinja2.FileSystemLoader([str(_BP2_TEMPLATES), str(_OUR_TEMPLATES)]),
        undefined=jinja2.StrictUndefined,
    )
    exported: list[str] = []

    def add_to_all(name: str) -> str:
        exported.append(name)
        return name

    env.filters["add_to_all"] = add_to_all
    env.filters["py"] = repr
    body = env.get_template("template.py.j2").render(output_file=package)
    tail = ""
    if services:
        triples = [
            (s, _Docstring(package.services[s.proto_name], 4), {m.proto_name: m for m in s.methods}) for s in services
        ]
        tail += env.get_template("nats.py.j2").render(output_file=package, services=triples, schema=schema)
    codecs = codecgen.render(package)
    if codecs:
        tail += "\n\n" + codecs
    version = metadata.version("betterproto2_compiler")
    header = env.get_template("header.py.j2").render(output_file=package, version=version, all=exported)
    ours = f"# Generated by protoc-gen-python_nats {__version__} (betterproto-nats codegen API {CODEGEN_API}).\n"
    if package.package_proto_obj.package == GOOGLE:
        ours += WELL_KNOWN_TYPES_MYPY
    header = header.replace("\n_COMPILER_VERSION", "\n" + "\n".join(imports) + "\n\n_COMPILER_VERSION", 1)
    code = ours + header + "\n" + body + "\n\n" + tail
    if package.package_proto_obj.package == GOOGLE:  # matched in its formatted form, formatted again
        return format_code(bytes_value_json(format_code(code)))
    return format_code(code)


# betterproto2 0.10's BytesValue writes its proto3 JSON as raw bytes (json.dumps then fails) and reads
# the base64 text back as it is; proto3 JSON is base64 both ways. Our override of its two methods, in the
# generated well-known types (an upstreamable fix of its template; tests/test_codec.py checks it).
_BYTES_VALUE_FROM = """        if isinstance(value, bytes):
            return cls(value=value)
"""
_BYTES_VALUE_TO = """        return self.value

    @staticmethod
    def from_wrapped(wrapped: bytes)"""


def bytes_value_json(body: str) -> str:
    """The (formatted) google.protobuf module with BytesValue's JSON as base64 (see above)."""
    start = body.find("class BytesValue(")
    end = body.find("\nclass ", start + 1)
    if start < 0:
        return body
    end = len(body) if end < 0 else end
    block = body[start:end]
    if _BYTES_VALUE_FROM not in block or _BYTES_VALUE_TO not in block:
        raise GenerationError("google/protobuf/wrappers.proto", "BytesValue", "betterproto2's template changed: review the JSON override")
    block = block.replace(
        _BYTES_VALUE_FROM,
        _BYTES_VALUE_FROM + "        if isinstance(value, str):  # proto3 JSON: base64 (betterproto-nats)\n"
        "            import base64\n\n            return cls(value=base64.b64decode(value))\n",
    )
    block = block.replace(
        _BYTES_VALUE_TO,
        "        if output_format == betterproto2.OutputFormat.PYTHON:\n            return self.value\n"
        "        import base64  # proto3 JSON: base64 (betterproto-nats)\n\n"
        "        return base64.b64encode(self.value).decode()\n"
        + _BYTES_VALUE_TO.removeprefix("        return self.value\n"),
    )
    return body[:start] + block + body[end:]


def format_code(code: str) -> str:
    """betterproto2's own formatting: ruff sorts imports, drops unused ones and formats."""
    ruff = [sys.executable, "-m", "ruff"]
    try:
        code = subprocess.check_output(
            [*ruff, "check", "--select", "I,F401,TC005,RUF022", "--fix", "--silent", "-"], input=code, encoding="utf-8"
        )
        return subprocess.check_output([*ruff, "format", "-"], input=code, encoding="utf-8")
    except subprocess.CalledProcessError as error:
        raise GenerationError("(output)", "formatting", f"ruff refused the generated code: {error}") from None


def _check_files(request: CodeGeneratorRequest) -> None:
    for file in request.proto_file:
        if file.name not in request.file_to_generate:
            continue
        if file.syntax == "editions":
            raise GenerationError(file.name, "syntax", "editions (edition = \"2023\") are not supported; use proto3")
        if file.package != file.package.lower():
            raise GenerationError(file.name, f"package {file.package}", "package names must be lower case")


def _check_names(package: OutputTemplate, services: list[ServiceModel]) -> None:
    taken = {m.py_name: f"message {m.proto_name}" for m in package.messages.values()}
    taken.update({e.py_name: f"enum {e.proto_name}" for e in package.enums.values()})
    for service in services:
        py_name = pythonize_class_name(service.proto_name)
        generated = [f"{py_name}NatsBase", f"{py_name}NatsClient"]
        if service.error_codes:
            generated.append(f"{py_name}ErrorCode")
        for name in generated:
            if name in taken:
                files = ", ".join(f.name for f in package.input_files)
                raise GenerationError(files, service.proto_name, f"generated class {name} collides with {taken[name]}; rename one")
            taken[name] = f"the generated class of service {service.proto_name}"


def generate(data: bytes) -> bytes:
    """Run the plugin on a serialised CodeGeneratorRequest; returns the serialised response."""
    request = CodeGeneratorRequest.parse(data)
    params = Parameters(request.parameter or "")
    _check_files(request)
    to_generate = set(request.file_to_generate)
    # Packages that own a file to generate are emitted whole (as betterproto2 does); others not at all.
    emitted = {f.package or "" for f in request.proto_file if f.name in to_generate} - {OPTIONS_PACKAGE}
    if not params.include_google:
        emitted.discard(GOOGLE)
    nats_services = read_services(list(request.proto_file), emitted, pythonize_method_name, pythonize_field_name)
    schemas = reflect.schemas(list(request.proto_file), set(nats_services))
    with _comments_indexed():
        compiler, names = build(request, params, emitted)
        response = CodeGeneratorResponse(supported_features=CodeGeneratorResponseFeature.PROTO3_OPTIONAL)
        output_paths: set[pathlib.Path] = set()
        for name in sorted(names):
            package = compiler.output_packages[name]
            module_path = pathlib.Path(*name.split("."), "__init__.py") if name else pathlib.Path("__init__.py")
            output_paths.add(module_path)
            services = nats_services.get(name, [])
            _check_names(package, services)
            content = render(package, services, RUNTIME_IMPORTS if services else CODEC_IMPORTS, schemas.get(name, ""))
            response.file.append(CodeGeneratorResponseFile(name=str(module_path), content=content))
    init_files = {d / "__init__.py" for p in output_paths for d in p.parents} - output_paths
    for init_file in sorted(init_files):
        response.file.append(CodeGeneratorResponseFile(name=str(init_file)))
    if output_paths:  # what betterproto2's modules import from the output root
        response.file.append(CodeGeneratorResponseFile(name="message_pool.py", content=MESSAGE_POOL))
        response.file.append(CodeGeneratorResponseFile(name="py.typed", content=""))
    return bytes(response)


@contextlib.contextmanager
def _comments_indexed() -> Iterator[None]:
    """betterproto2's `get_comment` scans every source location per item (quadratic, as 2.0.0b7's was):
    it is given a per-file index of locations by path while we generate."""
    original = bp2_models.get_comment
    files: dict[int, tuple[Any, dict[tuple[int, ...], Any]]] = {}

    def indexed(proto_file: Any, path: list[int]) -> str:
        entry = files.get(id(proto_file))
        if entry is None or entry[0] is not proto_file:
            by_path: dict[tuple[int, ...], Any] = {}
            info = proto_file.source_code_info
            for location in info.location if info is not None else []:
                by_path.setdefault(tuple(location.path), location)
            entry = files[id(proto_file)] = (proto_file, by_path)
        found = entry[1].get(tuple(path))
        if found is None:
            return ""
        return str(original(cast(Any, _OneLocation(found)), path))

    bp2_models.get_comment = indexed
    try:
        yield
    finally:
        bp2_models.get_comment = original


class _OneLocation:
    """A file as betterproto2's `get_comment` reads it (`source_code_info.location`), with one location."""

    def __init__(self, location: Any) -> None:
        self.source_code_info = self
        self.location = [location]


def run(stdin: Any = sys.stdin.buffer, stdout: Any = sys.stdout.buffer) -> int:
    """The protoc plugin protocol: request on stdin, response on stdout; errors on stderr, exit 1."""
    template = bufcheck.strategy_problem()
    if template is not None:
        print(
            f"protoc-gen-python_nats: error: {template}: add `strategy: all` to the protoc-gen-python_nats entry. "
            "betterproto2 writes one module per proto package, and buf's default (one run per folder) "
            "keeps only one folder's messages of a package that spans folders.",
            file=sys.stderr,
        )
        return 1
    try:
        stdout.write(generate(stdin.read()))
    except GenerationError as error:
        print(f"protoc-gen-python_nats: error: {error}", file=sys.stderr)
        return 1
    return 0
