"""Every `(natsmicro.*)` option has an effect that a test can see, against a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import typing

import pytest
from conftest import settle
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError, ServeOptions
from betterproto_nats.serving.options import ServeKeywords
from gen.fixtures.options import v1 as fx
from gen.streaming.v1 import StreamDemoServiceNatsBase


class Inventory(fx.InventoryNatsBase):
    def __init__(self, label: str = "") -> None:
        self.label = label
        self.calls = 0

    async def echo(self, request: fx.EchoMessage) -> fx.EchoMessage:
        self.calls += 1
        return fx.EchoMessage(text=request.text + self.label, number=request.number)

    async def solo(self, request: fx.EchoMessage) -> fx.EchoMessage:
        self.calls += 1
        return fx.EchoMessage(text=self.label)

    async def slow(self, request: fx.Delay) -> fx.EchoMessage:
        await asyncio.sleep(request.seconds)
        return fx.EchoMessage(text="done")

    async def slower(self, request: fx.Delay) -> fx.EchoMessage:
        await asyncio.sleep(request.seconds)
        return fx.EchoMessage(text="done")


class JsonEcho(fx.JsonEchoApiNatsBase):
    async def get_http_status(self, request: fx.EchoMessage) -> fx.EchoMessage:
        return fx.EchoMessage(text=request.text.upper(), number=request.number + 1, tags=request.tags)


async def srv(nc: NATS, verb: str, suffix: str = "") -> dict[str, object]:
    msg = await nc.request(f"$SRV.{verb}{suffix}", b"", timeout=5)
    return json.loads(msg.data)


async def test_service_options_in_discovery(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Inventory())
    try:
        ping = await srv(nc, "PING", ".inventory-svc")
        assert ping == {
            "type": "io.nats.micro.v1.ping_response",
            "id": server.id,
            "name": "inventory-svc",
            "version": "2.3.4",
            "metadata": {"team": "storage", "tier": "gold"},
        }
        info = await srv(nc, "INFO", f".inventory-svc.{server.id}")
        assert info["description"] == "Options fixture"
        endpoints = {e["name"]: e for e in info["endpoints"]}  # type: ignore[union-attr]
        reflected = {name: {k: e["metadata"].pop(k) for k in list(e["metadata"]) if k.startswith("proto.")} for name, e in endpoints.items()}
        assert reflected["echo"]["proto.method"] == "fixtures.options.v1.Inventory/Echo"  # schema reflection (test_reflection.py)
        for e in endpoints.values():
            e["metadata"] = e["metadata"] or None  # the proto's own metadata
        assert set(endpoints) == {"echo", "slow", "slower", "slow_stream", "solo", "windowed"}  # Hidden is skipped
        assert endpoints["echo"] == {
            "name": "echo",
            "subject": "shop.inventory.echo",
            "queue_group": "q",
            "metadata": {"kind": "echo"},
        }
        assert endpoints["solo"]["queue_group"] == ""
        assert endpoints["slow"]["metadata"] is None
        await fx.InventoryNatsClient(nc).echo(fx.EchoMessage(text="a"))
        stats = await srv(nc, "STATS", ".inventory-svc")
        by_name = {e["name"]: e for e in stats["endpoints"]}  # type: ignore[union-attr]
        assert by_name["echo"]["num_requests"] == 1
        assert by_name["echo"]["num_errors"] == 0
        assert stats["type"] == "io.nats.micro.v1.stats_response"
    finally:
        await server.stop()


async def test_default_name_version_metadata_and_prefix(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, JsonEcho())
    try:
        info = await srv(nc, "INFO", ".JSONEchoAPI")
        assert (info["name"], info["version"], info["metadata"]) == ("JSONEchoAPI", "1.0.0", {})
        subjects = sorted(e["subject"] for e in info["endpoints"])  # type: ignore[union-attr]
        assert subjects == ["json_echo_api.get_http_status", "json_echo_api.stream"]
        assert all(e["queue_group"] == "" for e in info["endpoints"])  # type: ignore[union-attr]
    finally:
        await server.stop()


async def test_serve_overrides_prefix_name_and_version(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Inventory(), subject_prefix="eu.inv", name="inv-eu", version="9.0.0")
    try:
        ping = await srv(nc, "PING", ".inv-eu")
        assert ping["version"] == "9.0.0"
        reply = await fx.InventoryNatsClient(nc, subject_prefix="eu.inv").echo(fx.EchoMessage(text="x"))
        assert reply.text == "x"
    finally:
        await server.stop()


async def test_serve_takes_one_options_object_and_keywords_override_it(nc: NATS, server_nc: NATS) -> None:
    shared = ServeOptions(subject_prefix="eu.inv", name="inv-eu", version="1.0.0", grace_period=0)
    server = await betterproto_nats.serve(server_nc, Inventory(), options=shared, version="9.0.0")
    try:
        assert (server.name, server.version, server.options.grace_period) == ("inv-eu", "9.0.0", 0)
        assert (await srv(nc, "PING", ".inv-eu"))["version"] == "9.0.0"
        reply = await fx.InventoryNatsClient(nc, subject_prefix="eu.inv").echo(fx.EchoMessage(text="x"))
        assert reply.text == "x"
    finally:
        await server.stop()
    assert shared.version == "1.0.0"  # frozen: what overrides it makes a new value


async def test_serve_options_refuse_unknown_keywords_and_bad_values(server_nc: NATS) -> None:
    with pytest.raises(TypeError, match="serve\\(\\) got an unexpected keyword argument 'max_streams'"):
        await betterproto_nats.serve(server_nc, Inventory(), max_streams=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="stream_idle_timeout must be positive"):
        ServeOptions(stream_idle_timeout=0)
    options = ServeOptions(inbox_prefixes=["_MY."], interceptors=[])
    assert options.inbox_prefixes == ("_MY.",) and options.interceptors == ()


def test_serve_keywords_are_the_options_fields() -> None:
    """`serve()`'s keyword arguments (`ServeKeywords`, for type checkers) and `ServeOptions` name the
    same options with the same types: neither can gain one the other lacks."""
    fields = typing.get_type_hints(ServeOptions)
    assert typing.get_type_hints(ServeKeywords) == fields
    assert list(ServeKeywords.__annotations__) == [f.name for f in dataclasses.fields(ServeOptions)]


async def test_queue_group_spreads_calls_and_disabled_group_reaches_all(nats_server, nc: NATS) -> None:  # type: ignore[no-untyped-def]
    from conftest import connect

    instances = [Inventory("-a"), Inventory("-b")]
    conns = [await connect(nats_server.url) for _ in instances]
    servers = [await betterproto_nats.serve(c, i) for c, i in zip(conns, instances)]
    try:
        client = fx.InventoryNatsClient(nc)
        for _ in range(40):
            await client.echo(fx.EchoMessage(text="x"))
        assert sum(i.calls for i in instances) == 40  # each call served exactly once (queue group "q")
        assert all(i.calls > 0 for i in instances)  # and spread over both instances
        before = [i.calls for i in instances]
        # Without a queue group every instance gets the request; the first answer wins.
        await client.solo(fx.EchoMessage())
        await settle(lambda: all(i.calls == b + 1 for i, b in zip(instances, before)))
    finally:
        for server in servers:
            await server.stop()
        for conn in conns:
            await conn.close()


async def test_json_option_switches_bodies_to_proto3_json(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, JsonEcho())
    try:
        pretty = b'{\n  "text": "hi",\n  "number": 41,\n  "tags": {"a": "b"},\n  "unknownField": 1\n}'
        raw = await nc.request("json_echo_api.get_http_status", pretty, timeout=5)
        assert json.loads(raw.data) == {"text": "HI", "number": 42, "tags": {"a": "b"}}
        assert b" " not in raw.data  # compact
        reply = await fx.JsonEchoApiNatsClient(nc).get_http_status(fx.EchoMessage(text="x", number=1))
        assert (reply.text, reply.number) == ("X", 2)
        bad = await nc.request("json_echo_api.get_http_status", b"{not json", timeout=5)
        assert bad.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"
    finally:
        await server.stop()


async def test_service_timeout_and_endpoint_override(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Inventory())
    try:
        client = fx.InventoryNatsClient(nc)
        with pytest.raises(RpcError) as caught:
            await client.slow(fx.Delay(seconds=3))  # the service timeout is 0.5 s
        assert caught.value.code == ErrorCode.DEADLINE_EXCEEDED
        assert (await client.slower(fx.Delay(seconds=0.7))).text == "done"  # 2 s for this endpoint
        # The server enforces the timeout too: a raw caller without a deadline gets DEADLINE_EXCEEDED.
        raw = await nc.request("shop.inventory.slow", bytes(fx.Delay(seconds=3)), timeout=5)
        assert raw.headers["Nats-Service-Error-Code"] == "DEADLINE_EXCEEDED"
    finally:
        await server.stop()


async def test_pending_limits_apply_to_the_endpoint_subscription(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, Inventory())
    try:
        subs = {sub.subject: sub for sub in server_nc._subs.values()}
        echo = subs["shop.inventory.echo"]
        assert echo._pending_msgs_limit == 7
        assert echo._pending_bytes_limit == 0  # -1 in the proto: no limit
        slow = subs["shop.inventory.slow"]
        assert slow._pending_bytes_limit > 0  # library default
    finally:
        await server.stop()


def test_error_codes_are_generated_as_constants() -> None:
    assert fx.InventoryErrorCode.OUT_OF_STOCK == "OUT_OF_STOCK"
    assert fx.InventoryErrorCode.RESERVED_ITEM == "RESERVED_ITEM"
    assert fx.InventoryErrorCode.NOT_FOUND == ErrorCode.NOT_FOUND  # the built-in ones too
    assert fx.InventoryNatsBase._nats_service.error_codes == ["OUT_OF_STOCK", "RESERVED_ITEM"]


async def test_custom_error_code_travels(nc: NATS, server_nc: NATS) -> None:
    class OutOfStock(Inventory):
        async def echo(self, request: fx.EchoMessage) -> fx.EchoMessage:
            raise RpcError(fx.InventoryErrorCode.OUT_OF_STOCK, "none left")

    server = await betterproto_nats.serve(server_nc, OutOfStock())
    try:
        with pytest.raises(RpcError) as caught:
            await fx.InventoryNatsClient(nc).echo(fx.EchoMessage())
        assert (caught.value.code, caught.value.message) == ("OUT_OF_STOCK", "none left")
    finally:
        await server.stop()


def test_skip_produces_nothing() -> None:
    assert not hasattr(fx, "SkippedNatsBase") and not hasattr(fx, "SkippedNatsClient")
    assert not hasattr(fx.InventoryNatsClient, "hidden")
    assert "Hidden" not in {m.name for m in fx.InventoryNatsBase._nats_service.methods}


def test_stream_option_sets_window() -> None:
    assert fx.InventoryNatsBase._nats_service.method("windowed").max_inflight == 32


async def test_serve_refuses_a_plain_object(nc: NATS, server_nc: NATS) -> None:
    with pytest.raises(TypeError):
        await betterproto_nats.serve(server_nc, object())
    assert StreamDemoServiceNatsBase._nats_service.name == "StreamDemoService"


async def test_serve_refuses_a_name_with_a_trailing_newline(server_nc: NATS) -> None:
    """Names are matched whole (a `$` anchor would pass "inv\\n", which then breaks `$SRV` subjects)."""
    with pytest.raises(ValueError, match="may contain only"):
        await betterproto_nats.serve(server_nc, Inventory(), name="inv\n")
