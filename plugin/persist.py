"""`(natsmicro.kv_store)` and `(natsmicro.object_store)` at generation time: read, check, resolve.

The result is the persistence part of a method's descriptor (`KvStoreSpec` / `ObjectStoreSpec` in
`betterproto_nats.schema.spec`), rendered as Python source; the runtime does the writing and reading.
Key templates follow the Go plugin's rules (`{field}` names a top-level field of the request), checked
here so that a template that can only give broken keys, or one key for two requests, never reaches a
running service.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from betterproto2_compiler.lib.google.protobuf import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FieldDescriptorProtoLabel,
    FieldDescriptorProtoType as T,
)

from . import options as opts

# The Go plugin's placeholder: `{name}` with name made of word characters; anything else is literal.
PLACEHOLDER = re.compile(r"\{(\w+)\}", re.ASCII)
_KEY_TEXT = re.compile(r"[-/_=.a-zA-Z0-9]*")  # what the literal parts may hold (KV key characters)
_BUCKET = re.compile(r"[a-zA-Z0-9_-]+")  # JetStream's bucket names
MAX_HISTORY = 64  # JetStream's limit on revisions per key
MIN_MESSAGE_TTL = 1.0  # nats-server's smallest per-message TTL (seconds; it keeps whole seconds)
_INTEGERS = {
    T.INT32, T.INT64, T.UINT32, T.UINT64, T.SINT32, T.SINT64,
    T.FIXED32, T.FIXED64, T.SFIXED32, T.SFIXED64,
}  # fmt: skip
# The characters a rendered value of each kind can hold: a field followed by another must be followed by
# text that starts with none of them, or where the value ends is unknown (two requests, one key).
_VALUE_CHARS = {
    "INT": frozenset("0123456789"),  # decimal, a '-' only first
    "BOOL": frozenset("truefals"),
    "ENUM": frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_"),  # names; numbers when unknown
}
_WRITE_MODES = {
    opts.KVWriteMode.KV_WRITE_MODE_LAST_WRITE_WINS: "LAST_WRITE_WINS",
    opts.KVWriteMode.KV_WRITE_MODE_COMPARE_AND_SET: "COMPARE_AND_SET",
    opts.KVWriteMode.KV_WRITE_MODE_CREATE_ONLY: "CREATE_ONLY",
}


class PersistError(ValueError):
    """A persistence option the generator refuses; the text names the rule (the caller adds file and method)."""


@dataclass
class KeyFieldModel:
    name: str
    kind: str  # a `KeyKind` member name
    attr: str
    names: dict[int, str] = field(default_factory=dict)

    def source(self) -> str:
        args = [repr(self.name)]
        if self.kind != "STRING":
            args.append(f"_nats.KeyKind.{self.kind}")
        if self.attr != self.name:
            args.append(f"attr={self.attr!r}")
        if self.names:
            args.append(f"names={self.names!r}")
        return f"_nats.KeyField({', '.join(args)})"


@dataclass
class KeyModel:
    text: str
    fields: list[KeyFieldModel]
    warnings: list[str] = field(default_factory=list)  # rules that hold at run time (the plugin prints them)

    def source(self) -> str:
        if not self.fields:
            return f"_nats.KeyTemplate({self.text!r})"
        return f"_nats.KeyTemplate({self.text!r}, ({''.join(f.source() + ', ' for f in self.fields)}))"


@dataclass
class StoreModel:
    """One store option of a method, resolved: the keyword arguments of its spec class."""

    kind: str  # "kv_store" or "object_store"
    bucket: str
    client_only: bool
    args: dict[str, str]  # keyword -> Python source, defaults left out
    warnings: list[str] = field(default_factory=list)  # printed by the plugin with file and method

    def source(self) -> str:
        spec = "KvStoreSpec" if self.kind == "kv_store" else "ObjectStoreSpec"
        return f"_nats.{spec}({', '.join(f'{name}={value}' for name, value in self.args.items())})"


@dataclass
class RequestIndex:
    """What key templates are checked against: the request's messages and enums, and Python names."""

    messages: dict[str, DescriptorProto]
    enums: dict[str, EnumDescriptorProto]
    field_py_name: Callable[[str], str]


