"""The betterproto2 backend of the generator (plugin parameter `messages=betterproto2`; a prototype
of the migration in docs/BETTERPROTO2.md, not yet the default). Every call into betterproto2_compiler
(0.10) lives here; our NATS model (options, persistence) is still read with betterproto 2.0.0b7's
descriptor classes by `adapter`, so the request is parsed twice until `model`/`options` move too.

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

from . import __version__, codecgen_bp2
from .model import GenerationError, ServiceModel

_BP2_TEMPLATES = pathlib.Path(str(bp2_models.__file__)).parent.parent / "templates"
_OUR_TEMPLATES = pathlib.Path(__file__).parent / "templates"
GOOGLE = "google.protobuf"


class _Docstring:
    """A service or method as our template reads it: `comment` as an indented docstring (betterproto
    2.0.0b7's form), from betterproto2's plain comment text (already escaped by it)."""

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


def _settings(params: Any) -> Settings:
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


def build(data: bytes, params: Any, emitted: set[str]) -> tuple[PluginRequestCompiler, set[str]]:
    """betterproto2's model of the request, ready to render; `emitted` plus `google.protobuf` when used."""
    request = CodeGeneratorRequest.parse(data)
    compiler = PluginRequestCompiler(plugin_request_obj=request)
    settings = _settings(params)
    for file in request.proto_file:
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
    if any(_uses_google(compiler.output_packages[name]) for name in emitted) and GOOGLE in compiler.output_packages:
        names.add(GOOGLE)
    return compiler, names


def render(package: OutputTemplate, services: list[ServiceModel], imports: tuple[str, ...]) -> str:
    """betterproto2's header and body, then our NATS classes and codecs; formatted with ruff."""
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
        tail += env.get_template("nats.py.j2").render(output_file=package, services=triples)
    codecs = codecgen_bp2.render(package)
    if codecs:
        tail += "\n\n" + codecs
    version = metadata.version("betterproto2_compiler")
    header = env.get_template("header.py.j2").render(output_file=package, version=version, all=exported)
    ours = f"# Generated by protoc-gen-python_nats {__version__} (betterproto-nats codegen API 2, betterproto2 messages).\n"
    header = header.replace("\n_COMPILER_VERSION", "\n" + "\n".join(imports) + "\n\n_COMPILER_VERSION", 1)
    code = ours + header + "\n" + body + "\n\n" + tail
    return format_code(code)


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


def generate(data: bytes, params: Any, emitted: set[str], nats_services: dict[str, list[ServiceModel]], imports: tuple[str, ...], codec_imports: tuple[str, ...]) -> bytes:
    """The CodeGeneratorResponse of the betterproto2 backend."""
    with _comments_indexed():
        compiler, names = build(data, params, emitted)
        response = CodeGeneratorResponse(supported_features=CodeGeneratorResponseFeature.PROTO3_OPTIONAL)
        output_paths: set[pathlib.Path] = set()
        for name in sorted(names):
            package = compiler.output_packages[name]
            module_path = pathlib.Path(*name.split("."), "__init__.py") if name else pathlib.Path("__init__.py")
            output_paths.add(module_path)
            services = nats_services.get(name, [])
            content = render(package, services, imports if services else codec_imports)
            response.file.append(CodeGeneratorResponseFile(name=str(module_path), content=content))
    init_files = {d / "__init__.py" for p in output_paths for d in p.parents} - output_paths
    for init_file in sorted(init_files):
        response.file.append(CodeGeneratorResponseFile(name=str(init_file)))
    pool = "import betterproto2\n\ndefault_message_pool = betterproto2.MessagePool()\n"
    response.file.append(CodeGeneratorResponseFile(name="message_pool.py", content=pool))
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
