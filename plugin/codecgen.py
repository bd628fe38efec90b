"""Per-message protobuf codecs: an encoder and a decoder for each message of a module, on betterproto
2.0.0b7 objects, registered with the runtime (`_nats.register`) so that its `Codec` uses them.

The decoder builds the exact `__dict__` betterproto's `parse` leaves (unset fields PLACEHOLDER,
`optional` ones None, `_serialized_on_wire`, `_unknown_fields`, `_group_current`); the encoder
writes google protobuf's bytes (field-number order, packed scalars, map entries whole). What a
message uses that this module does not cover leaves the whole message to betterproto, with a
comment in the generated code saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from betterproto.compile.importing import WRAPPER_TYPES
from betterproto.lib.google.protobuf import FieldDescriptorProtoLabel, FieldDescriptorProtoType

T = FieldDescriptorProtoType
VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
SCALARS = {
    T.TYPE_INT32: ("int32", VARINT),
    T.TYPE_INT64: ("int64", VARINT),
    T.TYPE_UINT32: ("uint32", VARINT),
    T.TYPE_UINT64: ("uint64", VARINT),
    T.TYPE_SINT32: ("sint32", VARINT),
    T.TYPE_SINT64: ("sint64", VARINT),
    T.TYPE_BOOL: ("bool", VARINT),
    T.TYPE_FIXED32: ("fixed32", FIXED32),
    T.TYPE_SFIXED32: ("sfixed32", FIXED32),
    T.TYPE_FLOAT: ("float", FIXED32),
    T.TYPE_FIXED64: ("fixed64", FIXED64),
    T.TYPE_SFIXED64: ("sfixed64", FIXED64),
    T.TYPE_DOUBLE: ("double", FIXED64),
    T.TYPE_STRING: ("string", LEN),
    T.TYPE_BYTES: ("bytes", LEN),
}
WRAPPERS = {name: name.rsplit(".", 1)[1].removesuffix("Value").lower() for name in WRAPPER_TYPES}
DEFAULTS = {"string": '""', "bytes": 'b""', "bool": "False", "float": "0.0", "double": "0.0"}  # else 0
HEADER = """\
# Protobuf codecs of the messages above, used by betterproto_nats' Codec: each encoder writes the bytes
# google protobuf writes, each decoder builds the object betterproto's parse builds (and checks the
# framing as google protobuf does). b"\\x.." literals are field keys (field number << 3 | wire type)."""


class Unsupported(Exception):
    """Something a message uses that the generated codec leaves to betterproto."""


@dataclass
class Kind:
    """How one value travels: its read_*/write_* name, wire type and, for enums and messages, the
    Python reference to its class (with `codec` when that class gets a codec in this module)."""

    name: str
    wire: int
    ref: str = ""
    codec: bool = False
    note: str = ""  # why a message value goes through betterproto, for a comment

    @property
    def packable(self) -> bool:
        return self.wire != LEN

    def read(self) -> str:
        if self.name == "enum":
            return f"_nats.read_enum(data, pos, {self.ref})"
        if self.name == "message":
            if self.codec:
                return f"_nats.read_message(data, pos, end, depth, _decode_{self.ref})"
            return f"_nats.read_message_type(data, pos, end, depth, {self.ref})"
        if self.name in ("string", "bytes"):
            return f"_nats.read_{self.name}(data, pos, end)"
        if self.wire == LEN:  # timestamp, duration, wrappers: nested messages
            return f"_nats.read_{self.name}(data, pos, end, depth)"
        return f"_nats.read_{self.name}(data, pos)"

    def body(self, value: str) -> str:
        """The body of a message value (messages only)."""
        return f"_encode_{self.ref}({value})" if self.codec else f"_nats.encode_message({value})"

    def write(self, out: str, tag: str, value: str) -> str:
        """Write the value unconditionally (a message even when empty)."""
        if self.name == "message":
            return f"_nats.write_bytes({out}, {tag}, {self.body(value)})"
        return f"_nats.write_{self.name}({out}, {tag}, {value})"

    def default(self) -> str:
        """The value betterproto reads for an absent map key or value."""
        if self.name == "message":
            return f"{self.ref}()"
        if self.name == "enum":
            return f"{self.ref}.try_value(0)"
        if self.name == "timestamp":
            return "_nats.EPOCH"
        if self.name == "duration":
            return "_nats.timedelta()"
        return DEFAULTS.get(self.name, "0")


