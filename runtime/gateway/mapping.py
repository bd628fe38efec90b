"""What HTTP and RPC calls say to each other: statuses for RPC codes (grpc-gateway's table), error
bodies, deadlines from a header or query parameter, and the request headers passed on as call headers."""

from __future__ import annotations

import math
import re
from typing import Iterable, Mapping

from ..core.errors import ErrorCode, RpcError, grpc_number
from ..core.headers import MAX_ERROR_CODE, clip, is_reserved

# grpc-gateway's runtime.HTTPStatusFromCode, by our code names (a service's own codes: 500).
HTTP_STATUS: dict[str, int] = {
    "OK": 200,
    ErrorCode.CANCELLED: 499,
    "UNKNOWN": 500,
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.RESOURCE_EXHAUSTED: 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    ErrorCode.UNIMPLEMENTED: 501,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DATA_LOSS: 500,
}

MAX_TIMEOUT = 24 * 3600.0  # seconds: a deadline further away is refused (INVALID_ARGUMENT)
DEFAULT_PASSED_HEADERS = ("Authorization",)


def http_status(code: str) -> int:
    """The HTTP status of an RPC error code, as grpc-gateway maps them (unknown codes: 500)."""
    return HTTP_STATUS.get(code, 500)


def close_code(code: str) -> int:
    """The WebSocket close code of a bidi call that failed with `code`: 4000 + its gRPC number (a
    service's own codes: 4002, UNKNOWN). Close code 1000 is a clean end."""
    return 4000 + grpc_number(code)


def error_body(error: RpcError) -> dict[str, str]:
    """The JSON body of an error: `{"code": "NOT_FOUND", "message": "..."}` (both clipped)."""
    return {"code": clip(str(error.code), MAX_ERROR_CODE), "message": clip(str(error.message))}


# gRPC's `grpc-timeout`: up to 8 digits and a unit (Hours, Minutes, Seconds, milli, micro, nano).
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_SECONDS = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")


def parse_timeout(text: str) -> float:
    """A deadline in seconds from `Grpc-Timeout` form (`500m`, `10S`) or plain seconds (`2.5`);
    INVALID_ARGUMENT when it is neither, not positive or beyond MAX_TIMEOUT."""
    text = text.strip()
    grpc = _GRPC_TIMEOUT.fullmatch(text)
    if grpc:
        seconds = int(grpc.group(1)) * _UNIT_SECONDS[grpc.group(2)]
    elif _SECONDS.fullmatch(text):
        seconds = float(text)
    else:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"timeout {clip(repr(text), 40)}: seconds (2.5) or gRPC form (500m, 10S)")
    if not (0 < seconds <= MAX_TIMEOUT) or not math.isfinite(seconds):
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"timeout {clip(repr(text), 40)}: must be above 0 and at most {MAX_TIMEOUT:g} s")
    return seconds


def request_timeout(headers: Mapping[str, str], query: Mapping[str, str]) -> float | None:
    """The call's deadline: the `timeout` query parameter, else `Grpc-Timeout`, else `X-Timeout`."""
    for text in (query.get("timeout"), headers.get("grpc-timeout"), headers.get("x-timeout")):
        if text is not None:
            return parse_timeout(text)
    return None


def allowed_headers(names: Iterable[str]) -> dict[str, str]:
    """The allow-list of request headers passed on: lower case -> the spelling the call carries
    (as given: `Authorization`, `X-Request-Id`); the protocol's own names are refused."""
    out: dict[str, str] = {}
    for name in names:
        name = name.strip()
        if not name or is_reserved(name):
            raise ValueError(f"header {name!r} is reserved for the protocol or NATS (or empty) and cannot be passed on")
        out[name.lower()] = name
    return out


MAX_METADATA = 32  # response headers passed on, at most
_METADATA_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")
_METADATA_VALUE = re.compile(r"[\x20-\x7e\t]{0,1024}")


def metadata_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    """A service's response headers as grpc-gateway passes them on, `Grpc-Metadata-<name>`: the
    protocol's own, names that are not tokens and values that are not printable ASCII (or beyond
    1 KiB) left out, at most 32 (they come from the wire)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers.items():
        if len(out) >= MAX_METADATA:
            break
        if isinstance(name, str) and isinstance(value, str) and not is_reserved(name) and _METADATA_NAME.fullmatch(name) and _METADATA_VALUE.fullmatch(value):
            out.append((f"grpc-metadata-{name.lower()}".encode(), value.encode()))
    return out


def call_headers(headers: Iterable[tuple[str, str]], allow: Mapping[str, str]) -> dict[str, str]:
    """The request headers on the allow-list, as call headers (several values joined with ", ")."""
    out: dict[str, str] = {}
    for name, value in headers:
        spelled = allow.get(name.lower())
        if spelled is not None:
            out[spelled] = f"{out[spelled]}, {value}" if spelled in out else value
    return out
