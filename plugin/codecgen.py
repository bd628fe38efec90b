"""Per-message protobuf codecs: an encoder and a decoder for each message of a module, on betterproto2
dataclasses, registered with the runtime (`_nats.register`) so that its `Codec` uses them.

- the decoder makes the object with `object.__new__` (no `__init__`, no `__post_init__`) and sets
  every field at its default (scalars their zero, enums `E(0)`, lists and dicts fresh, message,
  Timestamp, Duration, wrapper, `optional` and oneof fields None), then `_unknown_fields`, in the
  dataclass's order: the `__dict__` betterproto2's parse makes (set attribute by attribute, which
  CPython stores without a dict of the instance's own until one is asked for, cheaper than building
  a dict and setting `__dict__`); a oneof member read sets the others of its group to None;
- the common cases are written out in place, under exactly the conditions of the helper's own fast
  path, with the helper (which starts again) for the rest: one-byte varints, strings and bytes whose
  length fits in one byte (and that end within the message, when reading), and, when writing,
  message bodies shorter than 0x80 bytes. A Python call costs more than the few lines it replaces;
- the encoder reads attributes directly (plain dataclass attributes cost ~10 ns) and writes google
  protobuf's bytes (field-number order, packed scalars, map entries whole); a singular message,
  Timestamp or Duration field is written when it is not None, empty or not (protobuf's presence rule);
- enums are read with the class itself (betterproto2 keeps unknown numbers through `_missing_`).

What a message uses that this module does not cover leaves the whole message to betterproto2's codec,
with a comment in the generated code saying why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
# By the descriptor's type name without its TYPE_ prefix (betterproto2_compiler's enum member names).
SCALARS = {
    "INT32": ("int32", VARINT),
    "INT64": ("int64", VARINT),
    "UINT32": ("uint32", VARINT),
    "UINT64": ("uint64", VARINT),
    "SINT32": ("sint32", VARINT),
    "SINT64": ("sint64", VARINT),
    "BOOL": ("bool", VARINT),
    "FIXED32": ("fixed32", FIXED32),
    "SFIXED32": ("sfixed32", FIXED32),
    "FLOAT": ("float", FIXED32),
    "FIXED64": ("fixed64", FIXED64),
    "SFIXED64": ("sfixed64", FIXED64),
    "DOUBLE": ("double", FIXED64),
    "STRING": ("string", LEN),
    "BYTES": ("bytes", LEN),
}
WRAPPERS = {
    f".google.protobuf.{name}": f"{name.removesuffix('Value').lower()}_value"
    for name in ("BoolValue", "Int32Value", "Int64Value", "UInt32Value", "UInt64Value", "FloatValue",
                 "DoubleValue", "StringValue", "BytesValue")
}  # fmt: skip
DEFAULTS = {"string": '""', "bytes": 'b""', "bool": "False", "float": "0.0", "double": "0.0"}  # else 0
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
HEADER = """\
# Protobuf codecs of the messages above, used by betterproto_nats' Codec: each encoder writes the bytes
# google protobuf writes, each decoder builds the object betterproto2's parse builds (and checks the
# framing as google protobuf does). b"\\x.." literals are field keys (field number << 3 | wire type)."""


class Unsupported(Exception):
    """Something a message uses that the generated codec leaves to betterproto2."""


@dataclass
class Kind:
    """How one value travels: its read_*/write_* name, wire type and, for enums and messages, the
    Python reference to its class (with `codec` when that class gets a codec in this module)."""

    name: str
    wire: int
    ref: str = ""
    codec: bool = False

    @property
    def packable(self) -> bool:
        return self.wire != LEN

    def read(self) -> str:
        if self.name == "enum":
            return f"_nats.read_enum_open(data, pos, {self.ref})"
        if self.name == "message":
            if self.codec:
                return f"_nats.read_message(data, pos, end, depth, _decode_{self.ref})"
            return f"_nats.read_message_class(data, pos, end, depth, {self.ref})"
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
        """The value read for an absent map key or value."""
        if self.name == "message":
            return f"{self.ref}()"
        if self.name == "enum":
            return f"{self.ref}(0)"
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


def _type_name(proto: Any) -> str:
    return str(getattr(proto.type, "name", proto.type)).removeprefix("TYPE_")


