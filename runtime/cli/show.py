"""`ls`, `describe` and `stats`: what runs on the account, what a service, method or message looks
like, and how the endpoints are doing; as text or `--json`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from ..core.headers import clip
from ..reflection import jsonmap
from ..reflection.catalog import Catalog, MethodInfo, ServiceInfo, gather_replies, newest_first
from .sources import catalog_of

_TYPES = {
    getattr(FieldDescriptor, name): name[len("TYPE_") :].lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_") and isinstance(getattr(FieldDescriptor, name), int)
}


def add_ls(commands: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser("ls", help="services on the account, their instances and methods")
    sub.add_argument("name", nargs="?", help="only the services of this NATS name")
    sub.add_argument("--json", action="store_true", help="JSON for a machine")
    sub.set_defaults(run=ls)
    return sub


def add_describe(commands: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser("describe", help="a service, method or message: fields, types, options")
    sub.add_argument("name", help="pkg.Service, pkg.Service/Method, pkg.Message (short names work)")
    sub.add_argument("--json", action="store_true", help="JSON for a machine")
    sub.add_argument("--service-version", metavar="VERSION", help="only this version of the service (or its schema: sha256:...); default: every version")
    sub.set_defaults(run=describe)
    return sub


def add_stats(commands: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser("stats", help="per endpoint: calls, errors, refusals, latency, in progress")
    sub.add_argument("name", nargs="?", help="only the services of this NATS name")
    sub.add_argument("--json", action="store_true", help="JSON for a machine (one line per round with --watch)")
    sub.add_argument("--watch", action="store_true", help="redraw live")
    sub.add_argument("--interval", type=float, default=1.0, help="seconds between rounds with --watch")
    sub.add_argument("--count", type=int, default=0, help="rounds with --watch (0: until Ctrl-C)")
    sub.set_defaults(run=stats)
    return sub


# --- ls -------------------------------------------------------------------------------------------


def service_json(service: ServiceInfo) -> dict[str, Any]:
    return {
        "name": service.nats_name,
        "version": service.version,
        "service": service.full_name or None,
        "ids": service.ids,
        "subject_prefix": service.subject_prefix,
        "schema": service.digest or ("local" if service.full_name else None),
        "description": service.description,
        "methods": [{"name": m.full_name, "shape": m.shape, "subject": m.subject, "chunked": m.chunked} for m in service.methods],
        "endpoints": [{"name": name, "subject": subject} for name, subject in service.endpoints],
    }


async def ls(args: argparse.Namespace, nc: NATS) -> int:
    catalog = await catalog_of(args, nc, args.name)
    services = [s for s in catalog.services if not args.name or s.nats_name == args.name]
    if args.json:
        print(jsonmap.dumps([service_json(s) for s in services], indent=2))
        return 0
    if not services:
        print("no services found" + (f" named {args.name}" if args.name else ""), file=sys.stderr)
        return 0
    schemas = Counter(s.full_name for s in services if s.full_name)
    for service in services:
        instances = f"{len(service.ids)} instance{'s' * (len(service.ids) != 1)}" if service.ids else "not running"
        proto = service.full_name or "(no schema: use --proto or --descriptor-set)"
        if schemas[service.full_name] > 1:  # versions with their own schemas: which one this is
            proto += f" (schema {_short_digest(service.digest)})"
        print(f"{service.nats_name} {service.version}  {proto}  {instances}")
        for id in service.ids:
            print(f"  id {id}")
        if service.methods:
            width = max(len(m.name) for m in service.methods)
            for method in service.methods:
                chunked = "  chunked" if method.chunked else ""
                print(f"  {method.name:<{width}}  {method.shape:<6}  {method.subject}{chunked}")
        else:
            for name, subject in service.endpoints:
                print(f"  {name}  {subject}")
    return 0


def _short_digest(digest: str) -> str:
    """A schema's digest as people read it: `sha256:` and 12 hex digits; "local" for local files."""
    return digest[: len("sha256:") + 12] if digest else "local"


# --- describe -------------------------------------------------------------------------------------


