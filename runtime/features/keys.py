"""Storage keys of persisted methods: a request's key rendered from its method's template
(`render_key`, the Go plugin's rules) and checked (`key_problem`). Pure: no I/O, used by the server
before a handler runs and by the client helpers to find an entry."""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import betterproto2

from ..core.errors import ErrorCode, RpcError
from ..core.headers import quote
from ..schema.spec import KeyKind, KeyTemplate

MAX_KEY_LENGTH = 1024  # characters of a rendered key (a subject token sequence; NATS caps control lines)

_PLACEHOLDER = re.compile(r"\{(\w+)\}", re.ASCII)  # the Go plugin's placeholder (Go's \w is ASCII)
_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")  # used with fullmatch: `$` would let "k\n" through


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid KV key (or object name of ours), or None."""
    if not key:
        return "is empty"
    if len(key) > MAX_KEY_LENGTH:
        return f"is longer than {MAX_KEY_LENGTH} characters"
    if not _KEY.fullmatch(key):
        return "may contain only letters, digits and - / _ = ."
    if key.startswith(".") or key.endswith(".") or ".." in key:
        return "has an empty token (a leading, trailing or double '.')"
    return None


def _field_text(kind: KeyKind, value: Any, names: Mapping[int, str]) -> str:
    """A request field as the Go plugin's `fmt.Sprintf("%v", msg.GetField())` writes it."""
    if kind is KeyKind.STRING:
        return value if isinstance(value, str) else ""
    if kind is KeyKind.BOOL:
        return "true" if value else "false"
    number = int(value or 0)
    if kind is KeyKind.ENUM:
        return names.get(number, str(number))  # Go's String() of an unknown value is its number
    return str(number)


@functools.lru_cache(maxsize=256)
def free_text_stops(text: str) -> Mapping[str, str]:
    """Per `{field}` of a template that another field follows: the first character of the text between
    them, which a string value of it must not hold (`{tenant}.{id}`: a tenant "a.b" with id "c" and a
    tenant "a" with id "b.c" would share a key). Empty when no text separates them (the plugin refuses that)."""
    parts = _PLACEHOLDER.split(text)  # literal, name, literal, name, ..., literal
    stops: dict[str, str] = {}
    for name, after in zip(parts[1:-2:2], parts[2:-1:2]):  # every field but the last, and the text after it
        stops[name] = stops.get(name, "") + after[:1]
    return stops


def render_key(template: KeyTemplate, request: betterproto2.Message, method: str | None = None) -> str:
    """The storage key of `request`; INVALID_ARGUMENT when its fields do not make a valid key, or one
    another request could make too (nothing is written then: a request must not be able to address keys
    outside the template's shape, nor another request's key)."""
    values = {f.name: _field_text(f.kind, getattr(request, f.attr or f.name, None), f.names) for f in template.fields}
    stops = free_text_stops(template.text)
    for f in template.fields:
        held = [c for c in stops.get(f.name, "") if c in values[f.name]] if f.kind is KeyKind.STRING else []
        if held:
            raise RpcError(
                ErrorCode.INVALID_ARGUMENT,
                f"the request's {f.name} {quote(values[f.name], 64)} holds {held[0]!r}, which ends {{{f.name}}} in the "
                f"key template {template.text!r}: two requests could give the same key",
                method=method,
            )
    key = _PLACEHOLDER.sub(lambda match: values.get(match[1], match[0]), template.text)
    problem = key_problem(key)
    if problem is not None:
        raise RpcError(
            ErrorCode.INVALID_ARGUMENT,
            f"the request gives the storage key {quote(key, 64)} (template {template.text!r}), which {problem}",
            method=method,
        )
    return key