def _kind(proto: Any, reference: str, local_codecs: set[str]) -> Kind:
    """The kind of a field (or a map key or value) from its descriptor and its Python reference."""
    type_name = _type_name(proto)
    if type_name in SCALARS:
        return Kind(*SCALARS[type_name])
    if type_name == "ENUM":
        return Kind("enum", VARINT, reference)
    if type_name != "MESSAGE":
        raise Unsupported(f"field {proto.name} is a group")
    if proto.type_name == ".google.protobuf.Timestamp":
        return Kind("timestamp", LEN)
    if proto.type_name == ".google.protobuf.Duration":
        return Kind("duration", LEN)
    if proto.type_name in WRAPPERS:
        return Kind(WRAPPERS[proto.type_name], LEN)
    return Kind("message", LEN, reference, reference in local_codecs)


def _field(compiler: Any, local_codecs: set[str]) -> Field:
    proto = compiler.proto_obj
    name, number = compiler.py_name, proto.number
    if type(compiler).__name__ == "MapEntryCompiler":
        entry_name = proto.type_name.rsplit(".", 1)[1]
        entry = next(n for n in compiler.message.proto_obj.nested_type if n.name == entry_name)
        key = _kind(entry.field[0], compiler.py_k_type, local_codecs)
        value = _kind(entry.field[1], compiler.py_v_type, local_codecs)
        if value.name.endswith("_value"):
            raise Unsupported(f"map field {proto.name} has wrapper values (left to betterproto2's codec)")
        return Field(name, number, value, "map", key=key)
    reference = compiler.py_type if _type_name(proto) in ("ENUM", "MESSAGE") else ""
    kind = _kind(proto, reference, local_codecs)
    if str(getattr(proto.label, "name", proto.label)).endswith("REPEATED"):
        options = proto.options
        unpacked = options is not None and options.packed is False
        return Field(name, number, kind, "repeated", packed=kind.packable and not unpacked)
    if proto.proto3_optional:
        return Field(name, number, kind, "optional")
    if type(compiler).__name__ == "OneOfFieldCompiler":
        group = compiler.message.proto_obj.oneof_decl[proto.oneof_index].name
        return Field(name, number, kind, "oneof", group=group)
    return Field(name, number, kind, "implicit")


def read_messages(package: Any) -> list[Message]:
    """The codec plan of every message of an output module (betterproto2_compiler's OutputTemplate)."""
    messages = sorted(package.messages.values(), key=lambda m: str(m.py_name))  # one order whatever the input order
    plans = [Message(m.py_name) for m in messages]
    for plan, message in zip(plans, messages):
        if package.settings.pydantic_dataclasses:
            plan.unsupported = "pydantic dataclasses validate in __init__, which a generated decoder skips"
        elif message.source_file.syntax != "proto3":
            plan.unsupported = "proto2 semantics (explicit presence, closed enums, unpacked repeated fields)"
        elif message.deprecated or message.has_deprecated_fields:
            plan.unsupported = "deprecation warnings come from __post_init__, which a generated decoder skips"
    changed = True
    while changed:
        changed = False
        local = {p.py_name for p in plans if not p.unsupported}
        for plan, message in zip(plans, messages):
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


def _locals(branches: list[str]) -> list[str]:
    """Declarations of the locals several branches assign, which hold values of different types."""
    declared = {"value": "value: _nats.Any", "values": "values: list[_nats.Any]", "entry": "entry: tuple[_nats.Any, _nats.Any]"}
    assigned = {line.strip().split(",")[0].split(" =")[0] for line in branches}
    return [declaration for name, declaration in declared.items() if name in assigned]


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


def _comment(text: str, width: int = 100) -> list[str]:
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "#"
        line += " " + word
    return [*lines, line]




def _initial(f: Field) -> str:
    if f.label == "repeated":
        return "[]"
    if f.label == "map":
        return "{}"
    if f.label in ("optional", "oneof") or f.kind.wire == LEN and f.kind.name not in ("string", "bytes"):
        return "None"
    return f.kind.default()


# What a one-byte varint (below 0x80) reads as, by kind: the byte itself for the integer types whose
# readers return it unchanged, else the same expression of it as the reader (int32 enums call their
# class with it; sint zigzags it; bool compares it with 0).
ONE_BYTE_VARINTS = {
    **{name: "{}" for name in ("int32", "int64", "uint32", "uint64")},
    "sint32": "({0} >> 1) ^ -({0} & 1)",
    "sint64": "({0} >> 1) ^ -({0} & 1)",
    "bool": "{} != 0",
}