def _field_type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            return f"map<{_field_type(key)}, {_field_type(value)}>"
        return str(field.message_type.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    return _TYPES.get(field.type, str(field.type))


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _repeated(field: FieldDescriptor) -> bool:
    return bool(getattr(field, "is_repeated", None) if hasattr(field, "is_repeated") else field.label == FieldDescriptor.LABEL_REPEATED) and not _is_map(field)


def field_json(field: FieldDescriptor) -> dict[str, Any]:
    found: dict[str, Any] = {"name": field.name, "number": field.number, "type": _field_type(field), "json_name": field.json_name}
    if _repeated(field):
        found["repeated"] = True
    if field.containing_oneof is not None and not field.containing_oneof.name.startswith("_"):
        found["oneof"] = field.containing_oneof.name
    if field.has_presence and field.containing_oneof is not None and field.containing_oneof.name.startswith("_"):
        found["optional"] = True
    return found


def _messages_of(descriptor: Descriptor, seen: dict[str, Descriptor]) -> None:
    """`descriptor` and every message its fields use, recursively, by full name."""
    if descriptor.full_name in seen or descriptor.GetOptions().map_entry and descriptor.full_name in seen:
        return
    if not descriptor.GetOptions().map_entry:
        seen[descriptor.full_name] = descriptor
    for field in descriptor.fields:
        if field.message_type is not None:
            _messages_of(field.message_type, seen)


def _enums_of(messages: Iterable[Descriptor]) -> dict[str, EnumDescriptor]:
    found: dict[str, EnumDescriptor] = {}
    for message in messages:
        for field in message.fields:
            candidates = [field.enum_type] if field.enum_type is not None else []
            if _is_map(field):
                candidates += [f.enum_type for f in field.message_type.fields if f.enum_type is not None]
            for enum in candidates:
                found.setdefault(enum.full_name, enum)
    return found


def message_json(descriptor: Descriptor) -> dict[str, Any]:
    return {"name": descriptor.full_name, "fields": [field_json(f) for f in descriptor.fields]}


def enum_json(enum: EnumDescriptor) -> dict[str, Any]:
    return {"name": enum.full_name, "values": {v.name: v.number for v in enum.values}}


def method_json(method: MethodInfo) -> dict[str, Any]:
    return {
        "name": method.full_name,
        "version": method.version,
        "shape": method.shape,
        "request": method.input.full_name,
        "response": method.output.full_name,
        "subject": method.subject,
        "chunked": method.chunked,
        "timeout": method.timeout,
        "json_bodies": method.json,
        "options": method.options,
    }


def message_text(descriptor: Descriptor) -> list[str]:
    lines = [f"message {descriptor.full_name} {{"]
    oneof = None
    for field in descriptor.fields:
        group = field.containing_oneof
        real_group = group.name if group is not None and not group.name.startswith("_") else None
        if real_group != oneof:
            if oneof is not None:
                lines.append("  }")
            if real_group is not None:
                lines.append(f"  oneof {real_group} {{")
            oneof = real_group
        indent = "    " if oneof else "  "
        label = "repeated " if _repeated(field) else "optional " if group is not None and not real_group else ""
        lines.append(f"{indent}{label}{_field_type(field)} {field.name} = {field.number};")
    if oneof is not None:
        lines.append("  }")
    lines.append("}")
    return lines


def enum_text(enum: EnumDescriptor) -> list[str]:
    return [f"enum {enum.full_name} {{", *(f"  {v.name} = {v.number};" for v in enum.values), "}"]


def method_text(method: MethodInfo) -> str:
    request = f"stream {method.input.full_name}" if method.shape in ("client", "bidi") else method.input.full_name
    response = f"stream {method.output.full_name}" if method.shape in ("server", "bidi") else method.output.full_name
    extras = [method.shape, method.subject]
    if method.chunked:
        extras.append(f"chunked ({method.chunk_field}, {method.chunk_size} bytes)")
    if method.timeout:
        extras.append(f"timeout {method.timeout:g}s")
    if method.json:
        extras.append("JSON bodies")
    return f"rpc {method.name}({request}) returns ({response})  // {', '.join(extras)}"


@dataclass
class Described:
    """What one schema says of the name `describe` was given: a service, a method or a message;
    `header` names the version when there is more than one."""

    services: list[ServiceInfo]
    methods: list[MethodInfo]
    roots: list[Descriptor]
    header: str = ""


def _described(catalog: Catalog, name: str, version: str | None) -> list[Described]:
    """What `name` names: a service, a method or a message (in that order), once per version of
    the service whose schema has it (the newest first; of `version` only, when given)."""
    found = [s for s in catalog.versions(name, version) if s.methods or not s.full_name]  # (NOT_FOUND: not of that version)
    if found:
        return [Described([s], s.methods, [], f"{s.nats_name} {s.version}") for s in found]
    service_name, _, method_name = name.rpartition("/") if "/" in name else name.rpartition(".")
    sections = [
        Described([], [method], [], f"{s.nats_name} {s.version}")
        for s in (catalog.versions(service_name, version) if service_name else [])
        for method in s.methods
        if method_name in (method.name, method.subject.rpartition(".")[2])
    ]
    if sections:
        return sections
    packages = dict.fromkeys(s.full_name.rpartition(".")[0] for s in catalog.services if s.full_name)
    for full_name in [name, *(f"{package}.{name}" for package in packages)]:  # a message, by its short name in a known service's package too
        messages = catalog.messages(full_name, version)
        if messages:
            return [Described([], [], [message], _message_header(catalog, message)) for message in messages]
    hint = ""
    try:
        catalog.method(name, version)
    except RpcError as missed:  # its near misses
        hint = missed.message.partition(name + "'")[2]
    raise RpcError(ErrorCode.NOT_FOUND, f"no service, method or message {name!r}{hint}")


def _message_header(catalog: Catalog, message: Descriptor) -> str:
    """The versions whose schema holds this definition of a message (its schema when none does)."""
    users = [f"{s.nats_name} {s.version}" for s in newest_first(catalog.services) if s.pool is message.file.pool]
    schema = catalog.schema_of(message.file.pool)
    return ", ".join(dict.fromkeys(users)) or f"schema {_short_digest(schema.digest if schema else '')}"


def _schema_label(catalog: Catalog, descriptor: Descriptor) -> str:
    schema = catalog.schema_of(descriptor.file.pool)
    return schema.digest if schema is not None and schema.digest else "local"


async def describe(args: argparse.Namespace, nc: NATS) -> int:
    catalog = await catalog_of(args, nc)
    sections = _described(catalog, args.name, args.service_version)
    closures: list[tuple[dict[str, Descriptor], dict[str, EnumDescriptor]]] = []
    for section in sections:
        messages: dict[str, Descriptor] = {}  # one schema's: full names are unique in it
        for root in [*section.roots, *(d for m in section.methods for d in (m.input, m.output))]:
            _messages_of(root, messages)
        closures.append((messages, _enums_of(messages.values())))
    if args.json:
        found: dict[str, dict[str, Any]] = {"messages": {}, "enums": {}}
        for messages, enums in closures:  # each once per schema that defines it
            for descriptor in messages.values():
                found["messages"].setdefault(f"{_schema_label(catalog, descriptor)} {descriptor.full_name}", message_json(descriptor) | {"schema": _schema_label(catalog, descriptor)})
            for enum in enums.values():
                found["enums"].setdefault(f"{_schema_label(catalog, enum)} {enum.full_name}", enum_json(enum) | {"schema": _schema_label(catalog, enum)})
        print(jsonmap.dumps({
            "services": [{k: v for k, v in service_json(s).items() if k != "methods"} | {"options": s.options} for section in sections for s in section.services],
            "methods": [method_json(m) for section in sections for m in section.methods],
            "messages": list(found["messages"].values()),
            "enums": list(found["enums"].values()),
        }, indent=2))  # fmt: skip
        return 0
    lines: list[str] = []
    for section, (messages, enums) in zip(sections, closures):
        if len(sections) > 1:
            lines.extend([*([""] if lines else []), f"// --- {section.header} ---"])
        text = _section_text(section, messages, enums)
        lines.extend(text[1:] if text[:1] == [""] else text)  # (a message alone: no blank line first)
    print("\n".join(lines))
    return 0


def _section_text(section: Described, messages: dict[str, Descriptor], enums: dict[str, EnumDescriptor]) -> list[str]:
    lines: list[str] = []
    for service in section.services:
        where = f"NATS name {service.nats_name} {service.version}, subjects {service.subject_prefix}.*"
        instances = f", {len(service.ids)} instance(s)" if service.ids else ""
        lines.append(f"service {service.full_name or service.nats_name} {{  // {where}{instances}")
        if service.description:
            lines.append(f"  // {service.description}")
        for option, value in service.options.get("service", {}).items():
            if option not in ("description",):
                lines.append(f"  // (natsmicro.service).{option}: {jsonmap.dumps(value)}")
        for method in section.methods:
            lines.append(f"  {method_text(method)}")
            lines.extend(f"    // (natsmicro.{name}): {jsonmap.dumps(value)}" for name, value in method.options.items())
        if not service.full_name:
            lines.extend(f"  // endpoint {name} on {subject}: no schema (use --proto or --descriptor-set)" for name, subject in service.endpoints)
        lines.append("}")
    if not section.services:
        for method in section.methods:
            lines.append(method_text(method))
            lines.extend(f"  // (natsmicro.{name}): {jsonmap.dumps(value)}" for name, value in method.options.items())
    for descriptor in messages.values():
        lines.append("")
        lines.extend(message_text(descriptor))
    for enum in enums.values():
        lines.append("")
        lines.extend(enum_text(enum))
    return lines


# --- stats ----------------------------------------------------------------------------------------


async def _stats_round(nc: NATS, name: str | None, wait: float) -> list[dict[str, Any]]:
    replies = await gather_replies(nc, "$SRV.STATS" + (f".{name}" if name else ""), wait)
    rounds: list[dict[str, Any]] = []
    for msg in replies:
        try:
            value = json.loads(msg.data)
            if isinstance(value, dict) and isinstance(value.get("endpoints"), list):
                rounds.append(value)
        except (ValueError, RecursionError):  # another service's bytes: not JSON, or nested past reading
            continue
    return sorted(rounds, key=lambda s: (str(s.get("name")), str(s.get("id"))))


def _count(value: Any) -> int | None:
    """A count from another service's STATS: a non-negative int of 64 bits, else None (not shown)."""
    return value if type(value) is int and 0 <= value < 1 << 63 else None


def _text(value: Any, limit: int = 200) -> str:
    """Text from another service's STATS, bounded and without control characters (it goes to a terminal)."""
    return "".join(c if c.isprintable() else " " for c in clip(str(value), limit))


def _stats_rows(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for reply in replies:
        for endpoint in reply["endpoints"]:
            if not isinstance(endpoint, dict):
                continue
            data = endpoint["data"] if isinstance(endpoint.get("data"), dict) else {}
            rows.append({
                "service": _text(reply.get("name", "")), "id": _text(reply.get("id", ""), 64), "endpoint": _text(endpoint.get("name", "")),
                "requests": _count(endpoint.get("num_requests", 0)), "errors": _count(endpoint.get("num_errors", 0)),
                "refused": _count(data.get("refused")), "in_progress": _count(data.get("in_progress")),
                "average_ms": round((_count(endpoint.get("average_processing_time", 0)) or 0) / 1e6, 3),
                "last_error": _text(endpoint.get("last_error", "")),
            })  # fmt: skip
    return rows


def stats_table(rows: list[dict[str, Any]]) -> str:
    header = ("SERVICE", "ID", "ENDPOINT", "CALLS", "ERRORS", "REFUSED", "OPEN", "AVG MS", "LAST ERROR")
    cells = [header] + [
        (r["service"], r["id"][:8], r["endpoint"], *("-" if r[k] is None else str(r[k]) for k in ("requests", "errors", "refused", "in_progress")),
         f"{r['average_ms']:.3f}", str(r["last_error"])[:40])  # fmt: skip
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


async def stats(args: argparse.Namespace, nc: NATS) -> int:
    rounds = 0
    while True:
        rows = _stats_rows(await _stats_round(nc, args.name, args.wait))
        rounds += 1
        if args.json:
            print(jsonmap.dumps(rows, indent=None if args.watch else 2), flush=True)
        else:
            if args.watch and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")  # home, clear: redraw in place
            print(stats_table(rows) if rows else "no services found", flush=True)
        if not args.watch or (args.count and rounds >= args.count):
            return 0
        await asyncio.sleep(args.interval)
