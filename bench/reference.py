"""A MODEL (not the reference) of what protoc-gen-nats-micro's generated Python does per unary call,
written for this bench from reading the Go project's templates; none of its code.

`make bench` no longer runs it: its reference rows run the real generated code
(../shared/reference-python/gen, `--impl ref` in bench/worker.py). Measured beside the real code it
costs about the same per call (docs/PERFORMANCE.md, 2026-12-07); kept only as `--impl model` of
bench/breakdown.py, and for `generate_pb2`, which bench/breakdown.py and bench/modes.py use.

The Go plugin cannot be built here (no Go module proxy), so this module repeats, step by step, what
its Python templates generate for a unary method (docs/PERFORMANCE.md, "The reference Python"):
google protobuf `_pb2` messages (upb), a `nats.micro` service whose endpoint callback awaits the
handler inline (no task per request), a request-headers dict and a `ServerInfo` dataclass per call,
an inner `invoke` closure per call on both sides, `nc.request(..., timeout=5.0)` on the client and a
`(response, headers)` tuple back. The `_pb2` modules are generated at bench time with grpc_tools.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from nats import micro
from nats.aio.client import Client as NATS

ROOT = Path(__file__).resolve().parent.parent
PROTO = "streaming/v1/stream_demo.proto"
SUBJECT_PREFIX = "api.v1.stream"  # the proto's (natsmicro.service).subject_prefix, as the Go plugin reads it
DEFAULT_CLIENT_TIMEOUT = 5.0  # the template's client default when the service sets no timeout
SERVICE_TIMEOUT = 0.0  # the proto sets no timeout: the handler runs without asyncio.wait_for
ERROR_CODE_INTERNAL = "INTERNAL"
ERROR_CODE_UNAVAILABLE = "UNAVAILABLE"


def generate_pb2(dest: Path) -> None:
    """google-protobuf modules for the demo proto (and the options it imports) into `dest`."""
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"), f"--python_out={dest}", PROTO, "natsmicro/options.proto"],
        check=True, timeout=120,
    )


def load_pb2(dest: Path) -> Any:
    """The generated `stream_demo_pb2` module from `dest` (see `generate_pb2`)."""
    sys.path.insert(0, str(dest))
    from streaming.v1 import stream_demo_pb2  # type: ignore[import-not-found]

    return stream_demo_pb2


@dataclass
class ServerInfo:
    """What the generated code hands a handler with each call (its `ServerInfo` has these fields)."""

    service: str
    method: str
    subject: str
    headers: dict[str, str] | None = None
    response_headers: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.headers is None:
            self.headers = {}
        if self.response_headers is None:
            self.response_headers = {}


class ServiceError(Exception):
    """The generated `<Service>Error`: a code, the method and a message."""

    def __init__(self, code: str, method: str, message: str, data: bytes | None = None) -> None:
        super().__init__(f"[{code}] {method}: {message}")
        self.code, self.method, self.message, self.data = code, method, message, data


Handler = Callable[[Any, ServerInfo], Awaitable[Any]]


async def register(nc: NATS, pb: Any, ping: Handler) -> Any:
    """A `nats.micro` service with the Ping endpoint, as the generated `register_<service>` sets it
    up (service name and version defaults, queue group `q` from nats.micro); returns the service."""
    service = await micro.add_service(
        nc, micro.ServiceConfig(name="stream_demo_service", version="0.0.1", description="StreamDemoService", metadata=None)
    )
    subject = f"{SUBJECT_PREFIX}.ping"

    async def handle_ping(req: micro.Request) -> None:
        # The per-call steps of the template's unary endpoint handler, in its order.
        try:
            request_msg = pb.PingRequest.FromString(req.data)
            headers: dict[str, str] = {}
            if req.headers:
                for key, values in req.headers.items():
                    if values:
                        headers[key] = values[0] if isinstance(values, list) else values
            info = ServerInfo(service="StreamDemoService", method="Ping", subject=f"{SUBJECT_PREFIX}.ping", headers=headers)

            async def invoke(request: Any, call_info: ServerInfo) -> Any:
                if SERVICE_TIMEOUT > 0:
                    return await asyncio.wait_for(ping(request, call_info), timeout=SERVICE_TIMEOUT)
                return await ping(request, call_info)

            response_msg = await invoke(request_msg, info)  # no interceptors registered
            response_data = response_msg.SerializeToString()
            response_headers = info.response_headers if info.response_headers else None
            await req.respond(response_data, headers=response_headers)
        except asyncio.TimeoutError:
            await req.respond(b"", headers={"Status": ERROR_CODE_INTERNAL, "Description": "request timeout for Ping"})
        except ServiceError as error:
            await req.respond(error.data or b"", headers={"Status": error.code, "Description": error.message})
        except Exception as error:  # noqa: BLE001 - the template answers every other error as INTERNAL
            await req.respond(b"", headers={"Status": ERROR_CODE_INTERNAL, "Description": str(error)})

    await service.add_endpoint(name="Ping", handler=handle_ping, subject=subject)
    return service


class Client:
    """The generated `<Service>Client`'s unary path: `await client.ping(request)` gives
    `(response, response_headers)`."""

    def __init__(self, nc: NATS, pb: Any) -> None:
        self._nc = nc
        self._pb = pb
        self._subject_prefix = SUBJECT_PREFIX
        self._default_timeout = DEFAULT_CLIENT_TIMEOUT

    async def ping(self, req: Any, headers: dict[str, str] | None = None, timeout: float | None = None) -> tuple[Any, dict[str, str]]:
        request_timeout = timeout or self._default_timeout
        pb = self._pb

        async def invoke(method: str, req_inner: Any, headers_inner: dict[str, str]) -> tuple[Any, dict[str, str]]:
            subject = f"{self._subject_prefix}.ping"
            request_data = req_inner.SerializeToString()
            nats_headers = headers_inner if headers_inner else None
            try:
                msg = await self._nc.request(subject, request_data, timeout=request_timeout, headers=nats_headers)
            except asyncio.TimeoutError:
                raise ServiceError(ERROR_CODE_UNAVAILABLE, method, f"request timeout after {request_timeout}s") from None
            except Exception as error:
                raise ServiceError(ERROR_CODE_UNAVAILABLE, method, f"request failed: {error}") from error
            error_code = None
            if msg.headers:
                code = msg.headers.get("Nats-Service-Error-Code")
                if code:
                    error_code = code[0] if isinstance(code, list) else code
            if error_code:
                text = msg.headers.get("Nats-Service-Error") if msg.headers else None
                raise ServiceError(error_code, method, (text[0] if isinstance(text, list) else text) or "unknown error", msg.data or None)
            try:
                response_msg = pb.PingResponse.FromString(msg.data)
            except Exception as error:
                raise ServiceError(ERROR_CODE_INTERNAL, method, f"failed to parse response: {error}") from error
            response_headers: dict[str, str] = {}
            if msg.headers:
                for key, value in msg.headers.items():
                    if key not in ("Nats-Service-Error-Code", "Nats-Service-Error"):
                        response_headers[key] = value[0] if isinstance(value, list) else value
            return response_msg, response_headers

        return await invoke("Ping", req, headers or {})  # no interceptors registered