@dataclass
class Field:
    name: str
    number: int
    kind: Kind
    label: str  # "implicit", "optional", "oneof", "repeated", "map"
    group: str = ""
    packed: bool = False
    key: Kind | None = None  # maps: key and value kinds (value in `kind`)

    @property
    def wire(self) -> int:
        return LEN if self.label == "map" else self.kind.wire

    def tag(self, wire: int | None = None) -> str:
        """The key as an expression for the decoder: `5 << 3 | 2`."""
        return f"{self.number} << 3 | {self.wire if wire is None else wire}"

    @property
    def note(self) -> str:
        return f"  # {self.kind.note}" if self.kind.note else ""


@dataclass
class Message:
    py_name: str
    fields: list[Field] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    unsupported: str = ""


def key_bytes(number: int, wire: int) -> str:
    """A field key as a bytes literal in hex: b"\\x0a"."""
    value, out = number << 3 | wire, []
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return 'b"' + "".join(f"\\x{b:02x}" for b in out) + '"'


def _reference(compiler: Any) -> str:
    return str(compiler.py_type).strip('"')


def _kind(compiler: Any, local_codecs: set[str]) -> Kind:
    """The kind of a field (or of a map key or value) from betterproto's field compiler."""
    proto = compiler.proto_obj
    if proto.type in SCALARS:
        return Kind(*SCALARS[proto.type])
    if proto.type == T.TYPE_ENUM:
        return Kind("enum", VARINT, _reference(compiler))
    if proto.type != T.TYPE_MESSAGE:
        raise Unsupported(f"field {proto.name} is a group")
    if proto.type_name == ".google.protobuf.Timestamp":
        return Kind("timestamp", LEN)
    if proto.type_name == ".google.protobuf.Duration":
        return Kind("duration", LEN)
    if proto.type_name in WRAPPERS:
        return Kind(f"{WRAPPERS[proto.type_name]}_value", LEN)
    if compiler.field_wraps:
        raise Unsupported(f"field {proto.name}: betterproto treats {proto.type_name[1:]} as a wrapper type")
    reference = _reference(compiler)
    note = ""
    if proto.type_name.startswith(".google.protobuf."):
        note = f"{proto.type_name[1:]}: betterproto's codec"
    elif "." not in reference and reference not in local_codecs:
        note = f"{reference}: betterproto's codec"
    return Kind("message", LEN, reference, reference in local_codecs, note)


def _field(compiler: Any, local_codecs: set[str]) -> Field:
    proto = compiler.proto_obj
    name, number = compiler.py_name, proto.number
    if type(compiler).__name__ == "MapEntryCompiler":
        key, value = compiler.fields
        value_kind = _kind(value, local_codecs)
        if value_kind.name.endswith("_value"):
            raise Unsupported(f"map field {proto.name} has wrapper values, which betterproto 2.0.0b7 cannot decode")
        return Field(name, number, value_kind, "map", key=_kind(key, local_codecs))
    kind = _kind(compiler, local_codecs)
    if proto.label == FieldDescriptorProtoLabel.LABEL_REPEATED:
        options = proto.options
        unpacked = options is not None and options.is_set("packed") and not options.packed
        return Field(name, number, kind, "repeated", packed=kind.packable and not unpacked)
    if proto.proto3_optional:
        return Field(name, number, kind, "optional")
    if type(compiler).__name__ in ("OneOfFieldCompiler", "PydanticOneOfFieldCompiler"):
        group = compiler.parent.proto_obj.oneof_decl[proto.oneof_index].name
        return Field(name, number, kind, "oneof", group=group)
    return Field(name, number, kind, "implicit")


def read_messages(package: Any) -> list[Message]:
    """The codec plan of every message of an output module (betterproto's OutputTemplate)."""
    plans = [Message(m.py_name) for m in package.messages]
    for plan, message in zip(plans, package.messages):
        if package.pydantic_dataclasses:
            plan.unsupported = "pydantic dataclasses validate in __init__, which a generated decoder skips"
        elif message.source_file.syntax != "proto3":
            plan.unsupported = "proto2 semantics (explicit presence, closed enums, unpacked repeated fields)"
        elif message.deprecated:
            plan.unsupported = "a deprecated message warns in __post_init__, which a generated decoder skips"
    # Fixed point: a message is covered when all its fields are; references to a message left to
    # betterproto go through the runtime's registry, which falls back to betterproto for it.
    changed = True
    while changed:
        changed = False
        local = {p.py_name for p in plans if not p.unsupported}
        for plan, message in zip(plans, package.messages):
            if plan.unsupported:
                continue
            try:
                plan.fields = [_field(f, local) for f in message.fields]
            except Unsupported as reason:
                plan.unsupported, changed = str(reason), True
    for plan in plans:
        plan.groups = {}
        for f in plan.fields:
            if f.label == "oneof":
                plan.groups.setdefault(f.group, []).append(f.name)
    return plans