def _seconds(value: opts.Duration | None, name: str, minimum: float = 0.0) -> float | None:
    seconds = opts.seconds(value) or 0.0
    if seconds < 0:
        raise PersistError(f"{name} must not be negative")
    if 0 < seconds < minimum:
        raise PersistError(f"{name} must be at least {minimum:g} s (nats-server keeps per-message TTLs in whole seconds)")
    return seconds or None


def key_template(text: str, request_type: str, index: RequestIndex, rule: str) -> KeyModel:
    """A key template checked against the request message: every `{field}` a top-level field of a
    type that renders as a key (string, integer, bool, enum), the literal text made of key characters."""
    if not text:
        raise PersistError(
            f"{rule}.key_template is empty; name the key, e.g. \"{{id}}\" or a fixed \"latest\" (an empty key is "
            "not valid in JetStream)"
        )
    message = index.messages.get(request_type)
    shown = request_type.lstrip(".")
    if message is None:
        raise PersistError(f"{rule}: request message {shown} not found")
    literal = PLACEHOLDER.sub("x", text)
    if not _KEY_TEXT.fullmatch(literal):
        bad = sorted({c for c in literal if not _KEY_TEXT.fullmatch(c)})
        raise PersistError(
            f"{rule}.key_template {text!r}: {''.join(bad)!r} cannot be part of a key (keys use letters, digits and "
            "- / _ = .; placeholders are {field})"
        )
    if literal.startswith(".") or literal.endswith(".") or ".." in literal:
        raise PersistError(f"{rule}.key_template {text!r} gives keys with an empty token (a leading, trailing or double '.')")
    by_name = {f.name: f for f in message.field}
    fields: list[KeyFieldModel] = []
    for name in dict.fromkeys(PLACEHOLDER.findall(text)):
        found = by_name.get(name)
        if found is None:
            raise PersistError(
                f"{rule}.key_template {text!r} names {{{name}}}, which is not a field of {shown} "
                f"(fields: {', '.join(by_name) or 'none'})"
            )
        fields.append(_key_field(found, shown, index, rule))
    return KeyModel(text=text, fields=fields, warnings=_one_key_per_request(text, {f.name: f.kind for f in fields}, rule))


def _one_key_per_request(text: str, kinds: dict[str, str], rule: str) -> list[str]:
    """Two different requests must not render to one key. A field followed by another field must end
    where the text between them begins: an error when it cannot (no text between them, or text that
    starts with a character the value can hold); for free text (a string, which can hold any key
    character) a warning, since the runtime then refuses values holding the text's first character."""
    parts = PLACEHOLDER.split(text)  # literal, name, literal, name, ..., literal
    names, between = parts[1::2], parts[2::2]
    warnings: list[str] = []
    for name, after, following in zip(names, between, names[1:]):
        where = f"{rule}.key_template {text!r}"
        if not after:
            raise PersistError(
                f"{where} breaks the rule 'fields are separated': {{{name}}}{{{following}}} has no text between "
                "the fields, so where one ends is unknown and two requests could give the same key; separate them "
                "(e.g. with '.')"
            )
        stop = after[0]
        if kinds[name] == "STRING":
            warnings.append(
                f"{where}: rule 'free text is last': {{{name}}} is a string followed by {{{following}}}, so two requests "
                f"could give the same key if its value held {stop!r}; requests whose {name} holds {stop!r} are refused "
                f"at run time (INVALID_ARGUMENT). Put the free-text field last to allow {stop!r} in it"
            )
        elif stop in _VALUE_CHARS[kinds[name]]:
            raise PersistError(
                f"{where} breaks the rule 'fields are separated': the text after {{{name}}} starts with {stop!r}, "
                f"which a value of {name} can hold, so two requests could give the same key; separate the fields "
                "with '.' (or '/', '=')"
            )
    return warnings


