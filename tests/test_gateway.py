"""The HTTP gateway (issue 30) against a real nats-server and the demo service: every shape over
HTTP (JSON, server-sent events, NDJSON, WebSocket), errors, headers, deadlines, cancellation when the
HTTP client goes away, back-pressure from a slow reader, the OpenAPI document, the command."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import socket
import subprocess
import sys
from typing import Any, AsyncIterator

import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")
uvicorn = pytest.importorskip("uvicorn")

from conftest import ROOT, connect, settle  # noqa: E402
from demo_service import Demo  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats.gateway import GatewayOptions, create_app  # noqa: E402
from betterproto_nats.gateway.app import Framing, StreamedAnswer  # noqa: E402
from betterproto_nats.gateway.bodies import PayloadTooLarge, RequestBody, unless_gone  # noqa: E402
from betterproto_nats.gateway.mapping import call_headers, close_code, http_status, metadata_headers, parse_timeout  # noqa: E402
from betterproto_nats.reflection.catalog import Catalog  # noqa: E402
from betterproto_nats.reflection.dynamic import upload_chunk_size  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402
from test_reflection import two_versions  # noqa: E402
from gen.streaming.v1 import ChatMessage, CountUpRequest, CountUpResponse, ExportSnapshotRequest, ImportSnapshotResponse, SnapshotChunk, SumRequest, SumResponse  # noqa: E402

DEMO = "streaming.v1.StreamDemoService"


class Service(Demo):
    """The tests' demo service, with a download that counts the chunks it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks_sent = 0
        self.downloads_cancelled = 0
        self.chats_cancelled = self.chats_holding = 0
        self.sums_started = self.sums_cancelled = 0
        self.go_on = asyncio.Event()

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        """start 1000: one message, then the rest once `go_on` is set (a stream seen mid-way)."""
        if request.start != 1000:
            async for answer in super().count_up(request):
                yield answer
            return
        yield CountUpResponse(number=1000)
        await self.go_on.wait()
        yield CountUpResponse(number=1001)

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        self.sums_started += 1
        try:
            return await super().sum(requests)
        except (asyncio.CancelledError, betterproto_nats.RpcError) as error:
            if isinstance(error, asyncio.CancelledError) or error.code == "CANCELLED":
                self.sums_cancelled += 1
            raise

    async def import_snapshot(self, requests: Any) -> ImportSnapshotResponse:
        size = 0
        async for chunk in requests:
            size += len(chunk.data)
        return ImportSnapshotResponse(id="up", size=size)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        """A message "hold": once the client's requests ended, the call stays open, quiet, until
        cancelled."""
        texts: list[str] = []

        async def noted() -> AsyncIterator[ChatMessage]:
            async for message in requests:
                texts.append(message.text)
                yield message

        try:
            async for answer in super().chat(noted()):
                yield answer
            if "hold" in texts:
                self.chats_holding += 1
                await asyncio.Event().wait()
        except (asyncio.CancelledError, GeneratorExit):
            self.chats_cancelled += 1
            raise

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk]:
        chunk = SnapshotChunk(data=b"x" * 65536)
        try:
            for _ in range(int(request.id or "16")):
                self.chunks_sent += 1
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):  # cancelled in an await, or closed at a yield
            self.downloads_cancelled += 1
            raise


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_proto_files([ROOT / "proto"], ["streaming/v1/stream_demo.proto"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """`app` served by uvicorn in this loop on a free loopback port; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="off", log_level="error"))
    task = asyncio.ensure_future(server.serve())
    await settle(lambda: server.started or task.done(), timeout=10)
    assert server.started
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def service(server_nc: NATS) -> AsyncIterator[Service]:
    impl = Service()
    served = await betterproto_nats.serve(server_nc, impl)
    yield impl
    await served.stop()


@pytest.fixture
async def base(service: Service, nc: NATS, catalog: Catalog) -> AsyncIterator[str]:
    # answers without default-valued fields, for short expectations (the default shows them: the
    # google.api.http, mounting and command tests)
    options = GatewayOptions(pass_headers=("Authorization", "X-Tenant"), max_body=1 << 20, emit_defaults=False)
    async with running(create_app(nc, catalog, options=options)) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[Any]:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        yield client


def sse_events(text: str) -> list[tuple[str, Any]]:
    """(event, data) of a server-sent events body."""
    out = []
    for block in text.strip().split("\n\n"):
        if block.startswith(":"):
            continue  # a comment: the keep-alive
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        out.append((fields.get("event", "message"), json.loads(fields["data"])))
    return out


# --- unit: the mapping tables -----------------------------------------------------------------


def test_statuses_deadlines_and_headers() -> None:
    assert [http_status(c) for c in ("INVALID_ARGUMENT", "NOT_FOUND", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "MY_OWN")] == [400, 404, 504, 429, 503, 500]
    assert close_code("PERMISSION_DENIED") == 4007 and close_code("MY_OWN") == 4002
    assert [parse_timeout(t) for t in ("500m", "10S", "1M", "2.5")] == [0.5, 10.0, 60.0, 2.5]
    for bad in ("0", "-1", "1e9", "soon", "100000000S", "5d"):
        with pytest.raises(betterproto_nats.RpcError):
            parse_timeout(bad)
    hostile = {"X-Ok": "v", "Nats-Stream-Seq": "1", "X-Bad": "a\r\nSet-Cookie: x", "X-Long": "v" * 2000, "bad name": "v"}
    assert metadata_headers(hostile) == [(b"grpc-metadata-x-ok", b"v")]
    assert len(metadata_headers({f"X-{i}": "v" for i in range(100)})) == 32
    allow = {"authorization": "Authorization"}
    assert call_headers([("authorization", "Bearer a"), ("cookie", "c"), ("AUTHORIZATION", "b")], allow) == {"Authorization": "Bearer a, b"}
    for bad in ({"pass_headers": ("Nats-Stream-Inbox",)}, {"unary_timeout": 0}, {"sse_keepalive": -1}, {"max_body": 0}):
        with pytest.raises(ValueError):
            GatewayOptions(**bad)  # type: ignore[arg-type]


def body_of(*chunks: bytes, limit: int) -> RequestBody:
    """A request body that arrives in these chunks (ASGI `http.request` messages)."""
    messages = [{"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)]

    async def receive() -> Any:
        return messages.pop(0)

    return RequestBody(receive, limit)


async def read_lines(body: RequestBody) -> list[tuple[int, bytes]]:
    return [line async for line in body.lines()]


async def test_ndjson_lines_are_bounded_however_the_body_is_cut() -> None:
    """A line beyond the limit is refused whether it came within one chunk with others or split
    over several; lines up to the limit pass, cut anywhere."""
    assert await read_lines(body_of(b"12345\n1234", b"5\n\n", b"123", b"45", limit=5)) == [(1, b"12345"), (2, b"12345"), (4, b"12345")]
    for chunks in ([b"1\n123456\n2\n"], [b"1\n1234", b"56\n2\n"], [b"1\n12", b"34", b"56", b"\n"], [b"1\n123456"]):
        with pytest.raises(PayloadTooLarge, match="line 2 beyond the gateway's limit of 5 bytes"):
            await read_lines(body_of(*chunks, limit=5))


async def test_a_disconnect_seen_as_the_answer_came_does_not_cancel_what_follows() -> None:
    """The client disconnects in the same turn of the loop as the call answers, the answer wins: the
    request's task is not cancelled later, while it sends the answer (uvicorn would log it)."""
    answered, went = asyncio.get_running_loop().create_future(), asyncio.Event()

    async def gone() -> None:
        await went.wait()

    async def request() -> int:
        answer: int = await unless_gone(answered, gone())
        await asyncio.sleep(0)  # sending the answer
        await asyncio.sleep(0)
        return answer

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    went.set()  # the watch ends first in the next turn, the request's task goes on after it
    answered.set_result(7)
    assert await asyncio.wait_for(task, 5) == 7


# --- every shape --------------------------------------------------------------------------------


async def test_unary_and_its_errors(http: Any) -> None:
    answer = await http.post(f"/{DEMO}/Ping", json={"payload": "hi"})
    assert answer.status_code == 200 and answer.json() == {"payload": "hi"}
    bad = await http.post(f"/{DEMO}/Ping", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["code"] == "INVALID_ARGUMENT"
    unknown_field = await http.post(f"/{DEMO}/Ping", json={"nope": 1})
    assert unknown_field.status_code == 400 and "nope" in unknown_field.json()["message"]
    missing = await http.post(f"/{DEMO}/Nope", json={})
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"
    too_big = await http.post(f"/{DEMO}/Ping", json={"payload": "x" * (2 << 20)})
    assert too_big.status_code == 413


async def test_server_stream_as_sse_and_ndjson(http: Any, service: Service) -> None:
    sse = await http.post(f"/{DEMO}/CountUp", json={"start": 1, "count": 3})
    assert sse.status_code == 200 and sse.headers["content-type"].startswith("text/event-stream")
    assert sse.headers["grpc-metadata-x-stream"] == "count_up"  # the service's response headers
    assert sse_events(sse.text) == [("message", {"number": 1}), ("message", {"number": 2}), ("message", {"number": 3}), ("end", {})]
    nd = await http.post(f"/{DEMO}/CountUp", json={"start": 5, "count": 2}, headers={"Accept": "application/x-ndjson"})
    assert [json.loads(line) for line in nd.text.splitlines()] == [{"result": {"number": 5}}, {"result": {"number": 6}}]
    # an error after two messages ends the stream with an error frame; before any message it is the status
    failed = await http.post(f"/{DEMO}/CountUp", json={"start": -1, "count": 2})
    assert sse_events(failed.text)[-1] == ("error", {"code": "NOT_FOUND", "message": "failed after 2"})
    at_once = await http.post(f"/{DEMO}/CountUp", json={"start": -1, "count": 0})
    assert at_once.status_code == 404 and at_once.json() == {"code": "NOT_FOUND", "message": "failed after 0"}


async def test_an_idle_sse_stream_gets_keep_alive_comments(service: Service, nc: NATS, catalog: Catalog) -> None:
    """No message for `sse_keepalive` seconds: a comment line goes out (proxies keep the stream open),
    then the stream goes on as before."""
    async with running(create_app(nc, catalog, options=GatewayOptions(sse_keepalive=0.05))) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        async with client.stream("POST", f"/{DEMO}/CountUp", json={"start": 1000}) as answer:
            received = b""
            async for data in answer.aiter_bytes():
                received += data
                if b": keep-alive\n\n" in received and not service.go_on.is_set():
                    service.go_on.set()  # the service holds its second message until a keep-alive came
            events = sse_events(received.decode())
    assert [data for kind, data in events] == [{"number": 1000, "timestamp": ""}, {"number": 1001, "timestamp": ""}, {}]


async def test_no_keep_alive_after_the_last_frame() -> None:
    """The SSE keep-alive due while the stream's last frame is being written (a slow client: the
    server's write waits) does not follow it: nothing is sent after the end of a response (the
    connection's next response may have begun)."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body" and not message["more_body"]:
            await asyncio.sleep(0.2)  # the last write waits for the client, past the keep-alive's time
        sent.append(message)

    async def no_more() -> AsyncIterator[bytes]:
        return
        yield b""

    async def never() -> Any:
        await asyncio.Event().wait()

    framing = Framing("text/event-stream", lambda body: b"data: " + body + b"\n\n", None, b"event: end\n\n", b": keep-alive\n\n")
    answer = StreamedAnswer(no_more(), b"1", RequestBody(never, 10), framing, keepalive=0.02)
    await asyncio.wait_for(answer({"type": "http"}, never, send), 5)
    bodies = [(m["body"], m["more_body"]) for m in sent[1:]]
    assert bodies[0] == (b"data: 1\n\n", True) and bodies[-1] == (b"event: end\n\n", False), bodies
    assert all(body == b": keep-alive\n\n" for body, _ in bodies[1:-1])


async def test_get_with_query_parameters_for_eventsource(http: Any) -> None:
    """Unary and server-streaming methods answer GET with the request in query parameters (what a
    browser's EventSource can open)."""
    events = sse_events((await http.get(f"/{DEMO}/CountUp", params={"start": "2", "count": "2"})).text)
    assert events == [("message", {"number": 2}), ("message", {"number": 3}), ("end", {})]
    assert (await http.get(f"/{DEMO}/Ping", params={"payload": "q"})).json() == {"payload": "q"}
    assert (await http.get(f"/{DEMO}/Sum")).status_code == 404  # client streams: POST only


async def test_client_stream_from_ndjson_as_it_arrives(http: Any) -> None:
    first_line_sent = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"value": 10}\n{"val'
        first_line_sent.set()
        yield b'ue": 20}\n\n{"value": "30"}'  # a blank line; int64 as a string, no newline at the end

    answer = await http.post(f"/{DEMO}/Sum", content=body(), headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 200 and answer.json() == {"total": "60", "count": 3}
    failed = await http.post(f"/{DEMO}/Sum", content=b'{"value": 1}\n{"value": -1}\n')
    assert failed.status_code == 400 and failed.json() == {"code": "INVALID_ARGUMENT", "message": "negative value"}
    bad_line = await http.post(f"/{DEMO}/Sum", content=b'{"value": 1}\n{oops}\n')
    assert bad_line.status_code == 400 and "line 2" in bad_line.json()["message"]


async def test_an_ndjson_line_beyond_the_limit_cancels_the_call(http: Any, service: Service) -> None:
    """A line over `max_body` (1 MiB here) after a good one, with more after it in the same chunk:
    413 naming the line, the service's call cancelled (no answer from the lines before it), and the
    gateway serves the next request."""

    async def body() -> AsyncIterator[bytes]:
        yield b'{"value": 1}\n'
        await settle(lambda: service.sums_started == 1)  # the call is open at the service
        yield b'{"value": 2, "pad": "' + b"x" * (1 << 20) + b'"}\n{"value": 3}\n'

    answer = await http.post(f"/{DEMO}/Sum", content=body(), headers={"Content-Type": "application/x-ndjson"})
    assert answer.status_code == 413
    assert answer.json() == {"code": "RESOURCE_EXHAUSTED", "message": f"line 2 beyond the gateway's limit of {1 << 20} bytes"}
    await settle(lambda: service.sums_cancelled == 1)
    assert (await http.post(f"/{DEMO}/Sum", content=b'{"value": 4}\n')).json() == {"total": "4", "count": 1}


async def test_bidi_chat_over_a_websocket(base: str, service: Service) -> None:
    url = base.replace("http", "ws") + f"/{DEMO}/Chat"
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer t"}) as ws:
        for text in ("hello", "how are you"):
            await ws.send(json.dumps({"user": "me", "text": text}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"user": "server", "text": f"echo: {text}"}
        await ws.send("")  # our direction ends: the call ends cleanly
        with pytest.raises(websockets.ConnectionClosedOK):
            await asyncio.wait_for(ws.recv(), 5)
    assert service.headers[-1].get("Authorization") == "Bearer t"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"text": "fail"}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4007
        assert closed.value.rcvd.reason == "PERMISSION_DENIED: not allowed"


async def test_hostile_requests_get_clear_errors(http: Any, base: str) -> None:
    """Deep nesting, bytes that are not UTF-8, an NDJSON line without end beyond the limit, a
    WebSocket frame beyond it: each a clear error, and the gateway goes on serving."""
    deep = await http.post(f"/{DEMO}/Ping", content=b"[" * 100_000)
    assert deep.status_code == 400 and deep.json()["code"] == "INVALID_ARGUMENT"
    assert (await http.post(f"/{DEMO}/Ping", content=b"\xff\xfe")).status_code == 400
    endless = await http.post(f"/{DEMO}/Sum", content=b'{"value": 1}\n' + b" " * (2 << 20))
    assert endless.status_code == 413
    async with websockets.connect(base.replace("http", "ws") + f"/{DEMO}/Chat", max_size=None) as ws:
        await ws.send(json.dumps({"text": "x" * (2 << 20)}))
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008, closed.value.rcvd
    assert (await http.post(f"/{DEMO}/Ping", json={"payload": "still"})).json() == {"payload": "still"}


async def test_chunked_methods_as_raw_bytes(http: Any) -> None:
    """A chunked download as application/octet-stream (the bytes alone, for curl -o), a chunked
    upload from an application/octet-stream body (chunked at the method's size)."""
    download = await http.post(f"/{DEMO}/ExportSnapshot", json={"id": "3"}, headers={"Accept": "application/octet-stream"})
    assert download.status_code == 200 and download.headers["content-type"] == "application/octet-stream"
    assert download.content == b"x" * (3 * 65536)
    blob = bytes(range(256)) * 2000  # 512,000 bytes: 4 chunks of 131,072 (the proto's size) at most
    upload = await http.post(f"/{DEMO}/ImportSnapshot", content=blob, headers={"Content-Type": "application/octet-stream"})
    assert upload.status_code == 200 and upload.json() == {"id": "up", "size": str(len(blob))}


def test_upload_chunks_fit_the_connections_max_payload(catalog: Catalog) -> None:
    """The CLI's and the gateway's upload chunks: the method's size (131,072 here), or the one asked
    for, within the server's max_payload less room for framing and headers; base64 for JSON."""
    upload = catalog.method(f"{DEMO}/ImportSnapshot")
    assert upload_chunk_size(upload, 1024 * 1024) == 131072
    assert upload_chunk_size(upload, 0) == 131072  # not known: NATS's default, 1 MiB
    assert upload_chunk_size(upload, 32768) == 32768 - 1024
    assert upload_chunk_size(upload, 1024 * 1024, requested=1000) == 1000
    assert upload_chunk_size(dataclasses.replace(upload, json=True), 32768) == (32768 - 1024) * 3 // 4


async def test_a_raw_upload_through_a_server_with_a_small_max_payload(catalog: Catalog, tmp_path: Any) -> None:
    """A nats-server allowing 32 KiB messages: the gateway cuts a raw upload into chunks that fit
    (the method's 131,072 bytes would not)."""
    config = tmp_path / "small.conf"
    config.write_text("max_payload: 32768\n")
    with NatsServer(extra_args=["-c", str(config)]) as small:
        service_nc, gateway_nc = await connect(small.url), await connect(small.url)
        try:
            served = await betterproto_nats.serve(service_nc, Service())
            async with running(create_app(gateway_nc, catalog)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
                blob = bytes(range(256)) * 800  # 204,800 bytes: 7 chunks of 31,744
                upload = await client.post(f"/{DEMO}/ImportSnapshot", content=blob, headers={"Content-Type": "application/octet-stream"})
                assert upload.status_code == 200, upload.text
                assert upload.json() == {"id": "up", "size": str(len(blob))}
            await served.stop()
        finally:
            await gateway_nc.close()
            await service_nc.close()


# --- headers, deadlines, cancellation, back-pressure ------------------------------------------------


async def test_allowed_headers_are_passed_on_and_others_not(http: Any, service: Service) -> None:
    await http.post(f"/{DEMO}/CountUp", json={"count": 1}, headers={"Authorization": "Bearer x", "X-Tenant": "t1", "Cookie": "secret"})
    seen = service.headers[-1]
    assert seen.get("Authorization") == "Bearer x" and seen.get("X-Tenant") == "t1"
    assert not any(name.lower() == "cookie" for name in seen)


async def test_deadline_from_header_or_query(http: Any, service: Service) -> None:
    service.barrier, service.barrier_size = asyncio.Event(), 1_000  # CountUp waits until cancelled
    for query, headers in (("?timeout=0.3", {}), ("", {"Grpc-Timeout": "300m"})):
        answer = await http.post(f"/{DEMO}/CountUp{query}", json={"count": 1}, headers=headers)
        assert answer.status_code == 504 and answer.json()["code"] == "DEADLINE_EXCEEDED"
    bad = await http.post(f"/{DEMO}/Ping", json={}, headers={"X-Timeout": "soon"})
    assert bad.status_code == 400


async def test_a_client_that_goes_away_cancels_its_call(base: str, service: Service) -> None:
    """Server stream: the HTTP client reads one event and disconnects; the service's handler is
    cancelled (its stream does not run to its end)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("POST", f"/{DEMO}/ExportSnapshot", json={"id": "100000"}) as answer:
            async for _ in answer.aiter_bytes():
                break
    await settle(lambda: service.downloads_cancelled == 1, timeout=5)
    assert service.chunks_sent < 100_000


async def test_a_client_that_goes_away_before_the_answer_cancels_its_call(http: Any, service: Service) -> None:
    """The call has not answered yet (CountUp waits before its first message) when the HTTP client
    gives up and closes the connection: the handler is cancelled."""
    service.barrier, service.barrier_size = asyncio.Event(), 1_000
    with pytest.raises(httpx.ReadTimeout):
        await http.post(f"/{DEMO}/CountUp", json={"count": 1}, timeout=httpx.Timeout(10, read=0.5))
    await settle(lambda: service.cancelled == 1, timeout=5)


async def test_a_client_that_goes_away_mid_upload_cancels_its_call(base: str, service: Service) -> None:
    """Client stream: the HTTP client sends one NDJSON line, then goes away before the body ends."""
    line_sent = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b'{"value": 1}\n'
        line_sent.set()
        await asyncio.Event().wait()  # never ends: the client is cancelled meanwhile
        yield b""

    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        upload = asyncio.ensure_future(client.post(f"/{DEMO}/Sum", content=body()))
        await asyncio.wait_for(line_sent.wait(), 5)
        await settle(lambda: service.sums_started == 1)
        upload.cancel()
        await asyncio.gather(upload, return_exceptions=True)
    await settle(lambda: service.sums_cancelled == 1, timeout=5)


async def test_a_websocket_client_that_goes_away_cancels_its_call(base: str, service: Service) -> None:
    """Bidi: the WebSocket closes mid-call; the handler is cancelled and the gateway's connection
    keeps no subscription of the call (the `nc` fixture checks)."""
    async with websockets.connect(base.replace("http", "ws") + f"/{DEMO}/Chat") as ws:
        await ws.send(json.dumps({"text": "one"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["text"] == "echo: one"
    await settle(lambda: service.chats_cancelled == 1, timeout=5)


async def test_a_websocket_client_that_goes_away_after_its_end_cancels_its_call(base: str, service: Service) -> None:
    """Bidi: the client ends its requests (an empty frame), the service keeps the call open without
    a word, then the client disconnects: the handler is cancelled (nothing else reads the socket
    after the client's end, the gateway watches it still)."""
    async with websockets.connect(base.replace("http", "ws") + f"/{DEMO}/Chat") as ws:
        await ws.send(json.dumps({"text": "hold"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["text"] == "echo: hold"
        await ws.send("")
        await settle(lambda: service.chats_holding == 1)  # the service saw the end of the requests
    await settle(lambda: service.chats_cancelled == 1, timeout=5)


async def test_a_slow_reader_slows_the_service(base: str, service: Service) -> None:
    """A reader that stops reading: the gateway takes no more from the NATS stream than the HTTP
    connection accepts, and the service stops at its flow window (not at 1 GiB)."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        async with client.stream("POST", f"/{DEMO}/ExportSnapshot", json={"id": "16384"}) as answer:
            async for _ in answer.aiter_bytes():
                break
            await settle(lambda: service.chunks_sent > 0)
            before = -1
            for _ in range(100):  # until the service stops sending (bounded: 100 x 50 ms)
                await asyncio.sleep(0.05)
                if service.chunks_sent == before:
                    break
                before = service.chunks_sent
            stalled_at = service.chunks_sent
            assert stalled_at < 1_000, stalled_at  # 64 KiB chunks: socket buffers + the flow window
    await settle(lambda: service.downloads_cancelled == 1, timeout=5)


# --- google.api.http routes ---------------------------------------------------------------------


async def test_google_api_http_routes(service: Service, nc: NATS) -> None:
    """The demo service described by a proto with google.api.http annotations: path variables, query
    parameters, body "*", response_body, a custom verb suffix, a server stream on GET (EventSource)."""
    annotated = Catalog.from_proto_files([ROOT / "tests" / "protos" / "gateway", ROOT / "proto"], ["httpdemo/v1/stream_demo_http.proto"])
    async with running(create_app(nc, annotated)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.get("/v1/ping/hello%20there")).json() == {"payload": "hello there", "count": "0"}
        assert (await client.post("/v1/ping", json={"payload": "b"})).json() == {"payload": "b", "count": "0"}
        assert (await client.put("/v1/echo/texts/t1:shout")).json() == "texts/t1"  # response_body: the field alone
        events = sse_events((await client.get("/v1/count/3", params={"count": "2"})).text)
        assert events == [("message", {"number": 3, "timestamp": ""}), ("message", {"number": 4, "timestamp": ""}), ("end", {})]
        wrong = await client.get("/v1/count/x", params={"nope": "1"})
        assert wrong.status_code == 400 and "nope" in wrong.json()["message"]
        assert (await client.get("/v1/nowhere")).status_code == 404
        assert (await client.post(f"/{DEMO}/Ping", json={"payload": "p"})).json() == {"payload": "p", "count": "0"}  # the default route stays
        document = (await client.get("/openapi.json")).json()
        from openapi_spec_validator import validate

        validate(document)
        assert {"/v1/ping/{payload}", "/v1/ping", "/v1/echo/{payload}:shout", "/v1/count/{start}"} <= set(document["paths"])


async def test_a_json_service_gets_canonical_json(server_nc: NATS, nc: NATS) -> None:
    """A `(natsmicro.service).json` service is sent the request in the canonical proto3 JSON form,
    not the client's text passed through: forms the mapping allows but the service's decoder may not
    read (an int in exponent form here; base64url bytes, which betterproto2 misreads) arrive as meant."""
    from gen.fixtures.options.v1 import InventoryNatsBase
    from test_options import JsonEcho

    from betterproto_nats.schema import descriptors

    catalog = Catalog.from_descriptor_set(descriptors.schema_bytes(InventoryNatsBase._nats_service.schema))
    served = await betterproto_nats.serve(server_nc, JsonEcho())
    try:
        async with running(create_app(nc, catalog)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            answer = await client.post("/fixtures.options.v1.JSONEchoAPI/GetHTTPStatus", json={"text": "hi", "number": "1e2"})
            assert answer.json() == {"text": "HI", "number": 101, "tags": {}}
    finally:
        await served.stop()


async def test_mounted_in_an_application(service: Service, nc: NATS, catalog: Catalog) -> None:
    """The app mounted under a prefix of another Starlette application: routes, the page's base and
    the OpenAPI server follow the prefix."""
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/rpc", app=create_app(nc, catalog))])
    async with running(outer) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        assert (await client.post(f"/rpc/{DEMO}/Ping", json={"payload": "m"})).json() == {"payload": "m", "count": "0"}
        assert (await client.get("/rpc/openapi.json")).json()["servers"] == [{"url": "/rpc"}]
        assert 'const BASE = "/rpc";' in (await client.get("/rpc/")).text
        async with websockets.connect(url.replace("http", "ws") + f"/rpc/{DEMO}/Chat") as ws:
            await ws.send(json.dumps({"text": "m"}))
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["text"] == "echo: m"
            await ws.send("")


async def test_each_version_of_a_service_on_its_own_path(nc: NATS, server_nc: NATS, tmp_path: Any) -> None:
    """Two versions whose proto files share names: the plain path is the newest's, `pkg.Service@version/
    Method` each version's, each body read and written in its own schema; OpenAPI has both versions' messages."""
    from openapi_spec_validator import validate

    async with two_versions(server_nc, tmp_path):
        found = await Catalog.discover(nc, timeout=1)
        async with running(create_app(nc, found)) as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.post("/ver.v1.VerService/Ping", json={"text": "b", "times": 3})).json() == {"text": "2.0.0 b times=3"}
            assert (await client.post("/ver.v1.VerService@1.0.0/Ping", json={"text": "a", "note": "n"})).json() == {"text": "1.0.0 a note=n"}
            wrong = await client.post("/ver.v1.VerService@1.0.0/Ping", json={"times": 3})
            assert wrong.status_code == 400 and "times" in wrong.json()["message"]
            assert (await client.get("/ver.v1.VerService@2.0.0/Shout", params={"text": "c", "times": "2"})).json() == {"text": "C!C!"}
            assert (await client.post("/ver.v1.VerService@1.0.0/Shout", json={})).status_code == 404
            document = (await client.get("/openapi.json")).json()
            validate(document)
            schemas = document["components"]["schemas"]
            assert list(schemas["ver.v1.PingRequest"]["properties"]) == ["text", "times"]
            assert list(schemas["ver.v1.PingRequest-1.0.0"]["properties"]) == ["text", "note"]
            body = document["paths"]["/ver.v1.VerService@1.0.0/Ping"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert body == {"$ref": "#/components/schemas/ver.v1.PingRequest-1.0.0"}


# --- OpenAPI and the command ------------------------------------------------------------------------


async def test_openapi_document_validates(http: Any) -> None:
    from openapi_spec_validator import validate

    document = (await http.get("/openapi.json")).json()
    validate(document)
    shapes = {path: next(iter(item.values()))["x-rpc-shape"] for path, item in document["paths"].items()}
    assert shapes[f"/{DEMO}/Ping"] == "unary" and shapes[f"/{DEMO}/CountUp"] == "server"
    assert shapes[f"/{DEMO}/Sum"] == "client" and shapes[f"/{DEMO}/Chat"] == "bidi"
    assert "get" in document["paths"][f"/{DEMO}/Chat"]
    assert set(document["paths"][f"/{DEMO}/CountUp"]["post"]["responses"]["200"]["content"]) == {"text/event-stream", "application/x-ndjson"}
    page = await http.get("/")
    assert page.status_code == 200 and "openapi.json" in page.text


async def test_the_command_discovers_and_serves(nats_server: Any, service: Service) -> None:
    """`betterproto-nats gateway -s URL` as a process in front of the running demo service (found by
    discovery: $SRV INFO and its schema), port 0, then a unary call and a stream."""
    args = ["gateway", "-s", nats_server.url, "--port", "0", "--wait", "0.5"]
    proc = subprocess.Popen([sys.executable, "-m", "betterproto_nats", *args], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)).decode()
        assert line.startswith("gateway on http://127.0.0.1:"), line
        url = line.split()[2]
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.post(f"/{DEMO}/Ping", json={"payload": "p"})).json() == {"payload": "p", "count": "0"}
            nd = await client.post(f"/{DEMO}/CountUp", json={"count": 2}, headers={"Accept": "application/x-ndjson"})
            assert len(nd.text.splitlines()) == 2
    finally:
        proc.terminate()
        proc.wait(10)
