"""`google.api.http` annotations, as grpc-gateway users write them: a method's own routes (verb, path
template with variables, `body`, `response_body`, `additional_bindings`), the request built from path
variables, query parameters and the body."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..core.errors import ErrorCode, RpcError
from ..core.headers import clip
from ..reflection.catalog import Catalog, MethodInfo, newest_first
from ..schema.descriptors import wire_fields

HTTP_EXTENSION = 72295728  # google.api.http on google.protobuf.MethodOptions
VERBS = ("get", "put", "post", "delete", "patch")
RESERVED_QUERY = frozenset({"timeout"})  # the gateway's own query parameters


@dataclass(frozen=True)
class Binding:
    """One route of a method: `verb` (upper case), the path `template`, its compiled `pattern`, the
    field path of each variable (by group name), `body` ("*", a field, or "" for none) and
    `response_body` (a field of the answer, or "")."""

    method: "MethodInfo"
    verb: str
    template: str
    pattern: re.Pattern[str]
    variables: dict[str, str]
    body: str
    response_body: str

    def request(self, values: Mapping[str, str], query: Iterable[tuple[str, str]], body: Any) -> dict[str, Any]:
        """The request's JSON value: the body where `body` says, then the path variables, then the
        query parameters (fields not bound otherwise; repeated fields take several)."""
        descriptor = self.method.input
        if self.body == "*":
            if not isinstance(body, dict):
                raise RpcError(ErrorCode.INVALID_ARGUMENT, "request body: a JSON object is needed")
            message: dict[str, Any] = body
        else:
            message = {}
            if self.body:
                _set(message, descriptor, self.body.split("."), body, raw=False)
        for group, path in self.variables.items():
            _set(message, descriptor, path.split("."), values[group], raw=True)
        if self.body != "*":
            for name, value in query:
                if name not in RESERVED_QUERY:
                    _set(message, descriptor, name.split("."), value, raw=True, append=True)
        return message

    def answer(self, value: Any) -> Any:
        """The part of an answer's JSON value that `response_body` names (all of it by default)."""
        if not self.response_body or not isinstance(value, dict):
            return value
        field = self.method.output.fields_by_name.get(self.response_body)
        key = field.json_name if field is not None else self.response_body
        return value.get(key)

    def path_parameters(self) -> list[str]:
        return list(self.variables.values())


MAX_FIELD_PATH = 32  # names in a dotted field path of a query parameter or an annotation, at most


def _field(descriptor: Descriptor, name: str) -> FieldDescriptor:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    if field is None:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{descriptor.full_name} has no field {clip(repr(name), 80)}")
    return field


def _scalar(field: FieldDescriptor, text: str) -> Any:
    """A path or query value as the JSON the mapping parses (numbers, enums, bytes, well-known
    types read from strings as they are; booleans need true/false)."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{field.name}: true or false, not {clip(repr(text), 40)}")
        return text == "true"
    if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.full_name.startswith("google.protobuf."):
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{field.name} is a message: set its fields ({field.name}.x=...) or send it in the body")
    return text


def _set(message: dict[str, Any], descriptor: Descriptor, path: list[str], value: Any, *, raw: bool, append: bool = False) -> None:
    """Sets the field at `path` (proto names or JSON names, dotted) of a JSON message; `raw`: value
    is text from a path or query, read by the field's type."""
    if len(path) > MAX_FIELD_PATH:  # (a query name is the client's: bounded before the recursion)
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"a field path of more than {MAX_FIELD_PATH} names")
    field = _field(descriptor, path[0])
    if len(path) > 1:
        if field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{field.name} has no fields to set")
        inner = message.setdefault(field.name, {})
        if not isinstance(inner, dict):
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{field.name} is set twice")
        _set(inner, field.message_type, path[1:], value, raw=raw, append=append)
        return
    if raw:
        value = _scalar(field, value)
    if field.is_repeated and append:
        message.setdefault(field.name, []).append(value)
    else:
        message[field.name] = value


_SEGMENT = re.compile(r"\*\*|\*|[^/{}*:]+")


def compile_template(template: str) -> tuple[re.Pattern[str], dict[str, str]]:
    """A path template (`/v1/{name=shelves/*}/books/{id}:publish`) as a regex with one group per
    variable, and each group's field path. ValueError for a template that does not parse."""
    if not template.startswith("/"):
        raise ValueError(f"path template {template!r} must start with /")
    path, verb = template, ""
    tail = template.rsplit("/", 1)[-1]
    if ":" in tail and "}" not in tail[tail.rindex(":") :]:
        cut = template.rindex(":")
        path, verb = template[:cut], template[cut:]
    tokens = re.findall(r"\{[^{}]*\}|[^/{}]+", path[1:])
    if "/".join(tokens) != path[1:]:
        raise ValueError(f"path template {template!r} does not parse")
    variables: dict[str, str] = {}
    parts = []
    for token in tokens:
        if not token.startswith("{"):
            parts.append(_segments(token, template))
            continue
        name, _, inner = token[1:-1].partition("=")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
            raise ValueError(f"path template {template!r}: bad variable {name!r}")
        group = f"v{len(variables)}"
        variables[group] = name
        parts.append(f"(?P<{group}>{_segments(inner or '*', template)})")
    return re.compile("/" + "/".join(parts) + re.escape(verb)), variables


