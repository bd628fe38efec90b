"""Everything that touches betterproto's compiler lives here (2.0.0b7): parsing the request, building
its model, rendering its templates around ours, and formatting. A betterproto2 backend would replace
this module only."""

from __future__ import annotations

import contextlib
import gc
import pathlib
import sys
from typing import Any, Callable, Iterator, cast

import black
import isort.api
import jinja2
from betterproto.compile.naming import pythonize_class_name, pythonize_field_name, pythonize_method_name
from betterproto.lib.google.protobuf import FileDescriptorProto, SourceCodeInfoLocation
from betterproto.lib.google.protobuf.compiler import (
    CodeGeneratorRequest,
    CodeGeneratorResponse,
    CodeGeneratorResponseFeature,
    CodeGeneratorResponseFile,
)
from betterproto.plugin import models as betterproto_models
from betterproto.plugin.models import OutputTemplate, PluginRequestCompiler, monkey_patch_oneof_index
from betterproto.plugin.parser import read_protobuf_service, read_protobuf_type, traverse
from betterproto.plugin.typing_compiler import (
    DirectImportTypingCompiler,
    NoTyping310TypingCompiler,
    TypingImportTypingCompiler,
)

from . import bufcheck, codecgen, reflect
from . import __version__
from .model import GenerationError, ServiceModel, read_services

OPTIONS_PACKAGE = "natsmicro"
_BETTERPROTO_TEMPLATES = pathlib.Path(str(__import__("betterproto").__file__)).parent / "templates"
_OUR_TEMPLATES = pathlib.Path(__file__).parent / "templates"
_TYPING = {
    "direct": DirectImportTypingCompiler,
    "root": TypingImportTypingCompiler,
    "310": NoTyping310TypingCompiler,
}
# betterproto's service stubs declare these for grpclib; without grpclib they must go too.
_GRPCLIB_TYPE_IMPORTS = {
    "import grpclib.server",
    "from betterproto.grpc.grpclib_client import MetadataLike",
    "from grpclib.metadata import Deadline",
}
CODEGEN_API = 2  # the `betterproto_nats._api_v<N>` module generated code imports
RUNTIME_IMPORTS = (f"import betterproto_nats._api_v{CODEGEN_API} as _nats", "from typing import overload as _overload")
CODEC_IMPORTS = RUNTIME_IMPORTS[:1]  # modules without services import the runtime API for their codecs only


class Parameters:
    """The plugin parameter: ours (`grpclib=false`) and betterproto's (`typing.310`, ...)."""

    def __init__(self, text: str) -> None:
        self.grpclib = True
        self.typing = "310"  # the only typing mode that survives messages named Optional or fields named typing
        self.pydantic = False
        self.include_google = False
        self.messages = "betterproto"  # `messages=betterproto2`: the prototype backend (docs/BETTERPROTO2.md)
        for item in filter(None, (part.strip() for part in text.split(","))):
            if item in ("grpclib=false", "grpclib=true"):
                self.grpclib = item.endswith("true")
            elif item.startswith("typing."):
                if item[len("typing.") :] not in _TYPING:
                    raise GenerationError("(plugin parameter)", item, f"typing must be one of {', '.join(_TYPING)}")
                self.typing = item[len("typing.") :]
            elif item == "pydantic_dataclasses":
                self.pydantic = True
            elif item in ("messages=betterproto", "messages=betterproto2"):
                self.messages = item.split("=", 1)[1]
            elif item == "INCLUDE_GOOGLE":
                self.include_google = True
            else:
                raise GenerationError("(plugin parameter)", item, "unknown parameter")


class _WithoutServices:
    """An output file as betterproto's templates see it when grpclib stubs are left out."""

    services: list[Any] = []

    def __init__(self, output: OutputTemplate) -> None:
        self._output = output

    def __getattr__(self, name: str) -> Any:
        return getattr(self._output, name)