def _read_singular(kind: Kind, target: str) -> list[str]:
    """Read one value into `target`: the common case (a one-byte varint; a string or bytes with a
    one-byte length that ends within the message) in place, with the conditions of the reader's own
    fast path, and anything else through the reader, which starts again at `pos`."""
    fallback = f"{target}, pos = {kind.read()}"
    if kind.name in ("string", "bytes"):
        value = "data[pos + 1 : stop]" + (".decode()" if kind.name == "string" else "")  # strict UTF-8
        return [
            "size = data[pos]",
            "stop = pos + 1 + size",
            "if size < 0x80 and stop <= end:",
            f"    {target} = {value}",
            "    pos = stop",
            "else:",
            f"    {fallback}",
        ]
    if kind.name == "enum":
        value = f"{kind.ref}(byte)"
    elif kind.name in ONE_BYTE_VARINTS:
        value = ONE_BYTE_VARINTS[kind.name].format("byte")
    else:
        return [fallback]
    return ["byte = data[pos]", "if byte < 0x80:", f"    {target} = {value}", "    pos += 1", "else:", f"    {fallback}"]


def _decode_branches(plan: Message, place: Callable[[str], str]) -> list[str]:
    """One `if`/`elif` branch per field number (and per packed form), reading into `place(name)`."""
    lines: list[str] = []
    for f in sorted(plan.fields, key=lambda f: f.number):
        target = place(f.name)
        if f.label == "map":
            lines += [
                f"elif tag == {f.tag()}:",
                f"    entry, pos = _nats.read_message(data, pos, end, depth, _decode_{plan.py_name}_{f.name})",
                f"    {target}[entry[0]] = entry[1]",
            ]
        elif f.label == "repeated":
            # elements one by one: strings and bytes in place (packable ones usually come packed)
            read = _read_singular(f.kind, "value") if f.kind.name in ("string", "bytes") else [f"value, pos = {f.kind.read()}"]
            lines += [f"elif tag == {f.tag()}:", *_indent(read), f"    {target}.append(value)"]
            if f.kind.packable:
                extra = f", {f.kind.ref}" if f.kind.name == "enum" else ""
                packed = "read_packed_enum_open" if f.kind.name == "enum" else f"read_packed_{f.kind.name}"
                lines += [
                    f"elif tag == {f.tag(LEN)}:",
                    f"    values, pos = _nats.{packed}(data, pos, end{extra})",
                    f"    {target} += values",
                ]
        else:
            lines += [f"elif tag == {f.tag()}:", *_indent(_read_singular(f.kind, target))]
            if f.label == "oneof":
                others = [o for o in plan.groups[f.group] if o != f.name]
                lines += _indent(_clear([place(o) for o in others]))
    if lines:
        lines[0] = lines[0][2:]
    return lines


def _clear(targets: list[str], width: int = 76) -> list[str]:
    """`a = b = ... = None`, a few targets per line (what fits in `width`; the loop indents it 12)."""
    lines: list[str] = []
    for target in targets:
        if lines and len(lines[-1]) + len(target) + 10 <= width:
            lines[-1] += f" = {target}"
        else:
            lines.append(target)
    return [line + " = None" for line in lines]


def _decoder(plan: Message) -> list[str]:
    """The message is made without __init__ (and __post_init__) and given every field, in the order
    the dataclass sets them, then `_unknown_fields`: the `__dict__` betterproto2's parse makes."""
    lines = [
        f"def _decode_{plan.py_name}(data: bytes, pos: int, end: int, depth: int) -> {plan.py_name}:",
        f"    message = object.__new__({plan.py_name})  # every field set below, no __init__",
        *[f"    message.{f.name} = {_initial(f)}" for f in plan.fields],
        '    message._unknown_fields = b""',
    ]
    lines += _indent(_loop(_decode_branches(plan, lambda name: f"message.{name}"), "message._unknown_fields"))
    lines.append("    return message")
    return lines