def _segments(text: str, template: str) -> str:
    parts = []
    for segment in text.split("/"):
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"path template {template!r}: bad segment {segment!r}")
        parts.append("[^/]+" if segment == "*" else ".+" if segment == "**" else re.escape(segment))
    return "/".join(parts)


def _http_rule_bytes(options: Any) -> list[bytes]:
    """The serialized google.api.http rules in a method's options (field 72295728)."""
    data: bytes = options.SerializeToString()
    return [payload for number, _, _, payload in wire_fields(data) if number == HTTP_EXTENSION and payload is not None]


_VERSION = re.compile(r"[0-9A-Za-z._+-]{1,64}")  # a version that may name a path: `pkg.Service@<version>/Method`


def method_paths(catalog: "Catalog") -> dict[str, "MethodInfo"]:
    """Each method's default path (without its `/`): `pkg.Service/Method` is the newest version's
    of the services that have it; where a service runs in several versions whose schemas differ, each
    version's method is at `pkg.Service@<version>/Method` too."""
    services = newest_first(s for s in catalog.services if s.methods)
    paths: dict[str, MethodInfo] = {}
    for service in services:
        for method in service.methods:
            paths.setdefault(method.full_name, method)
    versions = Counter(service.full_name for service in services)
    for service in services:
        if versions[service.full_name] > 1 and _VERSION.fullmatch(service.version):
            for method in service.methods:
                paths.setdefault(f"{service.full_name}@{service.version}/{method.name}", method)
    return paths


def bindings_of(catalog: "Catalog") -> tuple[list[Binding], list[str]]:
    """Every route the catalog's `google.api.http` annotations declare (additional bindings too), the
    newest version's first (a route two versions declare goes to the newest), and a line per
    annotation that could not be used. Each method's rules are read in its own schema's pool."""
    out: list[Binding] = []
    problems: list[str] = []
    rule_classes: dict[int, Any] = {}  # by id of the pool (the catalog holds the pools)
    for service in newest_first(catalog.services):
        for method in service.methods:
            pool = method.pool
            if id(pool) not in rule_classes:
                try:
                    rule_classes[id(pool)] = message_factory.GetMessageClass(pool.FindMessageTypeByName("google.api.HttpRule"))
                except KeyError:
                    rule_classes[id(pool)] = None  # this schema does not import google/api/http.proto
            rule_class = rule_classes[id(pool)]
            if rule_class is None:
                continue
            try:
                described = pool.FindServiceByName(method.service).methods_by_name[method.name]
            except KeyError:
                continue
            for raw in _http_rule_bytes(described.GetOptions()):
                rule = json_format.MessageToDict(rule_class.FromString(raw), preserving_proto_field_name=True)
                for one in [rule, *rule.get("additional_bindings", [])]:
                    try:
                        out.append(_binding(method, one))
                    except ValueError as error:
                        problems.append(f"{method.full_name}: google.api.http ignored: {error}")
    return out, problems


def _binding(method: "MethodInfo", rule: dict[str, Any]) -> Binding:
    if method.shape not in ("unary", "server"):
        raise ValueError(f"{method.shape} streams are served on /{method.full_name} only")
    verb = next((v for v in VERBS if rule.get(v)), None)
    template = rule[verb] if verb else rule.get("custom", {}).get("path", "")
    verb_name = verb.upper() if verb else str(rule.get("custom", {}).get("kind", "")).upper()
    if not template or not verb_name:
        raise ValueError("no verb and path")
    pattern, variables = compile_template(template)
    body = str(rule.get("body", ""))
    for path in [*variables.values(), *([body] if body not in ("", "*") else [])]:
        descriptor = method.input
        for name in path.split("."):
            try:
                field = _field(descriptor, name)
            except RpcError as error:
                raise ValueError(error.message) from None
            descriptor = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else descriptor
    return Binding(method, verb_name, template, pattern, variables, body, str(rule.get("response_body", "")))


def default_gets(paths: Mapping[str, "MethodInfo"]) -> list[Binding]:
    """`GET /{pkg.Service}/{Method}?field=value...` on every default path (`method_paths`) of a unary
    or server-streaming method: the request from query parameters (as grpc-gateway maps them), so
    that a browser's EventSource can open a server stream."""
    return [
        Binding(method, "GET", f"/{path}", re.compile(re.escape(f"/{path}")), {}, "", "")
        for path, method in paths.items()
        if method.shape in ("unary", "server")
    ]


def match(bindings: Iterable[Binding], verb: str, path: str) -> tuple[Binding, dict[str, str]] | None:
    """The first binding for `verb` whose template matches `path`, with its variables' values."""
    for binding in bindings:
        if binding.verb == verb:
            found = binding.pattern.fullmatch(path)
            if found:
                return binding, found.groupdict()
    return None