class _CommentsByPath:
    """betterproto's `get_comment` scans all source locations of a file for each enum value, field and
    message, so generation was quadratic in them (10,000 enum values: 190 s). This finds the location in
    a dict built once per file and hands only it to betterproto's own `get_comment`, which formats it."""

    def __init__(self, original: Callable[[FileDescriptorProto, list[int], int], str]) -> None:
        self._original = original
        # id(file) -> (file, path -> its first location with leading comments): the one get_comment picks.
        self._files: dict[int, tuple[FileDescriptorProto, dict[tuple[int, ...], SourceCodeInfoLocation]]] = {}

    def __call__(self, proto_file: FileDescriptorProto, path: list[int], indent: int = 4) -> str:
        entry = self._files.get(id(proto_file))
        if entry is None or entry[0] is not proto_file:
            by_path: dict[tuple[int, ...], SourceCodeInfoLocation] = {}
            for location in proto_file.source_code_info.location:
                if location.leading_comments:
                    by_path.setdefault(tuple(location.path), location)
            entry = self._files[id(proto_file)] = (proto_file, by_path)
        found = entry[1].get(tuple(path))
        if found is None:
            return ""  # what get_comment returns when no location matches
        return self._original(cast(FileDescriptorProto, _OneLocation(found)), path, indent)


class _OneLocation:
    """A file as `get_comment` reads it (`source_code_info.location`) holding one location: cheaper
    than a FileDescriptorProto, whose construction costs more than the lookup it replaces."""

    def __init__(self, location: SourceCodeInfoLocation) -> None:
        self.source_code_info = self
        self.location = [location]


@contextlib.contextmanager
def _comments_by_path() -> Iterator[None]:
    """betterproto's model looks comments up through its module's `get_comment`: indexed while we generate."""
    original = betterproto_models.get_comment
    betterproto_models.get_comment = _CommentsByPath(original)
    try:
        yield
    finally:
        betterproto_models.get_comment = original


def _check_files(request: CodeGeneratorRequest) -> None:
    for file in request.proto_file:
        if file.name not in request.file_to_generate:
            continue
        if file.syntax == "editions":
            raise GenerationError(file.name, "syntax", "editions (edition = \"2023\") are not supported; use proto3")
        if file.package != file.package.lower():
            raise GenerationError(file.name, f"package {file.package}", "package names must be lower case")


def generate(data: bytes) -> bytes:
    """Run the plugin on a serialised CodeGeneratorRequest; returns the serialised response."""
    with _comments_by_path():
        return _generate(data)


def _generate(data: bytes) -> bytes:
    monkey_patch_oneof_index()  # type: ignore[no-untyped-call]  # betterproto leaves it untyped
    request = CodeGeneratorRequest()
    request.parse(data)
    params = Parameters(request.parameter)
    _check_files(request)
    to_generate = set(request.file_to_generate)
    # Packages that own a file to generate are emitted whole (as betterproto does); others not at all.
    emitted = {f.package for f in request.proto_file if f.name in to_generate} - {OPTIONS_PACKAGE}
    if not params.include_google:
        emitted.discard("google.protobuf")
    # Read names, options and schemas before betterproto builds its model: it renames descriptors in place.
    nats_services = read_services(list(request.proto_file), emitted, pythonize_method_name, pythonize_field_name)
    schemas = reflect.schemas(list(request.proto_file), set(nats_services))
    if params.messages == "betterproto2":
        from . import adapter_bp2  # the compiler extra of betterproto2 is needed only here

        return adapter_bp2.generate(data, params, emitted, nats_services, RUNTIME_IMPORTS, CODEC_IMPORTS)

    compiler = PluginRequestCompiler(plugin_request_obj=request)
    # betterproto annotates OutputTemplate.input_files as List[str]; it holds the file descriptors.
    files_of: dict[str, list[FileDescriptorProto]] = {}
    for file in request.proto_file:
        package = compiler.output_packages.get(file.package)
        if package is None:
            package = OutputTemplate(parent_request=compiler, package_proto_obj=file)
            package.typing_compiler = _TYPING[params.typing]()
            package.pydantic_dataclasses = params.pydantic
            compiler.output_packages[file.package] = package
        package.input_files.append(file)  # type: ignore[arg-type]
        files_of.setdefault(file.package, []).append(file)
    for name, package in compiler.output_packages.items():
        for file in files_of[name]:
            for item, item_path in traverse(file):
                read_protobuf_type(source_file=file, item=item, path=item_path, output_package=package)  # type: ignore[arg-type]
    for name, package in compiler.output_packages.items():
        for file in files_of[name]:
            for index, service in enumerate(file.service):
                read_protobuf_service(service, index, package)

    response = CodeGeneratorResponse(supported_features=CodeGeneratorResponseFeature.FEATURE_PROTO3_OPTIONAL)
    output_paths: set[pathlib.Path] = set()
    for name in sorted(emitted):
        package = compiler.output_packages[name]
        module_path = pathlib.Path(*name.split("."), "__init__.py") if name else pathlib.Path("__init__.py")
        output_paths.add(module_path)
        content = render(package, nats_services.get(name, []), params, schemas.get(name, ""))
        response.file.append(CodeGeneratorResponseFile(name=str(module_path), content=content))
    init_files = {d / "__init__.py" for p in output_paths for d in p.parents} - output_paths
    for init_file in sorted(init_files):
        response.file.append(CodeGeneratorResponseFile(name=str(init_file)))
    return bytes(response)