# --- Rendering --------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text + '"'


def _initial(f: Field) -> str:
    return "None" if f.label == "optional" else "_nats.UNSET"


def _decode_branches(plan: Message, target: str) -> list[str]:
    """The `if tag == ...` branches of a decoder loop, writing into the dict named `target`."""
    lines: list[str] = []
    for f in sorted(plan.fields, key=lambda f: f.number):
        name = _q(f.name)
        if f.label == "map":
            lines += [
                f"elif tag == {f.tag()}:{f.note}",
                f"    entry, pos = _nats.read_message(data, pos, end, depth, _decode_{plan.py_name}_{f.name})",
                f"    _nats.put({target}, {name}, entry)",
            ]
        elif f.label == "repeated":
            lines += [
                f"elif tag == {f.tag()}:{f.note}",
                f"    value, pos = {f.kind.read()}",
                f"    _nats.append({target}, {name}, value)",
            ]
            if f.kind.packable:
                extra = f", {f.kind.ref}" if f.kind.name == "enum" else ""
                lines += [
                    f"elif tag == {f.tag(LEN)}:",
                    f"    values, pos = _nats.read_packed_{f.kind.name}(data, pos, end{extra})",
                    f"    _nats.extend({target}, {name}, values)",
                ]
        else:
            lines += [f"elif tag == {f.tag()}:{f.note}", f"    {target}[{name}], pos = {f.kind.read()}"]
            if f.label == "oneof":
                others = [o for o in plan.groups[f.group] if o != f.name]
                if others:
                    lines.append("    " + " = ".join(f"{target}[{_q(o)}]" for o in others) + " = _nats.UNSET")
                lines.append(f"    groups[{_q(f.group)}] = {name}")
    if lines:
        lines[0] = lines[0][2:]  # the first `elif` is an `if`
    return lines


def _locals(branches: list[str]) -> list[str]:
    """Declarations of the locals several branches assign, which hold values of different types."""
    declared = {"value": "value: _nats.Any", "values": "values: list[_nats.Any]", "entry": "entry: tuple[_nats.Any, _nats.Any]"}
    return [declaration for name, declaration in declared.items() if any(line.startswith(f"    {name}, pos =") for line in branches)]


def _loop(branches: list[str], unknown: str) -> list[str]:
    body = [
        *_locals(branches),
        "while pos < end:",
        "    start = pos" if unknown else "",
        "    tag = data[pos]",
        "    pos += 1",
        "    if tag >= 0x80:",
        "        tag, pos = _nats.read_key(data, pos, tag)",
    ]
    skip = "_nats.skip_field(data, pos, end, tag, depth)"
    if branches:
        body += ["    " + line for line in branches]
        body += ["    else:", f"        pos = {skip}"]
        if unknown:
            body.append(f"        {unknown} += data[start:pos]")
    else:
        body.append(f"    pos = {skip}")
        if unknown:
            body.append(f"    {unknown} += data[start:pos]")
    body += ["if pos != end:", '    raise _nats.DecodeError("truncated field")']
    return [line for line in body if line]


def _decoder(plan: Message) -> list[str]:
    lines = [f"def _decode_{plan.py_name}(data: bytes, pos: int, end: int, depth: int) -> {plan.py_name}:"]
    if plan.groups:
        groups = ", ".join(f"{_q(g)}: None" for g in plan.groups)
        lines.append(f"    groups: dict[str, str | None] = {{{groups}}}")
    entries = [f"{_q(f.name)}: {_initial(f)}" for f in plan.fields]
    entries = ['"_serialized_on_wire": True', *entries, '"_unknown_fields": b""']
    entries.append('"_group_current": groups' if plan.groups else '"_group_current": {}')
    lines.append("    fields: _nats.Fields = {" + ", ".join(entries) + ",}")
    lines += ["    " + line for line in _loop(_decode_branches(plan, "fields"), 'fields["_unknown_fields"]')]
    lines.append(f"    return _nats.build({plan.py_name}, fields)")
    return lines


