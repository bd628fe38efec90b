"""OpenAPI 3.1 from the descriptors: one path per method, a JSON Schema per message as the proto3
JSON mapping writes it, streams described as such (`x-rpc-shape`, SSE / NDJSON media types, a
WebSocket upgrade for bidi)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..reflection.catalog import newest_first

if TYPE_CHECKING:
    from ..reflection.catalog import Catalog, MethodInfo
    from .http_rules import Binding

_INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
_UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
_UINT64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}

# Well-known types have their own JSON forms (the proto3 JSON mapping).
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
    "google.protobuf.DoubleValue": {"type": ["number", "string", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "string", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "integer", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "uint32"},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}

ERROR_SCHEMA = {
    "type": "object",
    "description": "An RPC error: its code (INVALID_ARGUMENT, NOT_FOUND, ... or a service's own) and message; the HTTP status is grpc-gateway's for the code.",
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
    "required": ["code", "message"],
}


def _ref(full_name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{full_name}"}


class Schemas:
    """JSON Schemas of messages, each once under components/schemas, references between them. A
    message is named by its full name; the same name from another schema (another version of the
    service) by `<full name>-<version>`, the version `labels` gives its pool (by id)."""

    def __init__(self, labels: Mapping[int, str] | None = None) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        self.labels = dict(labels or {})
        self.names: dict[tuple[int, str], str] = {}  # (id of its pool, full name) -> component name

    def name(self, descriptor: Descriptor) -> str:
        """The component name of `descriptor` (of its own schema's pool)."""
        key = (id(descriptor.file.pool), descriptor.full_name)
        name = self.names.get(key)
        if name is None:
            name = descriptor.full_name
            if name in self.schemas:  # taken by another schema's message of this name
                base = f"{name}-{re.sub(r'[^A-Za-z0-9._-]', '_', self.labels.get(key[0], ''))}".rstrip("-")
                name, n = base, 2
                while name in self.schemas:
                    name, n = f"{base}.{n}", n + 1
            self.names[key] = name
        return name

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        """A reference to `descriptor`'s schema (or the inline form of a well-known type)."""
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = self.name(descriptor)
        if name not in self.schemas:
            self.schemas[name] = {}  # placed first: recursive messages refer to it
            properties = {field.json_name: self.field(field) for field in descriptor.fields}
            schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
            oneofs = [o for o in descriptor.oneofs if not (len(o.fields) == 1 and o.fields[0].has_presence and o.name.startswith("_"))]
            if oneofs:
                schema["description"] = "; ".join(f"at most one of {', '.join(f.json_name for f in o.fields)} (oneof {o.name})" for o in oneofs)
            self.schemas[name] = schema
        return _ref(name)

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            value = field.message_type.fields_by_name["value"]
            return {"type": "object", "additionalProperties": self.single(value)}
        if field.is_repeated:
            return {"type": "array", "items": self.single(field)}
        return self.single(field)

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        kind = field.type
        if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
            return self.message(field.message_type)
        if kind == FieldDescriptor.TYPE_ENUM:
            names = [value.name for value in field.enum_type.values]
            return {"anyOf": [{"type": "string", "enum": names}, {"type": "integer"}], "description": f"enum {field.enum_type.full_name}"}
        if kind in _INT32:
            return {"type": "integer", "format": "int32"}
        if kind in _UINT32:
            return {"type": "integer", "format": "uint32", "minimum": 0}
        if kind in _INT64:
            return {"type": ["string", "integer"], "format": "int64", "description": "64-bit: a decimal string in answers"}
        if kind in _UINT64:
            return {"type": ["string", "integer"], "format": "uint64", "description": "64-bit: a decimal string in answers"}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return {"type": ["number", "string"], "format": "double" if kind == FieldDescriptor.TYPE_DOUBLE else "float"}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        return {"type": "string"}


def _operation_id(tag: str, method: "MethodInfo") -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{tag}_{method.name}")


def _parameters(passed_headers: Iterable[str]) -> list[dict[str, Any]]:
    deadline = "The call's deadline, in seconds (2.5) or gRPC form (500m, 10S); the query parameter wins over the headers."
    params: list[dict[str, Any]] = [
        {"name": "timeout", "in": "query", "required": False, "schema": {"type": "string"}, "description": deadline},
        {"name": "Grpc-Timeout", "in": "header", "required": False, "schema": {"type": "string"}, "description": deadline},
        {"name": "X-Timeout", "in": "header", "required": False, "schema": {"type": "string"}, "description": deadline},
    ]
    for name in passed_headers:
        if name.lower() == "authorization":
            continue  # described by the security scheme instead (OpenAPI ignores it as a parameter)
        params.append({"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": "passed on to the service as a call header"})
    return params


def _operation(method: "MethodInfo", schemas: Schemas, parameters: list[dict[str, Any]], tag: str) -> tuple[str, dict[str, Any]]:
    """(HTTP method, operation) of one RPC method; `tag`: `pkg.Service`, or `pkg.Service@version` on
    a version's own path."""
    request, answer = schemas.message(method.input), schemas.message(method.output)
    error = {"description": "the call failed: the status is grpc-gateway's for the code", "content": {"application/json": {"schema": _ref("betterproto_nats.gateway.Error")}}}
    op: dict[str, Any] = {
        "operationId": _operation_id(tag, method),
        "tags": [tag],
        "parameters": parameters,
        "x-rpc-shape": method.shape,
        "x-rpc-method": method.full_name,
        "x-nats-subject": method.subject,
        "x-rpc-input": method.input.full_name,
        "x-rpc-output": method.output.full_name,
        "x-rpc-version": method.version,
    }
    if method.chunked:
        op["x-rpc-chunked"] = True
    json_in = {"required": True, "content": {"application/json": {"schema": request}}}
    if method.shape == "unary":
        op["summary"] = f"{method.name} (unary)"
        op["requestBody"] = json_in
        op["responses"] = {"200": {"description": "the answer", "content": {"application/json": {"schema": answer}}}, "default": error}
        return "post", op
    if method.shape == "server":
        op["summary"] = f"{method.name} (server stream)"
        op["description"] = (
            "A stream of answers as they arrive: server-sent events (each `data:` line one message; `event: error` "
            "with {code, message} when the stream fails; `event: end` at its end), or NDJSON with "
            'Accept: application/x-ndjson (each line {"result": message} or {"error": {code, message}}). '
            "An error before the first message gets its HTTP status instead."
        )
        op["requestBody"] = json_in
        op["responses"] = {
            "200": {
                "description": "the stream",
                "content": {
                    "text/event-stream": {"schema": {"type": "string"}, "x-stream-item": answer},
                    "application/x-ndjson": {
                        "schema": {"type": "object", "properties": {"result": answer, "error": _ref("betterproto_nats.gateway.Error")}},
                        "x-stream-item": answer,
                    },
                },
            },
            "default": error,
        }
        if method.chunked:
            op["description"] += " A chunked download: Accept: application/octet-stream gives its bytes alone (an error after the start cuts the connection)."
            op["responses"]["200"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
        return "post", op
    if method.shape == "client":
        op["summary"] = f"{method.name} (client stream)"
        op["description"] = "The requests as NDJSON (one JSON message per line), read as they arrive; the answer once the body ends."
        op["requestBody"] = {"required": True, "content": {"application/x-ndjson": {"schema": request, "x-stream-item": request}}}
        if method.chunked:
            op["description"] += " A chunked upload: an application/octet-stream body is sent as chunks of the method's size."
            op["requestBody"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}
        op["responses"] = {"200": {"description": "the answer", "content": {"application/json": {"schema": answer}}}, "default": error}
        return "post", op
    op["summary"] = f"{method.name} (bidirectional, WebSocket)"
    op["description"] = (
        "Open a WebSocket on this path: each text frame one JSON request, an empty frame ends the client's "
        "direction; each answer one text frame. The call's end closes with 1000; an error with 4000 + its gRPC "
        "number and `CODE: message` as the reason; closing the socket cancels the call."
    )
    op["x-websocket"] = {"request": request, "answer": answer}
    op["responses"] = {"101": {"description": "switching to the WebSocket"}, "default": error}
    return "get", op


def _annotated(binding: "Binding", schemas: Schemas, parameters: list[dict[str, Any]], tag: str) -> tuple[str, str, dict[str, Any]]:
    """(path, HTTP method, operation) of a `google.api.http` route."""
    method = binding.method
    _, op = _operation(method, schemas, parameters, tag)
    op = {**op, "operationId": f"{op['operationId']}_{binding.verb.lower()}_{len(binding.template)}"}
    path = re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", binding.template)
    bound = set(binding.path_parameters())
    params = list(parameters)
    for name in binding.path_parameters():
        params.append({"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": f"field {name} of the request"})
    if binding.body != "*":
        for field in method.input.fields:
            if field.name in bound or field.name == binding.body or field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
                continue
            schema = schemas.field(field)
            params.append({"name": field.name, "in": "query", "required": False, "schema": schema, **({"explode": True} if field.is_repeated else {})})
    op["parameters"] = params
    op.pop("requestBody", None)
    if binding.body:
        body_schema = schemas.message(method.input) if binding.body == "*" else _body_field(method.input, binding.body, schemas)
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body_schema}}}
    if binding.response_body and method.shape == "unary":
        field = method.output.fields_by_name.get(binding.response_body)
        if field is not None:
            op["responses"]["200"]["content"]["application/json"]["schema"] = schemas.field(field)
    op["x-http-rule"] = f"{binding.verb} {binding.template}"
    return path, binding.verb.lower(), op


