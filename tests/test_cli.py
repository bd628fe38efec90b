"""The `betterproto-nats` command as a subprocess against services on a real nats-server: ls,
describe, call of every shape (stdin lines, headers, --max-messages, chunked files), stats, errors and
their exit statuses, and schemas from --proto / --descriptor-set for a service that publishes none."""

from __future__ import annotations

import asyncio
import contextlib
import io
import hashlib
import json
import sys
import threading
from pathlib import Path
from typing import AsyncIterator

import pytest
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import current_call
from betterproto_nats.cli.main import main
from betterproto_nats.reflection.catalog import compile_protos
from betterproto_nats.testing import NatsServer
from procs.services import Everything as Chunked
from test_reflection import two_versions
from gen.fixtures.codec.v1 import CodecEchoNatsBase, Everything
from gen.streaming.v1 import PingRequest, PingResponse

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent


class Everything_(Chunked):
    """The demo service with its chunked methods (tests/procs/services.py); Ping answers the `echo`
    header when there is one."""

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=current_call().headers.get("echo", request.payload), count=2**53 + 1)


class Echo(CodecEchoNatsBase):
    async def echo(self, request: Everything) -> Everything:
        return request


async def cli(url: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run the command in this process, in a thread (its own event loop; the services go on in the
    test's): (exit status, stdout, stderr). One at a time (it swaps sys.stdin/stdout/stderr)."""

    def run() -> tuple[int, str, str]:
        with _one_at_a_time:
            return run_alone()

    def run_alone() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin
        sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""))
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    main([*args, "-s", url, "--wait", "0.5"])
                except SystemExit as exit:
                    return int(exit.code or 0), out.getvalue(), err.getvalue()
        finally:
            sys.stdin = saved
        raise AssertionError("main() returned without an exit status")

    return await asyncio.wait_for(asyncio.to_thread(run), 30)


_one_at_a_time = threading.Lock()