def _check_names(package: OutputTemplate, services: list[ServiceModel]) -> None:
    taken = {m.py_name: f"message {m.proto_name}" for m in package.messages}
    taken.update({e.py_name: f"enum {e.proto_name}" for e in package.enums})
    for service in services:
        py_name = pythonize_class_name(service.proto_name)
        generated = [f"{py_name}NatsBase", f"{py_name}NatsClient"]
        if service.error_codes:
            generated.append(f"{py_name}ErrorCode")
        for name in generated:
            if name in taken:
                file = package.input_filenames
                raise GenerationError(
                    ", ".join(file), service.proto_name, f"generated class {name} collides with {taken[name]}; rename one"
                )
            taken[name] = f"the generated class of service {service.proto_name}"


def render(package: OutputTemplate, services: list[ServiceModel], params: Parameters, schema: str = "") -> str:
    """betterproto's message body, then our NATS classes and the messages' codecs, then betterproto's
    header (which needs the imports all bodies collected); sorted and formatted as betterproto does."""
    _check_names(package, services)
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        loader=jinja2.FileSystemLoader([str(_BETTERPROTO_TEMPLATES), str(_OUR_TEMPLATES)]),
    )
    env.filters["py"] = repr
    betterproto_view: Any = package if params.grpclib else _WithoutServices(package)
    body = env.get_template("template.py.j2").render(output_file=betterproto_view)
    if services:
        by_name = {s.proto_name: s for s in package.services}
        nats = env.get_template("nats.py.j2").render(
            output_file=package,
            schema=schema,
            services=[(s, by_name[s.proto_name], {m.proto_name: m for m in s.methods}) for s in services],
        )
        package.imports.update(RUNTIME_IMPORTS)
        body = body + "\n\n" + nats
    codecs = codecgen.render(package)
    if codecs:
        package.imports.update(CODEC_IMPORTS)
        body = body + "\n\n" + codecs
    if not params.grpclib:
        package.imports_type_checking_only -= _GRPCLIB_TYPE_IMPORTS
    header = env.get_template("header.py.j2").render(output_file=betterproto_view)
    ours = f"# Generated by protoc-gen-python_nats {__version__} (betterproto-nats codegen API {CODEGEN_API}).\n"
    return format_code(ours + header + body)


def format_code(code: str) -> str:
    """isort and black with betterproto's own settings, so our output matches its output. Black runs
    with the cyclic garbage collector paused: its full passes over black's growing syntax tree made
    formatting superlinear (1,000 methods: 30 s, 15 s paused; the process then peaks at 0.6 GB, not 0.3)."""
    code = isort.api.sort_code_string(
        code=code,
        show_diff=False,
        py_version=37,
        profile="black",
        combine_as_imports=True,
        lines_after_imports=2,
        quiet=True,
        force_grid_wrap=2,
        known_third_party=["grpclib", "betterproto"],
    )
    with _collector_paused():
        return black.format_str(src_contents=code, mode=black.Mode())


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """gc.disable() for the block, if it was enabled; memory is freed by reference counting meanwhile."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run(stdin: Any = sys.stdin.buffer, stdout: Any = sys.stdout.buffer) -> int:
    """The protoc plugin protocol: request on stdin, response on stdout; errors on stderr, exit 1."""
    template = bufcheck.strategy_problem()
    if template is not None:
        print(
            f"protoc-gen-python_nats: error: {template}: add `strategy: all` to the protoc-gen-python_nats entry. "
            "betterproto writes one module per proto package, and buf's default (one run per folder) "
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