def _body_field(descriptor: Descriptor, path: str, schemas: Schemas) -> dict[str, Any]:
    names = path.split(".")
    for name in names[:-1]:
        descriptor = descriptor.fields_by_name[name].message_type
    return schemas.field(descriptor.fields_by_name[names[-1]])


def openapi_document(
    catalog: "Catalog", *, title: str, passed_headers: Iterable[str], methods: Mapping[str, "MethodInfo"], bindings: Iterable["Binding"] = ()
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `catalog`'s methods on their default paths (`methods`, by path
    without its `/`: `http_rules.method_paths`), and of its `google.api.http` routes. Each message's
    schema comes from its own schema's pool: two versions' messages of one name are two schemas."""
    from .._version import __version__

    services = {id(method): service for service in catalog.services for method in service.methods}
    labels: dict[int, str] = {}  # a pool's label: the newest version of the services it describes
    for described in newest_first(catalog.services):
        if described.pool is not None:
            labels.setdefault(id(described.pool), described.version)
    schemas = Schemas(labels)
    parameters = _parameters(passed_headers)
    paths: dict[str, Any] = {}
    tags: dict[str, dict[str, Any]] = {}
    tag_of: dict[int, str] = {}  # a method's tag on its first path (the plain one when it has one)
    for path, method in methods.items():
        tag = path.rpartition("/")[0]
        tag_of.setdefault(id(method), tag)
        service = services.get(id(method))
        if tag not in tags and service is not None:
            tags[tag] = {"name": tag, "description": service.description or f"NATS service {service.nats_name} {service.version}"}
        verb, op = _operation(method, schemas, parameters, tag)
        paths[f"/{path}"] = {verb: op}
    for binding in bindings:
        path, verb, op = _annotated(binding, schemas, parameters, tag_of.get(id(binding.method), binding.method.service))
        paths.setdefault(path, {}).setdefault(verb, op)
    components: dict[str, Any] = {"schemas": {**schemas.schemas, "betterproto_nats.gateway.Error": ERROR_SCHEMA}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__, "description": "Every method of the services on NATS, over HTTP (betterproto-nats gateway)."},
        "paths": paths,
        "tags": list(tags.values()),
        "components": components,
    }
    if any(name.lower() == "authorization" for name in passed_headers):
        components["securitySchemes"] = {"authorization": {"type": "apiKey", "in": "header", "name": "Authorization", "description": "passed on to the service as a call header"}}
        document["security"] = [{}, {"authorization": []}]
    return document