def _entry_decoder(plan: Message, f: Field) -> list[str]:
    assert f.key is not None
    key, value = f.key, f.kind
    entry = Message(plan.py_name, [Field("key", 1, key, "implicit"), Field("value", 2, value, "implicit")])
    value_type = value.ref or {"timestamp": "_nats.datetime", "duration": "_nats.timedelta"}.get(value.name, "")
    value_type = value_type or PY_TYPES[value.name]
    absent = value.name in ("message", "enum")  # made only when the entry has no value
    lines = [
        f"def _decode_{plan.py_name}_{f.name}(data: bytes, pos: int, end: int, depth: int)"
        f" -> tuple[{PY_TYPES[key.name]}, {value_type}]:",
        f'    """An entry of {plan.py_name}.{f.name}."""',
        f"    key: {PY_TYPES[key.name]} = {key.default()}",
        f"    item: {value_type} | None = None" if absent else f"    item: {value_type} = {value.default()}",
    ]
    lines += _indent(_loop(_decode_branches(entry, {"key": "key", "value": "item"}.__getitem__), ""))
    if absent:
        lines.append("    if item is None:")
        lines.append(f"        item = {value.default()}")
    lines.append("    return key, item")
    return lines


def _indent(lines: list[str], depth: int = 1) -> list[str]:
    return ["    " * depth + line for line in lines]


ONE_BYTE_WRITERS = ("int32", "int64", "uint32", "uint64", "enum")
"""Kinds whose writer writes a value in 0..0x7F as that one byte (write_int32 and its aliases)."""


def _write(kind: Kind, out: str, tag: str, value: str) -> list[str]:
    """Write a value unconditionally: the common case (a one-byte varint; a string, bytes or message
    body shorter than 0x80 bytes) in place, with the writer's own conditions, anything else through
    the writer."""
    if kind.name in ONE_BYTE_WRITERS:
        return [
            f"if 0 <= {value} < 0x80:",
            f"    {out} += {tag}",
            f"    {out}.append({value})",
            "else:",
            f"    {kind.write(out, tag, value)}",
        ]
    if kind.name in ("string", "bytes", "message"):
        body = {"string": "encoded", "message": "body"}.get(kind.name, value)
        lines = {"string": [f"encoded = {value}.encode()"], "message": [f"body = {kind.body(value)}"]}.get(kind.name, [])
        return lines + [
            f"if len({body}) < 0x80:",
            f"    {out} += {tag}",
            f"    {out}.append(len({body}))",
            f"    {out} += {body}",
            "else:",
            f"    _nats.write_bytes({out}, {tag}, {body})",
        ]
    return [kind.write(out, tag, value)]


def _encode_field(f: Field) -> list[str]:
    kind = f.kind
    tag = key_bytes(f.number, f.wire)
    lines = [f"value = message.{f.name}"]
    if f.label == "map":
        assert f.key is not None
        return lines + [
            "if value:",
            "    for key, item in value.items():",
            "        entry = bytearray()",
            *_indent(_write(f.key, "entry", key_bytes(1, f.key.wire), "key"), 2),
            *_indent(_write(kind, "entry", key_bytes(2, kind.wire), "item"), 2),
            *_indent(_write(Kind("bytes", LEN), "out", tag, "entry"), 2),
        ]
    if f.label == "repeated":
        if f.packed:
            return lines + ["if value:", f"    _nats.write_packed_{kind.name}(out, {key_bytes(f.number, LEN)}, value)"]
        return lines + ["if value:", "    for item in value:", *_indent(_write(kind, "out", tag, "item"), 2)]
    if f.label in ("optional", "oneof") or kind.wire == LEN and kind.name not in ("string", "bytes"):
        return lines + ["if value is not None:", *_indent(_write(kind, "out", tag, "value"))]
    if kind.name in ("float", "double"):
        return lines + ["if _nats.nonzero(value):", *_indent(_write(kind, "out", tag, "value"))]
    if kind.name == "bool":  # implicit presence: written only when true
        return lines + ["if value:", f"    out += {tag[:-1]}\\x01\"  # the key and true"]
    return lines + ["if value:", *_indent(_write(kind, "out", tag, "value"))]


def _encoder(plan: Message) -> list[str]:
    lines = [f"def _encode_{plan.py_name}(message: {plan.py_name}) -> bytes:", "    out = bytearray()"]
    if plan.fields:
        lines.append("    value: _nats.Any  # fields of several types pass through it")
    for f in sorted(plan.fields, key=lambda f: f.number):
        lines += ["    " + line for line in _encode_field(f)]
    lines += ["    out += message._unknown_fields", "    return bytes(out)"]
    return lines


def render(package: Any) -> str:
    """The codec section of an output module ("" when it has no messages)."""
    plans = read_messages(package)
    if not plans:
        return ""
    blocks: list[list[str]] = []
    for plan in plans:
        if plan.unsupported:
            blocks.append(_comment(f"{plan.py_name} has no generated codec (betterproto2's is used): {plan.unsupported}."))
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

