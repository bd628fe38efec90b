"""Schema reflection: what a service publishes (`proto.*` endpoint metadata, `$SRV.PROTO`), the
`Catalog` read from it or from local schemas, proto3 JSON on dynamic messages, and `DynamicClient`
calls of every shape through the runtime's client path."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError
from betterproto_nats.reflection import jsonmap
from betterproto_nats.reflection.catalog import Catalog, compile_protos
from betterproto_nats.reflection.dynamic import PASS_THROUGH, DynamicClient
from betterproto_nats.schema import descriptors
from betterproto_nats.schema.spec import Cardinality, MethodSpec, ServiceSpec
from demo_service import Demo
from gen.streaming.v1 import StreamDemoServiceNatsBase

pytestmark = pytest.mark.timeout(30)
SCHEMA = descriptors.schema_bytes(StreamDemoServiceNatsBase._nats_service.schema)


async def lines(*items: dict[str, object]) -> AsyncIterator[bytes]:
    for item in items:
        yield jsonmap.encode(catalog().message("streaming.v1.SumRequest"), item)


def catalog() -> Catalog:
    return Catalog.from_descriptor_set(SCHEMA)


def test_the_embedded_schema_is_the_file_and_its_imports() -> None:
    """Each file after its imports, the well-known types left out (readers have them), no source info."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(SCHEMA).file
    assert [f.name for f in files] == ["natsmicro/options.proto", "streaming/v1/stream_demo.proto"]
    assert not any(f.HasField("source_code_info") for f in files)
    assert list(files[0].dependency) == ["google/protobuf/descriptor.proto", "google/protobuf/duration.proto"]


def test_a_descriptor_set_gives_services_methods_and_subjects() -> None:
    found = catalog()
    service = found.service("StreamDemoService")
    assert (service.full_name, service.nats_name, service.subject_prefix) == (
        "streaming.v1.StreamDemoService", "StreamDemoService", "api.v1.stream",
    )  # fmt: skip
    shapes = {m.name: (m.shape, m.subject, m.chunked) for m in service.methods}
    assert shapes["Ping"] == ("unary", "api.v1.stream.ping", False)
    assert shapes["CountUp"] == ("server", "api.v1.stream.count_up", False)
    assert shapes["Sum"][0] == "client" and shapes["Chat"][0] == "bidi"
    assert shapes["ImportSnapshot"] == ("client", "api.v1.stream.import_snapshot", True)
    upload = found.method("StreamDemoService.ImportSnapshot")
    assert (upload.chunk_field, upload.chunk_size) == ("data", 131072)
    for name in ("streaming.v1.StreamDemoService/Ping", "StreamDemoService/Ping", "StreamDemoService.Ping", "StreamDemoService/ping"):
        assert found.method(name).full_name == "streaming.v1.StreamDemoService/Ping"
    with pytest.raises(RpcError) as missed:
        found.method("StreamDemoService/Pong")
    assert missed.value.code == ErrorCode.NOT_FOUND and "Ping" in missed.value.message


def test_json_follows_the_proto3_mapping() -> None:
    response = catalog().message("streaming.v1.PingResponse")
    data = jsonmap.encode(response, {"payload": "x", "count": "9007199254740993"})
    assert jsonmap.decode(response, data) == {"payload": "x", "count": "9007199254740993"}  # int64 as a string
    assert jsonmap.decode(response, b"", defaults=True) == {"payload": "", "count": "0"}
    with pytest.raises(RpcError) as wrong:
        jsonmap.encode(response, {"count": "many"})
    assert wrong.value.code == ErrorCode.INVALID_ARGUMENT and "count" in wrong.value.message
    with pytest.raises(RpcError) as unknown:
        jsonmap.encode(response, {"nope": 1})
    assert "nope" in unknown.value.message
    with pytest.raises(RpcError):
        jsonmap.loads("{bad")
    with pytest.raises(RpcError):
        jsonmap.decode(response, b"\xff\xff")


