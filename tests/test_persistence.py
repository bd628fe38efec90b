"""JetStream persistence (`(natsmicro.kv_store)`, `(natsmicro.object_store)`) against a real nats-server
with JetStream: write modes, failure policies, TTLs, key templates, JSON bodies, concurrent writers,
buckets missing/present/misconfigured, JetStream off or in a domain, and the Go plugin's key layout."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from conftest import connect, no_subscriptions_left, settle
from nats.aio.client import Client as NATS
from nats.js import api

import betterproto_nats
from betterproto_nats import ErrorCode, JetStreamUnavailable, RpcError
from betterproto_nats.features.keys import free_text_stops, key_problem, render_key
from betterproto_nats.features.persistence import BlobCopy, Persister
from betterproto_nats.features.stores import ObjectBucket
from betterproto_nats.testing import NatsServer, serve_in_memory
from gen.fixtures.persist.v1 import (
    ExportChunk,
    ExportRequest,
    JsonProfilesNatsBase,
    JsonProfilesNatsClient,
    Profile,
    ProfilesNatsBase,
    ProfilesNatsClient,
    ProfilesNatsMethods,
    ProfileView,
    Tier,
)

pytestmark = pytest.mark.timeout(20)


class Profiles(ProfilesNatsBase):
    def __init__(self, label: str = "") -> None:
        self.label = label
        self.calls = 0

    async def save(self, request: Profile) -> ProfileView:
        self.calls += 1
        return ProfileView(id=request.id, name=request.name, version=request.version, served_by=self.label)

    save_checked = register = layout = session = peek = snapshot = save

    async def export(self, request: ExportRequest) -> AsyncIterator[ExportChunk | bytes]:
        self.calls += 1
        for i in range(request.size):
            yield bytes([i % 251]) * 50_000  # split into 64 KiB chunks on the way


class JsonProfiles(JsonProfilesNatsBase):
    async def save(self, request: Profile) -> ProfileView:
        return ProfileView(id=request.id, name=request.name.upper())


@pytest.fixture
def js_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, with JetStream storing under tmp_path."""
    with NatsServer(extra_args=["-js", "-sd", str(tmp_path / "js")]) as server:
        yield server


async def checked_connection(server: NatsServer) -> AsyncIterator[NATS]:
    conn = await connect(server.url)
    yield conn
    await no_subscriptions_left(conn)  # watches, history reads and stopped services hold nothing
    await conn.close()


@pytest.fixture
async def jnc(js_server: NatsServer) -> AsyncIterator[NATS]:
    """The client's connection to the JetStream server."""
    async for conn in checked_connection(js_server):
        yield conn


@pytest.fixture
async def jsnc(js_server: NatsServer) -> AsyncIterator[NATS]:
    """The service's connection to the JetStream server."""
    async for conn in checked_connection(js_server):
        yield conn


@pytest.fixture
async def served(jsnc: NATS) -> AsyncIterator[Profiles]:
    impl = Profiles("svc")
    server = await betterproto_nats.serve(jsnc, impl)
    yield impl
    await server.stop()