def _key_field(found: FieldDescriptorProto, shown: str, index: RequestIndex, rule: str) -> KeyFieldModel:
    where = f"{rule}.key_template: field {shown}.{found.name}"
    if found.label == FieldDescriptorProtoLabel.REPEATED:
        raise PersistError(f"{where} is repeated or a map; only single string, integer, bool or enum fields make keys")
    attr = index.field_py_name(found.name)
    if found.type == T.STRING:
        return KeyFieldModel(found.name, "STRING", attr)
    if found.type in _INTEGERS:
        return KeyFieldModel(found.name, "INT", attr)
    if found.type == T.BOOL:
        return KeyFieldModel(found.name, "BOOL", attr)
    if found.type == T.ENUM:
        enum = index.enums.get(found.type_name)
        if enum is None:
            raise PersistError(f"{where}: enum {found.type_name.lstrip('.')} not found")
        names: dict[int, str] = {}
        for value in enum.value:
            names.setdefault(value.number, value.name)  # with allow_alias the first name is Go's String()
        return KeyFieldModel(found.name, "ENUM", attr, names)
    kind = str(T(found.type).name or found.type).removeprefix("TYPE_").lower()
    raise PersistError(f"{where} is a {kind}; only string, integer, bool or enum fields make keys")


def _bucket(bucket: str, rule: str) -> str:
    if not bucket:
        raise PersistError(f"{rule}.bucket must be set")
    if not _BUCKET.fullmatch(bucket):
        raise PersistError(f"{rule}.bucket {bucket!r} may contain only letters, digits, '-' and '_'")
    return bucket


def _store(
    kind: str, options: opts.KVStoreOptions | opts.ObjectStoreOptions, request_type: str, index: RequestIndex, extra: Callable[[str], dict[str, str]]
) -> StoreModel:
    """What both options share (bucket, key, ttl, description, client_only, compression), checked,
    around what only `kind` has (`extra(rule)`)."""
    rule = f"(natsmicro.{kind})"
    args = {"bucket": repr(_bucket(options.bucket, rule))}
    key = key_template(options.key_template, request_type, index, rule)
    args["key"] = key.source()
    ttl = _seconds(options.ttl, f"{rule}.ttl")
    if ttl:
        args["ttl"] = repr(ttl)
    if options.description:
        args["description"] = repr(options.description)
    args.update(extra(rule))
    if options.client_only:
        args["client_only"] = "True"
    if options.compression:
        args["compression"] = "True"
    return StoreModel(kind, options.bucket, options.client_only, args, key.warnings)


def kv_store(kv: opts.KVStoreOptions, request_type: str, index: RequestIndex) -> StoreModel:
    """`(natsmicro.kv_store)` resolved as the Go plugin resolves it (write mode: compare-and-set
    when key_ttl is set, else last-write-wins; failure policy: best effort) and checked."""

    def kv_only(rule: str) -> dict[str, str]:
        args: dict[str, str] = {}
        if not 0 <= kv.max_history <= MAX_HISTORY:
            raise PersistError(f"{rule}.max_history must be between 1 and {MAX_HISTORY} (0 = 1)")
        if kv.max_history > 1:
            args["history"] = str(kv.max_history)
        if kv.metadata:
            args["metadata"] = repr(dict(sorted(kv.metadata.items())))
        for name in ("limit_marker_ttl", "key_ttl", "purge_ttl"):
            seconds = _seconds(getattr(kv, name), f"{rule}.{name}", MIN_MESSAGE_TTL)
            if seconds:
                args[name] = repr(seconds)
        mode = _WRITE_MODES.get(kv.write_mode)
        if mode is None:  # unspecified: the Go plugin's resolution
            mode = "COMPARE_AND_SET" if kv.key_ttl else "LAST_WRITE_WINS"
        if mode != "LAST_WRITE_WINS":
            args["write_mode"] = f"_nats.WriteMode.{mode}"
        if kv.persist_failure_policy == opts.KVPersistFailurePolicy.KV_PERSIST_FAILURE_POLICY_REQUIRED:
            args["policy"] = "_nats.PersistPolicy.REQUIRED"
        return args

    return _store("kv_store", kv, request_type, index, kv_only)


def object_store(obj: opts.ObjectStoreOptions, request_type: str, index: RequestIndex) -> StoreModel:
    """`(natsmicro.object_store)` checked (the same key rules as KV: keys are object names here)."""
    return _store("object_store", obj, request_type, index, lambda rule: {})


def helper_names(py_name: str, kv: StoreModel | None, obj: StoreModel | None) -> list[str]:
    """The client helpers a persisted method adds to the generated client."""
    names = []
    if kv is not None:
        names += [f"get_{py_name}_cached", f"watch_{py_name}_cached", f"get_{py_name}_history", f"purge_{py_name}_cached"]
    if obj is not None:
        names += [f"get_{py_name}_stored", f"delete_{py_name}_stored"]
    return names
