"""The gateway as an ASGI application: every method of a catalog over HTTP, no generated code.

unary `POST /{pkg.Service}/{Method}` JSON in, JSON out; server streams as server-sent events (NDJSON
with `Accept: application/x-ndjson`); client streams from an NDJSON body read as it arrives; bidi over a
WebSocket, one JSON message per frame each way. Nothing is buffered beyond one message per call: a
message is taken from the NATS stream only after the previous one was handed to the HTTP connection,
whose writes wait while the client does not read (the runtime's flow window then stops the service),
and a client that goes away cancels its call.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, AsyncIterable, AsyncIterator, Callable, Mapping, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..core.errors import ErrorCode, RpcError
from ..core.headers import BLOB_SIZE, parse_uint
from ..reflection import jsonmap
from ..reflection.catalog import Catalog, MethodInfo
from ..reflection.dynamic import DynamicClient, chunk_reader, chunk_writer
from .bodies import ClientGone, PayloadTooLarge, RequestBody, StreamFormat, dumps, first_of, parse_json, unless_gone
from .http_rules import Binding, bindings_of, default_gets, match, method_paths
from .mapping import DEFAULT_PASSED_HEADERS, MAX_TIMEOUT, allowed_headers, call_headers, close_code, error_body, http_status, metadata_headers, request_timeout
from .openapi import openapi_document

log = logging.getLogger("betterproto_nats.gateway")

NDJSON = "application/x-ndjson"
OCTETS = "application/octet-stream"


class Calls(Protocol):
    """What the gateway uses of `reflection.DynamicClient`: calls by method with protobuf bytes."""

    async def unary(
        self, method: MethodInfo, request: bytes, *, headers: Mapping[str, str] | None = ..., timeout: float | None = ..., response_headers: dict[str, str] | None = ...
    ) -> bytes: ...

    def server_stream(
        self, method: MethodInfo, request: bytes, *, headers: Mapping[str, str] | None = ..., timeout: float | None = ..., response_headers: dict[str, str] | None = ...
    ) -> AsyncIterator[bytes]: ...

    async def client_stream(
        self,
        method: MethodInfo,
        requests: AsyncIterable[bytes],
        *,
        headers: Mapping[str, str] | None = ...,
        timeout: float | None = ...,
        response_headers: dict[str, str] | None = ...,
    ) -> bytes: ...

    def bidi(self, method: MethodInfo, requests: AsyncIterable[bytes], *, headers: Mapping[str, str] | None = ..., timeout: float | None = ...) -> AsyncIterator[bytes]: ...

    def upload_chunk_size(self, method: MethodInfo, requested: int = ...) -> int: ...


@dataclass(frozen=True)
class GatewayOptions:
    """`pass_headers`: request headers passed on as call headers (the allow-list, spelled as the
    service reads them); `max_body`: bytes of a JSON request body, of one NDJSON line and of one
    WebSocket frame; `emit_defaults`: answers show fields at their default value too (as
    grpc-gateway v2 does; False: the JSON mapping's default, left out); `sse_keepalive`: seconds
    without a message after which a server-sent events stream gets a comment line (proxies close
    streams they see idle; 0: none); `unary_timeout`: the deadline of a unary call when neither the
    request nor the proto gives one (None: none); `title`: the OpenAPI document's title."""

    pass_headers: tuple[str, ...] = DEFAULT_PASSED_HEADERS
    max_body: int = 4 * 1024 * 1024
    emit_defaults: bool = True
    sse_keepalive: float = 15.0
    unary_timeout: float | None = 30.0
    title: str = "betterproto-nats gateway"
    _allow: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_body < 1:
            raise ValueError("max_body must be at least 1 byte")
        if self.unary_timeout is not None and not 0 < self.unary_timeout <= MAX_TIMEOUT:
            raise ValueError(f"unary_timeout must be above 0 and at most {MAX_TIMEOUT:g} s, or None")
        if not self.sse_keepalive >= 0:
            raise ValueError("sse_keepalive must be 0 (none) or more seconds")
        self._allow.update(allowed_headers(self.pass_headers))


def json_answer(value: Any, answered: Mapping[str, str]) -> Response:
    """A JSON answer with the service's response headers as `Grpc-Metadata-*`."""
    response = Response(dumps(value), media_type="application/json")
    response.raw_headers.extend(metadata_headers(answered))
    return response


def error_response(error: RpcError) -> Response:
    """An RPC error as grpc-gateway answers it: its HTTP status, `{code, message}`, Retry-After when
    the service gave one."""
    status = 413 if isinstance(error, PayloadTooLarge) else http_status(error.code)
    headers = {}
    if error.retry_after is not None and math.isfinite(error.retry_after) and error.retry_after >= 0:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(error_body(error), status_code=status, headers=headers)


async def _aclose(iterator: AsyncIterator[bytes]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # the call's end was already reported; closing only releases it
            log.debug("closing a stream failed", exc_info=True)


@dataclass(frozen=True)
class Framing:
    """How a server stream goes out: its media type, each message's bytes from its protobuf body, the
    error's frame (None: the connection is cut, as for a raw download), the end's, and what is sent
    to keep an idle stream open through proxies (None: nothing)."""

    media_type: str
    message: Callable[[bytes], bytes]
    error: Callable[[RpcError], bytes] | None
    end: bytes
    keepalive: bytes | None = None


class StreamedAnswer(Response):
    """A server stream's messages, framed as they arrive; the call is cancelled when the client
    disconnects and its stream closed whatever happens. With a keep-alive frame, one goes out after
    `keepalive` seconds without a message."""

    def __init__(
        self,
        messages: AsyncIterator[bytes],
        first: bytes | None,
        body: RequestBody,
        framing: Framing,
        size: int | None = None,
        keepalive: float = 0.0,
        metadata: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(media_type=framing.media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # sent as it comes
        if size is not None:
            self.raw_headers.append((b"content-length", str(size).encode()))
        self.raw_headers.extend(metadata or ())
        self.messages, self.first, self.framing = messages, first, framing
        self.request_body = body
        self.keepalive = keepalive if framing.keepalive is not None else 0.0
        self.sending = asyncio.Lock()  # the pump's and the keep-alive's frames, one at a time
        self.last_sent = 0.0
        self.finished = False  # the last frame went: nothing may follow it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        beat: asyncio.Task[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            self.last_sent = asyncio.get_running_loop().time()
            if self.keepalive > 0:
                beat = asyncio.ensure_future(self._keep_alive(send))
            await first_of(asyncio.ensure_future(self._pump(send)), asyncio.ensure_future(self.request_body.disconnected()))
        except (ClientGone, OSError):
            pass  # the client went away: the call was cancelled
        finally:
            if beat is not None:
                beat.cancel()
                await asyncio.gather(beat, return_exceptions=True)
            await _aclose(self.messages)

    async def _send(self, send: Send, data: bytes, more: bool = True) -> None:
        async with self.sending:
            self.finished = not more
            await send({"type": "http.response.body", "body": data, "more_body": more})
            self.last_sent = asyncio.get_running_loop().time()

    async def _keep_alive(self, send: Send) -> None:
        """A keep-alive frame whenever `keepalive` seconds passed without one, decided while holding
        the sending lock: one due while the last frame is being written (a slow client) must not
        follow it (after the end of a response the server may be writing the next one)."""
        loop, frame = asyncio.get_running_loop(), self.framing.keepalive
        assert frame is not None
        while True:
            await asyncio.sleep(max(0.0, self.last_sent + self.keepalive - loop.time()))
            async with self.sending:
                if self.finished:
                    return
                if loop.time() - self.last_sent < self.keepalive:
                    continue  # a message went meanwhile
                try:
                    await send({"type": "http.response.body", "body": frame, "more_body": True})
                except OSError:
                    return  # the client went away: the pump and the disconnect watch see it too
                self.last_sent = loop.time()

    async def _pump(self, send: Send) -> None:
        frame = self.framing.message
        try:
            if self.first is not None:
                await self._send(send, frame(self.first))
            async for body in self.messages:
                await self._send(send, frame(body))
            tail = self.framing.end
        except RpcError as error:
            if self.framing.error is None:
                log.warning("a raw download failed after its start, its connection is cut: %s", error)
                return  # no end of the body: the client sees a cut download
            tail = self.framing.error(error)
        await self._send(send, tail, more=False)


class Gateway:
    """The routes of one catalog over one client, an ASGI application: a method's default route is
    taken here, the rest (`google.api.http` routes, WebSockets, the page, OpenAPI) by the Starlette
    app `app`."""

    def __init__(self, catalog: Catalog, client: Calls, options: GatewayOptions | None = None) -> None:
        self.catalog = catalog
        self.client = client
        self.options = options or GatewayOptions()
        # Default paths (without their `/`): `pkg.Service/Method`, and `pkg.Service@version/Method` of each version
        self.methods: dict[str, MethodInfo] = method_paths(catalog)
        annotated, self.problems = bindings_of(catalog)
        self.bindings = annotated + default_gets(self.methods)
        for problem in self.problems:
            log.warning("%s", problem)
        self._openapi: dict[str, Any] | None = None
        self._page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        self.app = Starlette(
            routes=[
                Route("/", self.page, methods=["GET"]),
                Route("/openapi.json", self.openapi, methods=["GET"]),
                WebSocketRoute("/{service}/{method}", self.websocket_call),
                Route("/{path:path}", self.annotated, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: a method's own `POST /{pkg.Service}/{Method}` straight to its call (the hot
        path, without Starlette's routing), everything else through `self.app`."""
        if scope["type"] == "http" and scope["method"] == "POST":
            method = self.methods.get(route_path(scope)[1:])
            if method is not None:
                response = await self._call(Request(scope, receive), method, None, {})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    # -- what a call needs ------------------------------------------------------------------------

    def lookup(self, path_params: Mapping[str, Any]) -> MethodInfo:
        name = f"{path_params.get('service', '')}/{path_params.get('method', '')}"
        method = self.methods.get(name)
        if method is None:
            raise RpcError(ErrorCode.NOT_FOUND, f"no method {name[:200]!r} here: see /openapi.json")
        return method

    def encode(self, method: MethodInfo, data: bytes, where: str = "request body") -> bytes:
        """A JSON request (bytes) as the protobuf bytes of the method's input. Also for a service
        whose bodies are JSON: it then gets the canonical proto3 JSON written from these, not the
        client's text, which may use forms the mapping allows and its decoder does not read."""
        return jsonmap.encode(method.input, parse_json(data, where))

    def decoder(self, method: MethodInfo, pick: Callable[[Any], Any] | None = None) -> Callable[[bytes], Any]:
        """Answers' protobuf bytes to their JSON value (or the part `pick` takes of it)."""
        output, take = method.output, pick or _whole
        defaults = self.options.emit_defaults
        return lambda body: take(jsonmap.decode(output, body, defaults=defaults))

    def settings(self, headers: Any, query: Mapping[str, str]) -> tuple[dict[str, str], float | None]:
        """Call headers (the allow-list) and deadline of a request."""
        return call_headers(headers.items(), self.options._allow), request_timeout(headers, query)

    # -- routes -------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        base = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(self._page.replace("__BASE__", dumps(base).decode().replace("</", "<\\/")))

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = openapi_document(
                self.catalog, title=self.options.title, passed_headers=self.options.pass_headers, methods=self.methods, bindings=self.bindings
            )
        document = dict(self._openapi)
        document["servers"] = [{"url": request.scope.get("root_path", "") or "/"}]
        return JSONResponse(document)

    async def annotated(self, request: Request) -> Response:
        """A route of a `google.api.http` annotation."""
        found = match(self.bindings, request.method, route_path(request.scope))
        if found is None:
            path = route_path(request.scope)[:200]
            return error_response(RpcError(ErrorCode.NOT_FOUND, f"no method at {request.method} {path!r}: see /openapi.json"))
        return await self._call(request, found[0].method, found[0], found[1])

    async def _call(self, request: Request, method: MethodInfo, binding: Binding | None, values: dict[str, str]) -> Response:
        body = RequestBody(request.receive, self.options.max_body)
        try:
            headers, timeout = self.settings(request.headers, request.query_params)
            if method.shape == "client":
                raw = method.chunked and request.headers.get("content-type", "").startswith(OCTETS)
                return await self._client_stream(method, body, headers, timeout, raw)
            if method.shape == "bidi":
                raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{method.full_name} is bidirectional: open a WebSocket on /{method.full_name}")
            data = await body.read()
            if binding is None:
                message = parse_json(data)
            else:
                message = binding.request(values, request.query_params.multi_items(), parse_json(data) if binding.body else None)
            request_bytes = jsonmap.encode(method.input, message)
            pick = binding.answer if binding is not None else _whole
            if method.shape == "server":
                framing = self.framing(method, request.headers.get("accept", ""), pick)
                return await self._server_stream(method, request_bytes, body, headers, timeout, framing)
            if timeout is None and method.timeout is None:
                timeout = self.options.unary_timeout
            answered: dict[str, str] = {}
            call = self.client.unary(method, request_bytes, headers=headers, timeout=timeout, response_headers=answered)
            answer = await unless_gone(call, body.disconnected())
            return json_answer(self.decoder(method, pick)(answer), answered)
        except RpcError as error:
            return error_response(error)
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        except ValueError as error:  # a header value the runtime refuses
            return error_response(RpcError(ErrorCode.INVALID_ARGUMENT, str(error)))

    def framing(self, method: MethodInfo, accept: str, pick: Callable[[Any], Any]) -> Framing:
        """Server-sent events; NDJSON when asked; the bytes alone of a chunked download when asked
        for application/octet-stream."""
        if method.chunked and OCTETS in accept:
            return Framing(OCTETS, chunk_reader(method), None, b"")
        form = StreamFormat(NDJSON in accept)
        decode = self.decoder(method, pick)
        keepalive = None if form.ndjson else b": keep-alive\n\n"  # an SSE comment: EventSource ignores it
        return Framing(form.media_type, lambda body: form.message(decode(body)), lambda error: form.error(error_body(error)), form.end(), keepalive)

    async def _server_stream(self, method: MethodInfo, request: bytes, body: RequestBody, headers: dict[str, str], timeout: float | None, framing: Framing) -> Response:
        """Waits for the first message (or the end, or the error) before answering, so that a call
        that fails at once gets its HTTP status (and a raw download its length, when announced)."""
        first_headers: dict[str, str] = {}
        messages = self.client.server_stream(method, request, headers=headers, timeout=timeout, response_headers=first_headers)
        try:
            first = await unless_gone(_next(messages), body.disconnected())
        except BaseException:
            await _aclose(messages)
            raise
        size = parse_uint(first_headers.get(BLOB_SIZE)) if framing.media_type == OCTETS else None
        return StreamedAnswer(messages, first, body, framing, size, self.options.sse_keepalive, metadata_headers(first_headers))

    async def _client_stream(self, method: MethodInfo, body: RequestBody, headers: dict[str, str], timeout: float | None, raw: bool) -> Response:
        """NDJSON, a message per line; or for a chunked upload sent as application/octet-stream, the
        body's bytes in chunks of the method's size (within the connection's max_payload, as the
        CLI's uploads)."""

        async def requests() -> AsyncIterator[bytes]:
            async for number, line in body.lines():
                yield self.encode(method, line, f"line {number}")

        async def chunks() -> AsyncIterator[bytes]:
            make, size = chunk_writer(method), self.client.upload_chunk_size(method)
            pending = bytearray()
            async for piece in body.chunks():
                pending += piece
                while len(pending) >= size:
                    yield make(bytes(pending[:size]))
                    del pending[:size]
            if pending:
                yield make(bytes(pending))

        answered: dict[str, str] = {}
        call = self.client.client_stream(method, chunks() if raw else requests(), headers=headers, timeout=timeout, response_headers=answered)
        answer = await unless_gone(call, body.disconnected())
        return json_answer(self.decoder(method)(answer), answered)

    async def websocket_call(self, websocket: WebSocket) -> None:
        """A bidi call over a WebSocket: each text (or binary) frame one JSON request, an empty frame
        ends the client's direction; each answer one text frame; the end closes with 1000, an error
        with 4000 + its gRPC number and `CODE: message` as the reason; the client closing cancels."""
        await websocket.accept()
        try:
            method = self.lookup(websocket.path_params)
            if method.shape != "bidi":
                raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{method.full_name} is not bidirectional: POST to this path")
            headers, timeout = self.settings(websocket.headers, websocket.query_params)
        except (RpcError, ValueError) as error:
            await _close(websocket, error if isinstance(error, RpcError) else RpcError(ErrorCode.INVALID_ARGUMENT, str(error)))
            return
        gone = asyncio.Event()  # the client disconnected (seen by whoever read the socket)
        done_reading = asyncio.Event()  # `requests` no longer reads the socket (then `watch` does)
        limit = self.options.max_body

        async def requests() -> AsyncIterator[bytes]:
            number = 0
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        gone.set()
                        raise ClientGone()
                    data = message.get("text")
                    frame = data.encode() if data is not None else message.get("bytes") or b""
                    if not frame:
                        return  # an empty frame: the client is done sending
                    number += 1
                    if len(frame) > limit:
                        raise PayloadTooLarge(limit, f"frame {number}")
                    yield self.encode(method, frame, f"frame {number}")
            finally:
                done_reading.set()

        async def watch() -> None:
            """Returns when the client disconnects: seen by `requests` while it reads, read here once it
            stopped (the client ended its requests, and a quiet call has nobody else reading the
            socket). Frames after the end are ignored."""
            await done_reading.wait()
            while not gone.is_set():
                if (await websocket.receive())["type"] == "websocket.disconnect":
                    gone.set()

        async def pump() -> None:
            decode = self.decoder(method)
            answers = self.client.bidi(method, requests(), headers=headers, timeout=timeout)
            try:
                async for body in answers:
                    await websocket.send_text(dumps(decode(body)).decode())
            finally:
                await _aclose(answers)

        try:
            await first_of(asyncio.ensure_future(pump()), asyncio.ensure_future(watch()))
        except RpcError as error:
            await _close(websocket, error)
            return
        except (ClientGone, WebSocketDisconnect, OSError):
            return
        await _close(websocket, None)


def _whole(value: Any) -> Any:
    return value


def route_path(scope: Scope) -> str:
    """The request's path inside the app (without the prefix it is mounted at)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


async def _next(messages: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await messages.__anext__()
    except StopAsyncIteration:
        return None


async def _close(websocket: WebSocket, error: RpcError | None) -> None:
    if error is None:
        code, reason = 1000, ""
    else:
        code = close_code(error.code)
        reason = f"{error.code}: {error.message}".encode()[:120].decode(errors="ignore")
    try:
        await websocket.close(code, reason)
    except (RuntimeError, OSError, WebSocketDisconnect):
        pass  # already closed by the client


def create_app(nc: Any, catalog: Catalog, *, options: GatewayOptions | None = None, client: Calls | None = None) -> Gateway:
    """The gateway's ASGI app for `catalog` over the NATS connection `nc`, to serve or to mount in an
    application of your own (`app.mount("/rpc", create_app(nc, catalog))`). `client`: calls through
    another `DynamicClient` than one of `nc` (its own default headers or timeout)."""
    calls: Calls = client if client is not None else DynamicClient(nc, catalog)
    return Gateway(catalog, calls, options)