async def command(url: str, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """Run `python -m betterproto_nats ...` as a subprocess: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "betterproto_nats", *args, "-s", url, "--wait", "0.5",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def services(server_nc: NATS) -> AsyncIterator[Everything_]:
    """The demo service (reflection on) and CodecEcho publishing no schema, as a Go service would."""
    demo = Everything_()
    servers = [await betterproto_nats.serve(server_nc, demo), await betterproto_nats.serve(server_nc, Echo(), reflection=False)]
    yield demo
    for server in servers:
        await server.stop()


async def test_ls_and_describe(nats_server: NatsServer, services: Everything_) -> None:
    status, out, err = await command(nats_server.url, "ls", "--json")  # the command as users run it
    assert status == 0, err
    listed = {s["name"]: s for s in json.loads(out)}
    demo = listed["StreamDemoService"]
    assert demo["service"] == "streaming.v1.StreamDemoService" and len(demo["ids"]) == 1
    assert {m["name"].rpartition("/")[2]: m["shape"] for m in demo["methods"]} == {
        "Ping": "unary", "CountUp": "server", "Sum": "client", "Chat": "bidi", "ExportSnapshot": "server", "ImportSnapshot": "client",
    }  # fmt: skip
    assert listed["CodecEcho"]["service"] is None and listed["CodecEcho"]["endpoints"][0]["name"] == "echo"  # no schema
    status, out, _ = await cli(nats_server.url, "describe", "StreamDemoService")
    assert status == 0
    assert "rpc Sum(stream streaming.v1.SumRequest) returns (streaming.v1.SumResponse)  // client, api.v1.stream.sum" in out
    assert "message streaming.v1.CountUpResponse {\n  int32 number = 1;\n  string timestamp = 2;\n}" in out
    proto = ["--proto-path", "proto", "--proto", "fixtures/codec/v1/echo.proto"]
    status, out, err = await cli(nats_server.url, "describe", "fixtures.codec.v1.Everything", "--json", *proto)
    assert status == 0, err
    described = json.loads(out)
    messages = {m["name"]: m for m in described["messages"]}
    assert len(messages["fixtures.codec.v1.Everything"]["fields"]) == 10  # every field of every message it uses
    maps = {f["name"]: f["type"] for f in messages["fixtures.codec.v1.Maps"]["fields"]}
    assert maps["levels"] == "map<string, fixtures.codec.v1.Level>"
    assert {f["name"]: f.get("oneof") for f in messages["fixtures.codec.v1.Oneofs"]["fields"]}["at"] == "value"
    assert {e["name"] for e in described["enums"]} >= {"fixtures.codec.v1.Level", "fixtures.common.v1.Color"}


async def test_versions_of_a_service_with_their_own_schemas(nats_server: NatsServer, server_nc: NATS, tmp_path: Path) -> None:
    """Two versions whose proto files share names: `ls` names their schemas, `describe` shows each
    with its own methods and fields, `call` takes the newest (and says so) or `--service-version`."""
    url = nats_server.url
    async with two_versions(server_nc, tmp_path):
        status, out, err = await cli(url, "ls", "Versioned")
        assert status == 0, err
        assert [line.split("(schema")[0] for line in out.splitlines() if not line.startswith(" ")] == ["Versioned 1.0.0  ver.v1.VerService ", "Versioned 2.0.0  ver.v1.VerService "]
        status, out, err = await cli(url, "describe", "VerService")
        assert status == 0, err
        newest, older = out.split("// --- Versioned 1.0.0 ---")
        assert newest.startswith("// --- Versioned 2.0.0 ---") and "rpc Shout" in newest and "int64 times = 2;" in newest
        assert "rpc Shout" not in older and "string note = 2;" in older
        status, out, err = await cli(url, "describe", "ver.v1.PingRequest", "--service-version", "1.0.0", "--json")
        assert [f["name"] for f in json.loads(out)["messages"][0]["fields"]] == ["text", "note"], err
        status, out, err = await cli(url, "call", "VerService/Ping", '{"text": "b", "times": 3}')
        assert (status, json.loads(out)) == (0, {"text": "2.0.0 b times=3"}) and "also running with another schema: 1.0.0" in err
        status, out, err = await cli(url, "call", "VerService/Ping", '{"text": "a", "note": "n"}', "--service-version", "1.0.0")
        assert (status, json.loads(out), err) == (0, {"text": "1.0.0 a note=n"}, "")


async def test_call_every_shape(nats_server: NatsServer, services: Everything_) -> None:
    url = nats_server.url
    (ping, pong, ping_err), (_, count_up, _), (summed, total, _), (_, chat, _) = await asyncio.gather(
        cli(url, "call", "streaming.v1.StreamDemoService/Ping", '{"payload": "hi"}', "-H", "echo: from a header"),
        cli(url, "call", "StreamDemoService/CountUp", "-d", '{"start": 5, "count": 10}', "--max-messages", "3"),
        cli(url, "call", "StreamDemoService.Sum", stdin=b'{"value": "40"}\n\n{"value": 2}\n'),
        cli(url, "call", "StreamDemoService/Chat", stdin=b'{"text": "a"}\n{"text": "b"}\n'),
    )
    assert (ping, json.loads(pong)) == (0, {"payload": "from a header", "count": str(2**53 + 1)}), ping_err  # int64 as a string
    assert [json.loads(line) for line in count_up.splitlines()] == [{"number": 5}, {"number": 6}, {"number": 7}]
    assert (summed, json.loads(total)) == (0, {"total": "42", "count": 2})
    assert [json.loads(line)["text"] for line in chat.splitlines()] == ["echo: a", "echo: b"]


async def test_bidi_sends_stdin_lines_as_they_come(nats_server: NatsServer, services: Everything_) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "betterproto_nats", "call", "StreamDemoService/Chat", "-s", nats_server.url, "--wait", "0.5",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for text in ("one", "two"):  # each answer arrives before the next line is written
            proc.stdin.write(json.dumps({"text": text}).encode() + b"\n")
            await proc.stdin.drain()
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert json.loads(line) == {"user": "server", "text": f"echo: {text}"}
        proc.stdin.close()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_chunked_files(nats_server: NatsServer, services: Everything_, tmp_path: Path) -> None:
    target = tmp_path / "snapshot.bin"
    status, out, err = await cli(nats_server.url, "call", "StreamDemoService/ExportSnapshot", '{"id": "300000"}', "--out", str(target))
    assert status == 0, err
    expected = hashlib.sha256(bytes(i % 251 for i in range(300_000))).hexdigest()
    assert json.loads(out) == {"path": str(target), "size": 300_000, "sha256": expected}
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
    status, out, err = await cli(nats_server.url, "call", "StreamDemoService/ImportSnapshot", "--in", str(target))
    assert (status, json.loads(out)) == (0, {"id": expected, "size": "300000"}), err


async def test_errors_are_one_line_with_an_exit_status_by_code(nats_server: NatsServer, services: Everything_, tmp_path: Path) -> None:
    url = nats_server.url
    status, out, err = await cli(url, "call", "StreamDemoService/Sum", '[{"value": 1}, {"value": -1}]', "--json")
    assert (status, json.loads(out)) == (67, {"error": {"code": "INVALID_ARGUMENT", "message": "negative value"}})
    status, _, err = await cli(url, "call", "StreamDemoService/CountUp", '{"start": -1, "count": 1}')
    assert status == 69 and err.strip().endswith("error: NOT_FOUND: failed after 1"), err  # after its one message
    cases = [
        (["call", "StreamDemoService/Pong"], 69, "no method 'StreamDemoService/Pong'; did you mean"),
        (["call", "StreamDemoService/Ping", '{"payload": '], 67, "malformed JSON"),
        (["call", "StreamDemoService/Ping", '{"payload": {"x": 1}}'], 67, "payload"),
        (["call", "StreamDemoService/Ping", '{"nope": 1}'], 67, "nope"),
        (["describe", "NoSuchThing"], 69, "no service, method or message 'NoSuchThing'"),
        (["call", "StreamDemoService/Ping", "{}", "-H", "Nats-Stream-Seq: 1"], 67, "reserved for the protocol"),
        (["call", "StreamDemoService/ImportSnapshot", "--in", str(tmp_path / "missing")], 69, "No such file"),
    ]
    ran = await asyncio.gather(*(cli(url, *args) for args, _, _ in cases))
    for (args, expected_status, text), (status, _, err) in zip(cases, ran):
        assert status == expected_status and text in err and len(err.strip().splitlines()) == 1, (args, status, err)
    status, _, err = await command("nats://127.0.0.1:9", "ls", "--connect-timeout", "0.5")
    assert status == 78 and "UNAVAILABLE: cannot connect" in err


async def test_a_service_without_reflection_through_local_schemas(nats_server: NatsServer, services: Everything_, tmp_path: Path) -> None:
    """CodecEcho publishes no schema: --proto compiles it, --descriptor-set reads `protoc -o`'s output;
    the proto3 JSON of nested messages, enums, int64, bytes, maps, oneofs and well-known types goes
    through the service (betterproto) and back unchanged."""
    everything = {
        "scalars": {"i64": "-9007199254740993", "u64": "18446744073709551615", "data": "AAEC/w==", "level": "LEVEL_BELOW", "fl": 1.5},
        "repeated": {"level": ["LEVEL_HIGH", "LEVEL_LOW"], "data": ["", "YQ=="]},
        "oneofs": {"at": "2024-02-29T12:00:00.000001Z"},
        "maps": {"levels": {"a": "LEVEL_HIGH"}, "ints": {"-1": "5"}, "times": {"t": "1970-01-01T00:00:01Z"}},
        "wellKnown": {"took": "1.500s", "int64Value": "7", "stringValue": "", "empty": {}},
        "tree": {"name": "root", "children": [{"name": "leaf"}], "byName": {"x": {"name": "y"}}},
        "money": {"currency": "EUR", "units": "12"},
        "color": "COLOR_RED",
    }
    descriptor_set = tmp_path / "echo.binpb"
    descriptor_set.write_bytes(compile_protos([ROOT / "proto"], ["fixtures/codec/v1/echo.proto"]))
    for schema in (["-I", "proto", "--proto", "fixtures/codec/v1/echo.proto"], ["--descriptor-set", str(descriptor_set)]):
        status, out, err = await cli(nats_server.url, "call", "fixtures.codec.v1.CodecEcho/Echo", json.dumps(everything), *schema)
        assert status == 0, err
        assert json.loads(out) == everything
    status, _, err = await cli(nats_server.url, "call", "PlainService/Echo", "{}", "-I", "proto", "--proto", "fixtures/options/v1/options.proto")
    assert status == 78 and "UNAVAILABLE" in err, err  # known from the file, served by nobody
    status, _, err = await cli(nats_server.url, "call", "CodecEcho/Echo", "{}")
    assert status == 69 and "CodecEcho publishes no schema: give its .proto files" in err, err


async def test_stats(nats_server: NatsServer, services: Everything_) -> None:
    assert (await cli(nats_server.url, "call", "StreamDemoService/Ping", "{}"))[0] == 0
    status, out, err = await cli(nats_server.url, "stats", "StreamDemoService", "--json")
    assert status == 0, err
    rows = {r["endpoint"]: r for r in json.loads(out)}
    assert rows["ping"]["requests"] == 1 and rows["ping"]["errors"] == 0 and rows["ping"]["refused"] == 0
    status, out, _ = await cli(nats_server.url, "stats", "--watch", "--count", "2", "--interval", "0.1")
    assert status == 0 and out.count("ENDPOINT") == 2