async def test_a_service_publishes_its_schema_and_the_catalog_calls_every_shape(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        info = json.loads((await nc.request(f"$SRV.INFO.StreamDemoService.{server.id}", b"", timeout=2)).data)
        ping = next(e for e in info["endpoints"] if e["name"] == "ping")
        assert {k: v for k, v in ping["metadata"].items() if k.startswith("proto.")} == {
            "proto.method": "streaming.v1.StreamDemoService/Ping",
            "proto.shape": "unary",
            "proto.request": "streaming.v1.PingRequest",
            "proto.response": "streaming.v1.PingResponse",
            "proto.schema": descriptors.digest(SCHEMA),
        }
        found = await Catalog.discover(nc, timeout=1)
        assert not found.problems, found.problems
        service = found.service("streaming.v1.StreamDemoService")
        assert service.ids == [server.id] and service.digest == descriptors.digest(SCHEMA)
        client = DynamicClient(nc, found, timeout=5)
        ping_method = found.method("StreamDemoService/Ping")
        answer = await client.unary(ping_method, jsonmap.encode(ping_method.input, {"payload": "hi"}))
        assert jsonmap.decode(ping_method.output, answer) == {"payload": "hi"}
        count_up = found.method("StreamDemoService/CountUp")
        request = jsonmap.encode(count_up.input, {"start": 1, "count": 3})
        numbers = [jsonmap.decode(count_up.output, m)["number"] async for m in client.server_stream(count_up, request)]
        assert numbers == [1, 2, 3]
        total = await client.client_stream("StreamDemoService/Sum", lines({"value": "2"}, {"value": 40}))
        assert jsonmap.decode(found.message("streaming.v1.SumResponse"), total) == {"total": "42", "count": 2}
        chat = found.method("StreamDemoService/Chat")

        async def said() -> AsyncIterator[bytes]:
            for text in ("a", "b"):
                yield jsonmap.encode(chat.input, {"text": text})

        echoes = [jsonmap.decode(chat.output, m)["text"] async for m in client.bidi(chat, said())]
        assert echoes == ["echo: a", "echo: b"]
        with pytest.raises(RpcError) as failed:
            await client.client_stream("StreamDemoService/Sum", lines({"value": -1}))
        assert failed.value.code == ErrorCode.INVALID_ARGUMENT
    finally:
        await server.stop()


async def test_the_schema_subject_answers_only_what_it_should(nc: NATS, server_nc: NATS) -> None:
    """Any request body gets the same bounded answer; a wildcard reply subject gets none; without
    reflection there is no `proto.*` metadata and no schema subject."""
    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        for body in (b"", b"\x00" * 10_000, b"$SRV.>"):
            reply = await nc.request(descriptors.schema_subject("StreamDemoService", server.id), body, timeout=2)
            assert reply.data == SCHEMA and reply.headers[descriptors.SCHEMA_DIGEST_HEADER] == descriptors.digest(SCHEMA)
        answered = asyncio.Event()

        async def evil(msg: object) -> None:
            answered.set()

        sub = await nc.subscribe("evil.*", cb=evil)
        await nc.publish(descriptors.schema_subject("StreamDemoService"), b"", reply="evil.*")
        await nc.flush()
        assert (await nc.request(f"$SRV.PING.StreamDemoService.{server.id}", b"", timeout=2)).data  # the service read it
        assert not answered.is_set()
        await sub.unsubscribe()
    finally:
        await server.stop()
    quiet = await betterproto_nats.serve(server_nc, Demo(), reflection=False)
    try:
        info = json.loads((await nc.request(f"$SRV.INFO.StreamDemoService.{quiet.id}", b"", timeout=2)).data)
        assert not any(k.startswith("proto.") for e in info["endpoints"] for k in (e.get("metadata") or {}))
        with pytest.raises(Exception):
            await nc.request(descriptors.schema_subject("StreamDemoService", quiet.id), b"", timeout=0.5)
    finally:
        await quiet.stop()


async def test_discovery_leaves_out_what_hostile_responders_send(nc: NATS, server_nc: NATS) -> None:
    """Garbage INFO replies, a wildcard endpoint subject, a schema that is not what its digest says,
    and one that does not parse are noted in `problems`; the real service is listed all the same."""
    garbage = b"\x00\x01 not a descriptor set"
    infos = [
        b"[" * 100_000,
        b'{"name": "a.b", "id": "x"}',
        json.dumps({"name": "wild", "id": "w1", "endpoints": [{"name": "e", "subject": "api.*"}]}).encode(),
        json.dumps({"name": "liar", "id": "l1", "endpoints": [{"name": "e", "subject": "liar.e",
                    "metadata": {"proto.method": "x.Y/Z", "proto.schema": descriptors.digest(b"liar")}}]}).encode(),
        json.dumps({"name": "junk", "id": "j1", "endpoints": [{"name": "e", "subject": "junk.e",
                    "metadata": {"proto.method": "x.Y/Z", "proto.schema": descriptors.digest(garbage)}}]}).encode(),
    ]  # fmt: skip

    async def info(msg: Msg) -> None:
        for body in infos:
            await server_nc.publish(msg.reply, body)

    async def schema(msg: Msg) -> None:
        await server_nc.publish(msg.reply, b"something else" if ".liar." in msg.subject else garbage)

    subs = [await server_nc.subscribe("$SRV.INFO", cb=info), await server_nc.subscribe("$SRV.PROTO.>", cb=schema)]
    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        found = await Catalog.discover(nc, timeout=1)
        assert found.service("StreamDemoService").methods  # the real one
        problems = "\n".join(found.problems)
        assert problems.count("an INFO reply was left out") == 3, problems
        assert "liar l1: its schema does not match the digest it publishes" in problems
        assert "junk j1: schema does not load" in problems
        assert [s.nats_name for s in found.services if not s.methods] == ["junk", "liar"]  # listed, no methods
    finally:
        await server.stop()
        for sub in subs:
            await sub.unsubscribe()


async def test_options_and_json_bodies(nc: NATS, server_nc: NATS) -> None:
    """Names, subjects and timeouts as the options set them; a `json: true` service is called with
    protobuf binary and answered in it (the client converts); skipped services and methods are not listed."""
    from gen.fixtures.options.v1 import InventoryNatsBase
    from test_options import Inventory, JsonEcho

    schema = descriptors.schema_bytes(InventoryNatsBase._nats_service.schema)
    local = Catalog.from_descriptor_set(schema)
    assert {s.full_name for s in local.services} == {
        "fixtures.options.v1.Inventory", "fixtures.options.v1.JSONEchoAPI", "fixtures.options.v1.PlainService",
    }  # fmt: skip
    inventory = local.service("inventory-svc")
    assert (inventory.nats_name, inventory.version, inventory.subject_prefix) == ("inventory-svc", "2.3.4", "shop.inventory")
    assert "Hidden" not in {m.name for m in inventory.methods}
    assert local.method("Inventory/Echo").timeout == 0.5 and local.method("Inventory/Windowed").timeout == 30
    assert local.method("Inventory/Windowed").options["stream"] == {"max_inflight": 32}
    assert local.method("JSONEchoAPI/GetHTTPStatus").subject == "json_echo_api.get_http_status"
    servers = [await betterproto_nats.serve(server_nc, JsonEcho()), await betterproto_nats.serve(server_nc, Inventory())]
    try:
        found = await Catalog.discover(nc, timeout=1)
        method = found.method("JSONEchoAPI/GetHTTPStatus")
        assert method.json and found.service("JSONEchoAPI").ids == [servers[0].id]
        request = jsonmap.encode(method.input, {"text": "hi", "number": 1, "tags": {"a": "b"}})
        answer = await DynamicClient(nc, found).unary(method, request, timeout=5)
        assert jsonmap.decode(method.output, answer) == {"text": "HI", "number": 2, "tags": {"a": "b"}}
    finally:
        for server in servers:
            await server.stop()


# --- Two versions of one service, whose proto files have the same names ----------------------------

# The file `ver/v1/ver.proto` changed between the versions: field 2 of PingRequest changed name and
# type, and a method was added. Served under one NATS name, each version on its own subjects.
VERSIONS = {
    "1.0.0": ("string note = 2;", ""),
    "2.0.0": ("int64 times = 2;", "rpc Shout(PingRequest) returns (PingResponse);"),
}
VERSIONED_PROTO = """syntax = "proto3";
package ver.v1;
import "natsmicro/options.proto";
message PingRequest {{ string text = 1; {field} }}
message PingResponse {{ string text = 1; }}
service VerService {{
  option (natsmicro.service) = {{name: "Versioned", version: "{version}", subject_prefix: "ver.{tag}"}};
  rpc Ping(PingRequest) returns (PingResponse);
  {method}
}}
"""


def versioned_schema(root: Path, version: str) -> bytes:
    """The FileDescriptorSet of one version of `ver/v1/ver.proto`."""
    field, method = VERSIONS[version]
    proto = root / version / "ver" / "v1" / "ver.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(VERSIONED_PROTO.format(field=field, method=method, version=version, tag="v" + version[0]))
    return compile_protos([root / version], [proto])


class Versioned:
    """One version of ver.v1.VerService served without generated code: bodies pass through, and
    each request is read with the version's own message type, so a request encoded with another
    version's schema shows in the answer."""

    def __init__(self, schema: bytes, version: str) -> None:
        own = Catalog.from_descriptor_set(schema)
        self.request = jsonmap.message_class(own.message("ver.v1.PingRequest"))
        self.response = jsonmap.message_class(own.message("ver.v1.PingResponse"))
        self.version = version
        methods = [m.name for m in own.service("VerService").methods]
        self._nats_service = ServiceSpec(
            proto_name="ver.v1.VerService",
            name="Versioned",
            subject_prefix=f"ver.v{version[0]}",
            version=version,
            methods=tuple(
                MethodSpec(name=name, py_name=name.lower(), endpoint=name.lower(), cardinality=Cardinality.UNARY, request=bytes, response=bytes)  # type: ignore[arg-type]
                for name in methods
            ),
            schema=descriptors.schema_literal(schema),
            body_codec=PASS_THROUGH,
        )

    async def ping(self, body: bytes) -> bytes:
        request: Any = self.request.FromString(body)
        extra = f"note={request.note}" if self.version == "1.0.0" else f"times={request.times}"
        return bytes(self.response(text=f"{self.version} {request.text} {extra}").SerializeToString())

    async def shout(self, body: bytes) -> bytes:
        request: Any = self.request.FromString(body)
        return bytes(self.response(text=(request.text.upper() + "!") * request.times).SerializeToString())


@contextlib.asynccontextmanager
async def two_versions(server_nc: NATS, root: Path) -> AsyncIterator[dict[str, bytes]]:
    """Versions 1.0.0 and 2.0.0 of ver.v1.VerService serving; their schemas by version."""
    schemas = {version: versioned_schema(root, version) for version in VERSIONS}
    servers = [await betterproto_nats.serve(server_nc, Versioned(schema, version)) for version, schema in schemas.items()]
    try:
        yield schemas
    finally:
        for server in servers:
            await server.stop()


async def test_each_version_of_a_service_has_its_own_schema(nc: NATS, server_nc: NATS, tmp_path: Path) -> None:
    """Two versions whose schemas share file names: each is described with its own methods and
    fields, and a call to each is encoded with its own schema; by name, the newest is taken."""
    async with two_versions(server_nc, tmp_path) as schemas:
        found = await Catalog.discover(nc, timeout=1)
        assert not found.problems, found.problems
        listed = [(s.version, s.digest, s.subject_prefix, [m.name for m in s.methods]) for s in found.versions("VerService")]
        assert listed == [
            ("2.0.0", descriptors.digest(schemas["2.0.0"]), "ver.v2", ["Ping", "Shout"]),
            ("1.0.0", descriptors.digest(schemas["1.0.0"]), "ver.v1", ["Ping"]),
        ]
        old, new = found.method("VerService/Ping", "1.0.0"), found.method("VerService/Ping")
        assert (old.version, new.version) == ("1.0.0", "2.0.0") and old.pool is not new.pool
        assert [(f.name, f.type) for f in old.input.fields] == [("text", 9), ("note", 9)]  # TYPE_STRING
        assert [(f.name, f.type) for f in new.input.fields] == [("text", 9), ("times", 3)]  # TYPE_INT64
        assert [f.name for f in found.message("ver.v1.PingRequest").fields] == ["text", "times"]
        assert [f.name for f in found.message("ver.v1.PingRequest", "1.0.0").fields] == ["text", "note"]
        assert len(found.messages("ver.v1.PingRequest")) == 2

        client = DynamicClient(nc, found, timeout=5)
        answer = await client.unary(old, jsonmap.encode(old.input, {"text": "a", "note": "n"}))
        assert jsonmap.decode(old.output, answer) == {"text": "1.0.0 a note=n"}
        answer = await client.unary(new, jsonmap.encode(new.input, {"text": "b", "times": "3"}))
        assert jsonmap.decode(new.output, answer) == {"text": "2.0.0 b times=3"}
        shout = found.method("Versioned/Shout")
        answer = await client.unary("VerService/Shout", jsonmap.encode(shout.input, {"text": "c", "times": 2}))
        assert jsonmap.decode(shout.output, answer) == {"text": "C!C!"}
        with pytest.raises(RpcError) as unknown:
            jsonmap.encode(old.input, {"times": 1})  # version 1.0.0 has no such field
        assert unknown.value.code == ErrorCode.INVALID_ARGUMENT
        with pytest.raises(RpcError) as missing:
            found.method("VerService/Shout", "1.0.0")
        assert missing.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(RpcError) as no_such:
            found.method("VerService/Ping", "3.0.0")
        assert "2.0.0, 1.0.0" in no_such.value.message
        assert found.method("VerService/Ping", descriptors.digest(schemas["1.0.0"])[:15]) == old  # by its schema


def test_local_sets_that_redefine_a_file_get_their_own_pool(tmp_path: Path) -> None:
    """--descriptor-set files of two versions: the second defines `ver/v1/ver.proto` differently,
    so it is loaded in a pool of its own; a set that repeats a file as it was adds nothing."""
    first, second = (versioned_schema(tmp_path, version) for version in VERSIONS)
    local = Catalog.from_descriptor_set(first)
    local.add_descriptor_set(first)
    assert len(local.pools) == 1 and len(local.services) == 1
    local.add_descriptor_set(second)
    assert len(local.pools) == 2
    assert [(s.version, [m.name for m in s.methods]) for s in local.versions("VerService")] == [("2.0.0", ["Ping", "Shout"]), ("1.0.0", ["Ping"])]
    assert [f.name for f in local.message("ver.v1.PingRequest", "1.0.0").fields] == ["text", "note"]