async def raw(nc: NATS, bucket: str, key: str) -> api.RawStreamMsg:
    return await nc.jetstream().get_msg(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")


# --- write modes and policies ---------------------------------------------------------------------


async def test_best_effort_last_write_wins_answers_then_stores(jnc: NATS, jsnc: NATS) -> None:
    server = await betterproto_nats.serve(jsnc, Profiles("svc"))
    client = ProfilesNatsClient(jnc)
    for name in ("first", "second", "third"):
        assert (await client.save(Profile(id="p1", name=name))).name == name
    await server.stop()  # waits for the background writes
    stored = await client.get_save_cached(Profile(id="p1"))
    assert stored == ProfileView(id="p1", name="third", served_by="svc")  # in call order: the last answer
    assert (await raw(jnc, "profiles", "profile.p1")).data == bytes(stored)  # the same body as the answer
    assert await client.get_save_cached(Profile(id="never")) is None
    assert await client.get_peek_cached(Profile(id="p1")) == stored  # client_only: same bucket and key


async def test_watch_sees_the_current_value_then_each_change(jnc: NATS, served: Profiles) -> None:
    client = ProfilesNatsClient(jnc)
    await client.save_checked(Profile(id="w", name="one"))
    async with client.watch_save_checked_cached(Profile(id="w")) as updates:
        entries = aiter(updates)
        first = await anext(entries)
        assert (first.operation, first.value) == ("PUT", ProfileView(id="w", name="one", served_by="svc"))
        await client.save_checked(Profile(id="w", name="two"))
        second = await anext(entries)
        assert second.value is not None and second.value.name == "two" and second.revision > first.revision
        await client.purge_save_checked_cached(Profile(id="w"))
        assert (await anext(entries)).operation == "PURGE"
    assert await client.get_save_checked_cached(Profile(id="w")) is None
    assert [e.operation for e in await client.get_save_checked_history(Profile(id="w"))] == ["PURGE"]


async def test_required_compare_and_set_keeps_history_and_bucket_options(jnc: NATS, served: Profiles) -> None:
    client = ProfilesNatsClient(jnc)
    for version in range(1, 8):
        await client.save_checked(Profile(id="h", version=version))
    # Required: the value is stored before the answer, so it is there at once.
    history = await client.get_save_checked_history(Profile(id="h"))
    assert [e.value.version for e in history if e.value] == [3, 4, 5, 6, 7]  # max_history: 5
    info = await jnc.jetstream().stream_info("KV_checked")
    config = info.config
    assert (config.description, config.max_msgs_per_subject, config.compression) == ("checked profiles", 5, "s2")
    assert config.metadata is not None and config.metadata["owner"] == "fixtures"
    assert config.allow_direct and config.deny_delete and config.allow_rollup_hdrs and not config.allow_msg_ttl


async def test_concurrent_compare_and_set_writers_never_lose_an_update_silently(jnc: NATS, jsnc: NATS, js_server: NatsServer) -> None:
    other = await connect(js_server.url)
    servers = [await betterproto_nats.serve(jsnc, Profiles("a")), await betterproto_nats.serve(other, Profiles("b"))]
    client = ProfilesNatsClient(jnc)
    try:
        await client.save_checked(Profile(id="cas", version=0))  # the key exists: the rest update it
        results = await asyncio.gather(
            *(client.save_checked(Profile(id="cas", version=v)) for v in range(1, 41)), return_exceptions=True
        )
    finally:
        for server in servers:
            await server.stop()
        await other.close()
    won = [r.version for r in results if isinstance(r, ProfileView)]
    lost = [r for r in results if not isinstance(r, ProfileView)]
    assert won and all(isinstance(e, RpcError) and e.code == ErrorCode.INTERNAL for e in lost)
    assert all("compare-and-set" in e.message for e in lost if isinstance(e, RpcError)), lost
    # Every answered call is a revision of the key, and nothing else is: 1 + the winners.
    latest = await raw(jnc, "checked", "profile.cas")
    assert latest.seq == 1 + len(won)
    stored = await client.get_save_checked_cached(Profile(id="cas"))
    assert stored is not None and stored.version in won


async def test_create_only_fails_the_second_call_and_keeps_the_first_value(jnc: NATS, served: Profiles) -> None:
    client = ProfilesNatsClient(jnc)
    await client.register(Profile(id="r1", name="first"))
    with pytest.raises(RpcError) as again:
        await client.register(Profile(id="r1", name="second"))
    assert again.value.code == ErrorCode.INTERNAL and "already exists (create-only)" in again.value.message
    stored = await client.get_register_cached(Profile(id="r1"))
    assert stored is not None and stored.name == "first"
    await client.purge_register_cached(Profile(id="r1"))  # over a purge marker, create works again
    assert (await client.register(Profile(id="r1", name="third"))).name == "third"


async def test_required_write_failure_fails_the_call_in_error_headers(jnc: NATS, served: Profiles) -> None:
    js = jnc.jetstream()
    # A stream on the bucket's subjects that is not a KV bucket: the write cannot go there.
    await js.add_stream(name="KV_registered", subjects=["$KV.registered.>"], max_msgs_per_subject=-1)
    msg = await jnc.request("persist.profiles.register", bytes(Profile(id="x")), timeout=5)
    assert msg.data == b""
    assert msg.headers is not None and msg.headers["Nats-Service-Error-Code"] == "INTERNAL"
    assert "not a KV bucket" in msg.headers["Nats-Service-Error"]
    assert served.calls == 1  # the handler ran; its answer could not be kept, so the call failed


async def test_best_effort_failure_answers_logs_and_counts(jnc: NATS, jsnc: NATS, caplog: pytest.LogCaptureFixture) -> None:
    """The caller got OK, so a failed background write must show elsewhere: a (rate-limited) warning of
    the `betterproto_nats` logger and the method's `persist_failed` in `$SRV` STATS."""
    server = await betterproto_nats.serve(jsnc, Profiles())
    await jnc.jetstream().add_stream(name="KV_profiles", subjects=["$KV.profiles.>"], max_msgs_per_subject=-1)
    client = ProfilesNatsClient(jnc)
    try:
        with caplog.at_level(logging.WARNING, logger="betterproto_nats"):
            for name in ("still answered", "again"):
                assert (await client.save(Profile(id="b", name=name))).name == name
            # The writes run after the answers: wait (bounded) for their log records.
            await settle(lambda: sum("not a KV bucket" in r.getMessage() for r in caplog.records) == 2)
        failures = [r for r in caplog.records if "not a KV bucket" in r.getMessage()]
        assert all(r.name.startswith("betterproto_nats") and r.levelno == logging.WARNING for r in failures)
        assert "best-effort write failed after the call was answered" in failures[0].getMessage()
        assert "Profiles/Save" in failures[0].getMessage() and "'profile.b'" in failures[0].getMessage()
        stats = json.loads((await jnc.request(f"$SRV.STATS.{server.name}.{server.id}", b"", timeout=5)).data)
        data = {e["name"]: e["data"] for e in stats["endpoints"]}
        assert (data["save"]["persist_failed"], data["save"]["persist_dropped"]) == (2, 0)
        assert data["snapshot"]["persist_failed"] == 0 and data["save_checked"]["persist_failed"] == 0
    finally:
        await server.stop()


async def test_best_effort_writes_are_bounded_and_drop_beyond(jnc: NATS, jsnc: NATS, caplog: pytest.LogCaptureFixture) -> None:
    server = await betterproto_nats.serve(jsnc, Profiles(), max_pending_writes=2)
    client = ProfilesNatsClient(jnc)
    with caplog.at_level(logging.WARNING, logger="betterproto_nats.persistence"):
        answers = await asyncio.gather(*(client.save(Profile(id=f"k{i}")) for i in range(60)))
    assert len(answers) == 60  # every call answered
    persister = server.persistence.persister  # type: ignore[union-attr]
    assert len(persister.tasks) <= 2 and persister.dropped > 0
    assert persister.drops == {"fixtures.persist.v1.Profiles/Save": persister.dropped}  # STATS' persist_dropped
    assert any("dropped" in r.getMessage() for r in caplog.records)
    await server.stop()
    assert persister.tasks == set()  # stop() waited for the writes in flight


def test_a_blob_copy_left_behind_is_counted_as_dropped() -> None:
    """A download that outruns its copy to the object store goes on; the copy is abandoned and counted."""
    persister = Persister()

    async def never_opened() -> ObjectBucket:
        raise AssertionError("not reached")

    copy = BlobCopy(never_opened, "export.x", "blob", limit=10, left_behind=lambda why: persister.drop("m", "blob", why))
    copy.feed(b"x" * 8)
    copy.feed(b"x" * 8)
    assert copy.outcome is False and persister.drops == {"m": 1} and persister.dropped == 1
    copy.feed(b"x")  # after the end: ignored, not counted again
    assert persister.dropped == 1


# --- TTLs -----------------------------------------------------------------------------------------


async def test_key_ttl_expires_the_key_and_markers_announce_it(jnc: NATS, served: Profiles) -> None:
    client = ProfilesNatsClient(jnc)
    js = jnc.jetstream()
    async with asyncio.timeout(8):
        await client.session(Profile(id="s1", name="live"))
        entry = await raw(jnc, "sessions", "session.s1")
        assert entry.headers is not None and entry.headers["Nats-TTL"] == "1"
        stream = (await js.stream_info("KV_sessions")).config
        assert stream.allow_msg_ttl and stream.subject_delete_marker_ttl == 1.0
        async with client.watch_session_cached(Profile(id="s1")) as updates:
            entries = aiter(updates)
            assert (await anext(entries)).operation == "PUT"
            expired = await anext(entries)  # the server's marker, about a second after the write
        assert (expired.operation, expired.value) == ("PURGE", None)
        assert await client.get_session_cached(Profile(id="s1")) is None
        # compare-and-set (key_ttl's default mode) creates the key again over the marker
        await client.session(Profile(id="s1", name="again"))
        await client.purge_session_cached(Profile(id="s1"))
        marker = await raw(jnc, "sessions", "session.s1")
        assert marker.headers is not None and marker.headers["KV-Operation"] == "PURGE" and marker.headers["Nats-TTL"] == "2"


async def test_ttl_options_on_a_bucket_without_message_ttls_are_a_clear_error(jnc: NATS, served: Profiles) -> None:
    await jnc.jetstream().add_stream(
        name="KV_sessions", subjects=["$KV.sessions.>"], max_msgs_per_subject=1, allow_rollup_hdrs=True, deny_delete=True
    )
    with pytest.raises(RpcError) as failed:
        await ProfilesNatsClient(jnc).session(Profile(id="s"))
    assert failed.value.code == ErrorCode.INTERNAL and "does not allow per-message TTLs" in failed.value.message


# --- buckets --------------------------------------------------------------------------------------


async def test_present_bucket_is_used_as_it_is_and_differences_are_logged(
    jnc: NATS, jsnc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    kv = await jnc.jetstream().create_key_value(bucket="checked", history=2)
    await kv.put("profile.pre", bytes(ProfileView(id="pre", name="written elsewhere")))
    server = await betterproto_nats.serve(jsnc, Profiles())
    client = ProfilesNatsClient(jnc)
    with caplog.at_level(logging.WARNING, logger="betterproto_nats.persistence"):
        await client.save_checked(Profile(id="pre", name="ours"))  # compare-and-set over a foreign value
    await server.stop()
    assert any("exists with other settings" in r.getMessage() and "max_msgs_per_subject 2" in r.getMessage() for r in caplog.records)
    assert (await jnc.jetstream().stream_info("KV_checked")).config.max_msgs_per_subject == 2  # never changed
    assert [e.value.name for e in await client.get_save_checked_history(Profile(id="pre")) if e.value] == [
        "written elsewhere",
        "ours",
    ]


async def test_missing_bucket_reads_as_nothing_stored(jnc: NATS) -> None:
    client = ProfilesNatsClient(jnc)
    request = Profile(id="none")
    assert await client.get_save_cached(request) is None
    assert await client.get_save_history(request) == []
    await client.purge_save_cached(request)  # nothing to purge
    assert await client.get_snapshot_stored(request) is None
    assert await client.delete_snapshot_stored(request) is False
    with pytest.raises(RpcError) as missing:
        await client.watch_save_cached(request)
    assert missing.value.code == ErrorCode.NOT_FOUND
    assert (await jnc.jetstream().account_info()).streams == 0  # reading creates no bucket


# --- keys -----------------------------------------------------------------------------------------


async def test_key_layout_follows_the_go_plugin_template_rules(jnc: NATS, served: Profiles) -> None:
    """Go renders `{tier}.{id}.v{version}.{active}.{class}` with fmt.Sprintf("%v", msg.GetX()): enum
    value names (the number when unknown), decimal integers, true/false, strings as they are."""
    client = ProfilesNatsClient(jnc)
    cases = {
        "TIER_GOLD.u1.v42.true.vip": Profile(id="u1", tier=Tier.GOLD, version=42, active=True, class_="vip"),
        f"7.u3.v{2**62}.false.a.b": Profile(id="u3", tier=7, version=2**62, class_="a.b"),  # type: ignore[arg-type]
        "TIER_SILVER.u4.v-7.false.-": Profile(id="u4", tier=Tier.SILVER, version=-7, class_="-"),
    }
    for key, request in cases.items():
        await client.layout(request)
        assert (await raw(jnc, "layout", key)).data == bytes(ProfileView(id=request.id, version=request.version, served_by="svc"))
    subjects = (await jnc.jetstream().stream_info("KV_layout", subjects_filter=">")).state.subjects
    assert set(subjects or {}) == {f"$KV.layout.{key}" for key in cases}
    with pytest.raises(RpcError) as trailing_dot:  # "TIER_UNSPECIFIED.u2.v0.false.": Go writes a broken key
        await client.layout(Profile(id="u2"))
    assert trailing_dot.value.code == ErrorCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "unsafe",
    ["has space", "star*", "gt>", "", "dot.", ".dot", "a..b", "naïve", "tab\t", "new\nline", "x" * 2000, "$KV", "#"],
)
async def test_unsafe_key_values_are_invalid_argument_and_write_nothing(jnc: NATS, served: Profiles, unsafe: str) -> None:
    client = ProfilesNatsClient(jnc)
    with pytest.raises(RpcError) as bad:
        await client.save_checked(Profile(id=unsafe))
    assert bad.value.code == ErrorCode.INVALID_ARGUMENT and "storage key" in bad.value.message
    assert len(bad.value.message) < 400
    assert served.calls == 0  # refused before the handler ran
    with pytest.raises(RpcError) as reading:  # the client helpers refuse the same requests
        await client.get_save_checked_cached(Profile(id=unsafe))
    assert reading.value.code == ErrorCode.INVALID_ARGUMENT
    assert (await jnc.jetstream().account_info()).streams == 0


async def test_a_trailing_newline_is_not_a_key_and_nothing_is_stored(jnc: NATS, jsnc: NATS) -> None:
    """A `$` anchor matches before a final newline: `id="abc\\n"` once passed the key check, an object
    `snap.abc\\n` was stored and the KV write failed after an OK answer. Keys are matched whole now."""
    server = await betterproto_nats.serve(jsnc, impl := Profiles())
    client = ProfilesNatsClient(jnc)
    try:
        for call in (client.save, client.save_checked, client.snapshot):
            with pytest.raises(RpcError) as bad:
                await call(Profile(id="abc\n"))
            assert bad.value.code == ErrorCode.INVALID_ARGUMENT and "storage key" in bad.value.message
    finally:
        await server.stop()  # waits for background writes, had any been started
    assert impl.calls == 0
    assert (await jnc.jetstream().account_info()).streams == 0  # no bucket, no object
    assert server.persistence is not None and server.persistence.persister.failed == 0


async def test_free_text_before_another_field_cannot_reach_another_requests_key(jnc: NATS, served: Profiles) -> None:
    """`{tier}.{id}.v{version}.{active}.{class}`: an id holding '.' once rendered the key of another
    request (the second overwrote the first, with no warning). Such an id is refused now, by the
    service and by the client helpers; the last field (class) may still hold '.'."""
    client = ProfilesNatsClient(jnc)
    first = Profile(id="u1", tier=Tier.GOLD, version=42, active=True, class_="x.v1.false.y")
    second = Profile(id="u1.v42.true.x", tier=Tier.GOLD, version=1, active=False, class_="y")
    await client.layout(first)
    with pytest.raises(RpcError) as refused:
        await client.layout(second)
    assert refused.value.code == ErrorCode.INVALID_ARGUMENT
    assert "id 'u1.v42.true.x' holds '.'" in refused.value.message and "same key" in refused.value.message
    assert served.calls == 1  # refused before the handler ran
    with pytest.raises(RpcError) as reading:
        await client.get_layout_cached(second)
    assert reading.value.code == ErrorCode.INVALID_ARGUMENT
    stored = await raw(jnc, "layout", "TIER_GOLD.u1.v42.true.x.v1.false.y")
    assert stored.seq == 1 and stored.data == bytes(ProfileView(id="u1", version=42, served_by="svc"))  # the first's, kept


def test_key_rules() -> None:
    template = ProfilesNatsMethods.layout.kv_store.key  # type: ignore[union-attr]
    assert render_key(template, Profile(id="i", tier=Tier.SILVER, version=0, active=False, class_="c")) == (
        "TIER_SILVER.i.v0.false.c"
    )
    with pytest.raises(RpcError) as dotted:
        render_key(template, Profile(id="a.b", class_="c"))
    assert dotted.value.code == ErrorCode.INVALID_ARGUMENT
    assert render_key(template, Profile(id="a", class_="b.c")) == "TIER_UNSPECIFIED.a.v0.false.b.c"
    assert free_text_stops("{a}-{b}/{c}.json") == {"a": "-", "b": "/"} and free_text_stops("k.{id}") == {}
    assert key_problem("a/b=c_d-e.f") is None
    assert key_problem("abc\n") is not None and key_problem("abc\r\n") is not None
    assert key_problem("a" * 1025) is not None and key_problem("a" * 1024) is None


# --- encodings and stores -------------------------------------------------------------------------


async def test_json_service_stores_json(jnc: NATS, jsnc: NATS) -> None:
    server = await betterproto_nats.serve(jsnc, JsonProfiles())
    client = JsonProfilesNatsClient(jnc)
    try:
        assert (await client.save(Profile(id="j", name="json"))).name == "JSON"
        assert json.loads((await raw(jnc, "json_profiles", "j")).data) == {"id": "j", "name": "JSON"}
        assert await client.get_save_cached(Profile(id="j")) == ProfileView(id="j", name="JSON")
    finally:
        await server.stop()


async def test_object_store_keeps_unary_responses(jnc: NATS, jsnc: NATS) -> None:
    server = await betterproto_nats.serve(jsnc, Profiles("svc"))
    client = ProfilesNatsClient(jnc)
    await client.snapshot(Profile(id="o1", name="kept"))
    await server.stop()  # the object is written behind the answer
    assert await client.get_snapshot_stored(Profile(id="o1")) == ProfileView(id="o1", name="kept", served_by="svc")
    store = await jnc.jetstream().object_store("snapshots")  # nats-py reads what we wrote
    assert (await store.get("snap.o1")).data == bytes(ProfileView(id="o1", name="kept", served_by="svc"))
    assert await client.delete_snapshot_stored(Profile(id="o1")) is True
    assert await client.get_snapshot_stored(Profile(id="o1")) is None


async def test_chunked_download_is_kept_and_read_back_as_a_stream(jnc: NATS, jsnc: NATS, tmp_path: Path) -> None:
    server = await betterproto_nats.serve(jsnc, Profiles())
    client = ProfilesNatsClient(jnc)
    request = ExportRequest(id="e1", size=40)  # 2 MB in 64 KiB chunks
    stream = await client.export(request)
    downloaded = await stream.recv_bytes()
    await server.stop()
    blob = await client.get_export_stored(request)
    assert blob is not None and blob.size == len(downloaded) == 2_000_000
    pieces = [len(piece) async for piece in blob.iter_bytes()]
    assert max(pieces) <= 65536 and sum(pieces) == blob.size  # chunk by chunk, never whole
    assert await blob.recv_to_file(tmp_path / "export.bin") == blob.size
    assert (tmp_path / "export.bin").read_bytes() == downloaded
    store = await jnc.jetstream().object_store("exports")
    assert (await store.get("export.e1")).data == downloaded  # nats-py reads the same object


async def test_a_failed_download_leaves_no_object(jnc: NATS, jsnc: NATS) -> None:
    class Failing(Profiles):
        async def export(self, request: ExportRequest) -> AsyncIterator[ExportChunk | bytes]:
            yield b"x" * 100_000
            raise RpcError(ErrorCode.NOT_FOUND, "gone halfway")

    server = await betterproto_nats.serve(jsnc, Failing())
    client = ProfilesNatsClient(jnc)
    with pytest.raises(RpcError):
        await (await client.export(ExportRequest(id="half"))).recv_bytes()
    await server.stop()
    assert await client.get_export_stored(ExportRequest(id="half")) is None
    info = await jnc.jetstream().stream_info("OBJ_exports")
    assert info.state.messages == 0  # its chunks were removed


# --- where JetStream is (or is not) ---------------------------------------------------------------


async def test_jetstream_disabled_is_a_clear_error_at_serve(nc: NATS, server_nc: NATS) -> None:
    with pytest.raises(JetStreamUnavailable) as unavailable:
        await betterproto_nats.serve(server_nc, Profiles())
    assert "JetStream is not available" in str(unavailable.value) and "persist=False" in str(unavailable.value)
    server = await betterproto_nats.serve(server_nc, Profiles(), persist=False)  # serves without storing
    try:
        client = ProfilesNatsClient(nc)
        assert (await client.save(Profile(id="n"))).id == "n"
        with pytest.raises(RpcError) as reading:
            await client.get_save_cached(Profile(id="n"))
        assert reading.value.code == ErrorCode.UNAVAILABLE and "JetStream is not available" in reading.value.message
    finally:
        await server.stop()


async def test_in_memory_serving_answers_without_storing() -> None:
    async with serve_in_memory(Profiles()) as conn:
        client = ProfilesNatsClient(conn)
        assert (await client.save(Profile(id="m"))).id == "m"
        with pytest.raises(RpcError) as reading:
            await client.get_save_cached(Profile(id="m"))
        assert reading.value.code == ErrorCode.UNAVAILABLE


async def test_jetstream_domain(tmp_path: Path) -> None:
    config = tmp_path / "hub.conf"
    config.write_text(f'jetstream {{ store_dir: "{tmp_path / "js"}", domain: "hub" }}\n')
    with NatsServer(extra_args=["-c", str(config)]) as hub:
        snc, cnc = await connect(hub.url), await connect(hub.url)
        try:
            with pytest.raises(JetStreamUnavailable) as wrong:
                await betterproto_nats.serve(snc, Profiles(), jetstream_domain="elsewhere")
            assert "domain 'elsewhere'" in str(wrong.value)
            server = await betterproto_nats.serve(snc, Profiles(), jetstream_domain="hub")
            await ProfilesNatsClient(cnc).save_checked(Profile(id="d", name="in hub"))
            await server.stop()
            for client in (
                ProfilesNatsClient(cnc, jetstream_domain="hub"),
                ProfilesNatsClient(cnc, jetstream_prefix="$JS.hub.API"),
            ):
                stored = await client.get_save_checked_cached(Profile(id="d"))
                assert stored is not None and stored.name == "in hub"
        finally:
            await snc.close()
            await cnc.close()


async def test_stored_values_that_do_not_match_are_data_loss(jnc: NATS) -> None:
    """What a client reads from a store is checked like anything else from the wire."""
    js = jnc.jetstream()
    client = ProfilesNatsClient(jnc)
    kv = await js.create_key_value(bucket="profiles")
    await kv.put("profile.junk", b"\xff\xff\xff")
    with pytest.raises(RpcError) as junk:
        await client.get_save_cached(Profile(id="junk"))
    assert junk.value.code == ErrorCode.DATA_LOSS
    store = await js.create_object_store("snapshots")
    info = await store.put("snap.t", bytes(ProfileView(id="t")))
    info.digest = "SHA-256=" + "A" * 43 + "="  # a description that does not match the chunks
    meta = "$O.snapshots.M." + base64.urlsafe_b64encode(b"snap.t").decode()
    await js.publish(meta, json.dumps(info.as_dict()).encode(), headers={"Nats-Rollup": "sub"})
    with pytest.raises(RpcError) as tampered:
        await client.get_snapshot_stored(Profile(id="t"))
    assert tampered.value.code == ErrorCode.DATA_LOSS


def test_readme_persistence_example_runs(tmp_path: Path, js_server: NatsServer) -> None:
    """The README's JetStream example, generated and run as written against a JetStream server."""
    from test_readme import blocks_of

    blocks = blocks_of("Keeping responses in JetStream")
    proto = tmp_path / "proto" / "users" / "v1" / "users.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(blocks["proto"])
    (tmp_path / "gen").mkdir()
    root = Path(__file__).resolve().parent.parent
    plugin = Path(sys.executable).parent / "protoc-gen-python_nats"
    generated = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'proto'}", f"-I{root / 'proto'}", f"--plugin={plugin}",
         f"--python_nats_out={tmp_path / 'gen'}", "users/v1/users.proto"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr
    (tmp_path / "example.py").write_text(blocks["python"].replace("nats://127.0.0.1:4222", js_server.url))
    ran = subprocess.run([sys.executable, "example.py"], capture_output=True, text=True, cwd=tmp_path, timeout=15)
    assert ran.returncode == 0, ran.stderr
    assert "UserProfile(id='42', name='user 42')" in ran.stdout