def _entry_decoder(plan: Message, f: Field) -> list[str]:
    assert f.key is not None
    key, value = f.key, f.kind
    entry = Message(plan.py_name, [Field("key", 1, key, "implicit"), Field("value", 2, value, "implicit")])
    value_type = value.ref or {"timestamp": "_nats.datetime", "duration": "_nats.timedelta"}.get(value.name, "")
    value_type = value_type or PY_TYPES[value.name]
    initial = value.default() if value.name not in ("message", "enum") else "_nats.UNSET"
    lines = [
        f"def _decode_{plan.py_name}_{f.name}(data: bytes, pos: int, end: int, depth: int)"
        f" -> tuple[{PY_TYPES[key.name]}, {value_type}]:",
        f'    """An entry of {plan.py_name}.{f.name}."""',
        f'    entry: _nats.Fields = {{"key": {key.default()}, "value": {initial}}}',
    ]
    lines += ["    " + line for line in _loop(_decode_branches(entry, "entry"), "")]
    if initial == "_nats.UNSET":
        lines.append(f'    if entry["value"] is _nats.UNSET:')
        lines.append(f'        entry["value"] = {value.default()}')
    lines.append('    return entry["key"], entry["value"]')
    return lines


PY_TYPES = {
    **{name: "int" for name in ("int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64")},
    "sfixed32": "int",
    "sfixed64": "int",
    "bool": "bool",
    "float": "float",
    "double": "float",
    "string": "str",
    "bytes": "bytes",
}


def _encode_field(f: Field) -> list[str]:
    """Statements writing one field to `out`, as google protobuf writes it. (No `:=`: black would
    then take the module for Python 3.8+ and reformat betterproto's part of it.)"""
    name, kind = _q(f.name), f.kind
    tag = key_bytes(f.number, f.wire)
    if f.label == "oneof":
        return [
            f"if groups.get({_q(f.group)}) == {name} and fields[{name}] is not None:",
            f"    {kind.write('out', tag, f'fields[{name}]')}",
        ]
    lines = [f"value = fields[{name}]"]
    if f.label == "map":
        assert f.key is not None
        return lines + [
            "if value and value is not _nats.UNSET:",
            "    for key, item in value.items():",
            "        entry = bytearray()",
            f"        {f.key.write('entry', key_bytes(1, f.key.wire), 'key')}",
            f"        {kind.write('entry', key_bytes(2, kind.wire), 'item')}",
            f"        _nats.write_bytes(out, {tag}, entry)",
        ]
    if f.label == "repeated":
        lines.append("if value and value is not _nats.UNSET:")
        if f.packed:
            return lines + [f"    _nats.write_packed_{kind.name}(out, {key_bytes(f.number, LEN)}, value)"]
        return lines + ["    for item in value:", f"        {kind.write('out', tag, 'item')}"]
    if f.label == "optional" or kind.name.endswith("_value"):
        condition = "value is not _nats.UNSET and value is not None"
    elif kind.name in ("float", "double"):
        condition = "_nats.nonzero(value)"
    elif kind.name == "timestamp":
        condition = "value is not _nats.UNSET and value is not None and value != _nats.EPOCH"
    elif kind.name == "message":
        condition = "value is not _nats.UNSET and value is not None"
        return lines + [f"if {condition}:", f"    _nats.write_message(out, {tag}, value, {kind.body('value')})"]
    else:
        condition = "value and value is not _nats.UNSET"
    return lines + [f"if {condition}:", f"    {kind.write('out', tag, 'value')}"]


def _encoder(plan: Message) -> list[str]:
    lines = [
        f"def _encode_{plan.py_name}(message: {plan.py_name}) -> bytes:",
        "    fields = _nats.fields_of(message)",
    ]
    if plan.groups:
        lines.append('    groups = fields["_group_current"]')
    lines.append("    out = bytearray()")
    for f in sorted(plan.fields, key=lambda f: f.number):
        if f.kind.note:
            lines.append(f"    # {f.kind.note}")
        lines += ["    " + line for line in _encode_field(f)]
    lines += ['    out += fields["_unknown_fields"]', "    return bytes(out)"]
    return lines


def _comment(text: str, width: int = 100) -> list[str]:
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return [*lines, line]


def render(package: Any) -> str:
    """The codec section of an output module ("" when it has no messages)."""
    plans = read_messages(package)
    if not plans:
        return ""
    blocks: list[list[str]] = []
    for plan in plans:
        if plan.unsupported:
            blocks.append(_comment(f"{plan.py_name} has no generated codec (betterproto's is used): {plan.unsupported}."))
            continue
        blocks.append(_encoder(plan))
        blocks.append(_decoder(plan))
        for f in plan.fields:
            if f.label == "map":
                blocks.append(_entry_decoder(plan, f))
    registrations = [
        f"_nats.register({p.py_name}, _encode_{p.py_name}, _decode_{p.py_name})" for p in plans if not p.unsupported
    ]
    if registrations:
        blocks.append(registrations)
    return HEADER + "\n\n\n" + "\n\n\n".join("\n".join(block) for block in blocks) + "\n"
