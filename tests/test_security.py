"""Deployment security: the permissions layout of docs/SECURITY.md on a real nats-server.

Two client users run every RPC shape side by side; the second can neither read nor inject into the
first one's streams; a user whose permissions miss one of a call's own subjects gets PERMISSION_DENIED
at once instead of a hang until the deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
from typing import Any, AsyncIterator, Awaitable, Iterator

import nats
import pytest
from conftest import ROOT, settle
from demo_service import Demo
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.testing import NatsServer
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    ExportSnapshotRequest,
    ImportSnapshotResponse,
    PingRequest,
    SnapshotChunk,
    StreamDemoServiceNatsClient,
    SumRequest,
)

pytestmark = pytest.mark.timeout(30)

PASSWORDS = {"svc": "svc-pw", "alice": "alice-pw", "bob": "bob-pw", "ops": "ops-pw"}

# Test-only users, added to the documented layout.
EXTRA_USERS = """
    # carol: cannot publish into the service's inboxes (client-stream and bidi data, v2 control).
    {user: carol, password: carol-pw, permissions: {
      publish: {allow: ["api.v1.>"]}
      subscribe: {allow: ["_INBOX.carol.>"]}
    }}
    # dave: may not subscribe to any inbox of his own (his connection's one subscription for all its
    # stream inboxes, `_INBOX.dave.<random>.>`, is denied: nats-server would allow it under
    # `_INBOX.dave.*.*`, the shape of nats-py's request-reply inbox, so that is not granted either).
    {user: dave, password: dave-pw, permissions: {
      publish: {allow: ["api.v1.>", "_INBOX.svc.>"]}
      subscribe: {allow: ["$nothing.>"]}
    }}
    # unary: a unary-only service with allow_responses (docs/SECURITY.md).
    {user: unary, password: unary-pw, permissions: {
      subscribe: {allow: ["api.v1.unary.>", "$SRV.>"]}
      allow_responses: true
    }}
"""
PASSWORDS.update(carol="carol-pw", dave="dave-pw", unary="unary-pw")

BLOB = random.Random(9).randbytes(3 << 20)  # > half the 4 MiB byte window: byte-driven acks travel too


def documented_config() -> str:
    """The first ```conf block of docs/SECURITY.md, with the test-only users added."""
    text = (ROOT / "docs" / "SECURITY.md").read_text()
    block = re.search(r"```conf\n(.*?)```", text, re.S)
    assert block is not None, "docs/SECURITY.md has no ```conf block"
    head, tail = block.group(1).rsplit("]", 1)
    return head + EXTRA_USERS + "]" + tail


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One nats-server with the documented permissions (`-c` beside NatsServer's own flags)."""
    config = tmp_path_factory.mktemp("security") / "auth.conf"
    config.write_text(documented_config())
    env = {f"{user.upper()}_PASS": PASSWORDS[user] for user in ("svc", "alice", "bob", "ops")}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # the server resolves $SVC_PASS ... from its environment at start
    try:
        server = NatsServer(extra_args=["-c", str(config)]).start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    try:
        yield server
    finally:
        server.__exit__()


class User:
    """A connection as `name`, with its own inbox prefix and every error nats-py reported."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.errors: list[str] = []
        self.nc: NATS

    async def connect(self, url: str) -> User:
        async def on_error(error: Exception) -> None:
            self.errors.append(str(error))

        self.nc = await nats.connect(
            url,
            user=self.name,
            password=PASSWORDS[self.name],
            inbox_prefix=f"_INBOX.{self.name}",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=5,
        )
        return self

    def client(self, **options: Any) -> StreamDemoServiceNatsClient:
        return StreamDemoServiceNatsClient(self.nc, **options)

    def denied(self, action: str, subject: str) -> bool:
        """nats-py's (lower-cased) report of a denied `publish to` / `subscription to` `subject`."""
        return f'nats: permissions violation for {action} "{subject.lower()}"' in self.errors

    def subscriptions(self) -> list[str]:
        """Subjects this connection is subscribed to, other than nats-py's request-reply inbox: the
        runtime's one wildcard for all the connection's stream inboxes while it has any."""
        resp = self.nc._resp_sub_prefix.decode() if self.nc._resp_sub_prefix else None
        return [sub.subject for sub in self.nc._subs.values() if not (resp and sub.subject.startswith(resp))]


class Users:
    def __init__(self, url: str) -> None:
        self.url = url
        self.connected: list[User] = []

    async def __call__(self, name: str) -> User:
        user = await User(name).connect(self.url)
        self.connected.append(user)
        return user


@pytest.fixture
async def users(secured: NatsServer) -> AsyncIterator[Users]:
    made = Users(secured.url)
    yield made
    for user in made.connected:
        await user.nc.close()


class Blobs(Demo):
    """The demo service plus chunked download and upload."""

    async def export_snapshot(self, request: ExportSnapshotRequest) -> AsyncIterator[SnapshotChunk | bytes]:
        yield BLOB[: int(request.id)]

    async def import_snapshot(self, requests: betterproto_nats.UploadRequests[SnapshotChunk]) -> ImportSnapshotResponse:
        data = await requests.recv_bytes()
        return ImportSnapshotResponse(id="upload", size=len(data) if data == BLOB[: len(data)] else -1)


class Service:
    def __init__(self, user: User, server: betterproto_nats.Server, impl: Blobs) -> None:
        self.user = user
        self.server = server
        self.impl = impl


@pytest.fixture
async def service(users: Users) -> AsyncIterator[Service]:
    """The demo service as user `svc`; afterwards its connection must not have been denied anything."""
    svc = await users("svc")
    impl = Blobs()
    server = await betterproto_nats.serve(svc.nc, impl)
    yield Service(svc, server, impl)
    await server.stop(grace_period=0.5)
    assert svc.errors == []


async def every_shape(user: User) -> None:
    """All four shapes, chunked download and upload, v2 acks, heartbeats and a cancel, as `user`."""
    client, name = user.client(), user.name
    assert (await client.ping(PingRequest(payload=name))).payload == name

    numbers = [r.number async for r in client.count_up(CountUpRequest(start=1, count=300))]  # acks to S
    assert numbers == list(range(1, 301))

    total = await client.sum([SumRequest(value=v) for v in range(1, 301)])  # acks to R
    assert (total.total, total.count) == (45150, 300)

    texts = [f"{name} {i}" for i in range(300)]
    assert [m.text async for m in client.chat([ChatMessage(text=t) for t in texts])] == [f"echo: {t}" for t in texts]

    download = await client.export_snapshot(ExportSnapshotRequest(id=str(len(BLOB))))
    assert await download.recv_bytes() == BLOB

    upload = await client.import_snapshot()
    await upload.send_bytes(BLOB)
    assert (await upload.close_and_recv()).size == len(BLOB)

    async with await user.client(heartbeat=0.2).chat() as chat:  # slow enough for heartbeats both ways
        for i in range(3):
            await chat.send(ChatMessage(text=f"slow {i}"))
            assert (await chat.recv()).text == f"echo: slow {i}"
            await asyncio.sleep(0.25)
        await chat.close_send()
        with pytest.raises(StopAsyncIteration):
            await chat.recv()

    async for _ in client.count_up(CountUpRequest(start=1, count=1_000_000)):
        break  # leaving early sends a cancel to the service's inbox


async def test_two_users_run_every_shape_side_by_side(users: Users, service: Service) -> None:
    alice, bob = await users("alice"), await users("bob")
    await asyncio.wait_for(asyncio.gather(every_shape(alice), every_shape(bob)), 15)
    await settle(lambda: service.impl.cancelled == 2 and not service.server.calls, timeout=5)
    assert alice.errors == [] and bob.errors == []  # no permission the layout lacks


async def test_discovery_answers_the_ops_user(users: Users, service: Service) -> None:
    ops = await users("ops")
    for subject in ("$SRV.PING", "$SRV.INFO.StreamDemoService", f"$SRV.STATS.StreamDemoService.{service.server.id}"):
        reply = json.loads((await ops.nc.request(subject, b"", timeout=2)).data)
        assert (reply["name"], reply["id"]) == ("StreamDemoService", service.server.id)
    assert ops.errors == []


async def test_bob_cannot_read_alices_streams(users: Users, service: Service) -> None:
    alice, bob = await users("alice"), await users("bob")
    overheard: list[str] = []

    async def overhear(msg: Any) -> None:
        overheard.append(msg.subject)

    attempts = ["_INBOX.alice.>", "_INBOX.>", "_INBOX.*.>", "_INBOX.svc.>", ">"]
    for subject in attempts:
        await bob.nc.subscribe(subject, cb=overhear)
    await flush_ordered(bob.nc)
    await settle(lambda: all(bob.denied("subscription to", s) for s in attempts), timeout=2)

    client = alice.client()

    async def alice_streams() -> None:
        assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=300))] == list(range(1, 301))
        assert (await client.sum([SumRequest(value=2)] * 10)).total == 20
        assert len([m async for m in client.chat([ChatMessage(text="secret")] * 10)]) == 10
        download = await client.export_snapshot(ExportSnapshotRequest(id="200000"))
        assert await download.recv_bytes() == BLOB[:200000]

    await asyncio.wait_for(alice_streams(), 10)
    await flush_ordered(bob.nc)  # anything the server had routed to bob has arrived by now
    assert overheard == []
    assert bob.nc.is_connected  # a denied subscription does not cost the connection
    assert (await bob.client(timeout=2).ping(PingRequest(payload="still here"))).payload == "still here"
    assert alice.errors == []


async def test_bob_cannot_inject_into_alices_streams(users: Users, service: Service) -> None:
    alice, bob = await users("alice"), await users("bob")
    client = alice.client(timeout=10)

    # Client streaming: a forged final answer on alice's inbox R would end her call with total 999.
    upload = await client.sum()
    await upload.send(SumRequest(value=1))
    inbox = upload.call.inbox.subject
    assert inbox.startswith("_INBOX.alice.") and alice.subscriptions() == [inbox.rsplit(".", 1)[0] + ".>"]
    await bob.nc.publish(inbox, bytes(SumRequest(value=999)))
    await bob.nc.publish(
        inbox, b"", headers={"Nats-Service-Error-Code": "INTERNAL", "Nats-Service-Error": "forged by bob"}
    )
    await settle(lambda: bob.denied("publish to", inbox), timeout=2)
    await upload.send(SumRequest(value=2))
    result = await asyncio.wait_for(upload.close_and_recv(), 5)
    assert (result.total, result.count) == (3, 2)

    # Bidi: a forged next message and end marker would show up before the real echo.
    async with await client.chat() as chat:
        await chat.send(ChatMessage(text="one"))
        assert (await asyncio.wait_for(chat.recv(), 5)).text == "echo: one"
        inbox = chat.call.inbox.subject
        await bob.nc.publish(inbox, bytes(ChatMessage(user="server", text="forged")), headers={"Nats-Stream-Seq": "2"})
        await bob.nc.publish(inbox, b"", headers={"Nats-Stream-End": "true", "Nats-Stream-Count": "1"})
        await settle(lambda: bob.denied("publish to", inbox), timeout=2)
        await chat.send(ChatMessage(text="two"))
        assert (await asyncio.wait_for(chat.recv(), 5)).text == "echo: two"
        await chat.close_send()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(chat.recv(), 5)
    assert alice.errors == []


NUID_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def predict(names: list[str], ahead: int = 16) -> list[str]:
    """The next inbox names an attacker would try after seeing `names` of one connection: nats-py's
    NUIDs keep a 12-character random prefix and add a fixed increment to a 10-digit base-62 counter."""
    parts = [name.rpartition(".") for name in names]
    tokens = [token for _, _, token in parts]
    if any(len(t) != 22 or t[:12] != tokens[0][:12] or set(t) - set(NUID_DIGITS) for t in tokens):
        return []  # not NUIDs of one connection: nothing to extrapolate
    counters = [sum(NUID_DIGITS.index(c) * 62**i for i, c in enumerate(reversed(t[12:]))) for t in tokens]
    step = min(b - a for a, b in zip(counters, counters[1:]))
    if step <= 0:
        return []
    guesses = []
    for k in range(1, ahead + 1):
        n, digits = counters[-1] + k * step, ""
        for _ in range(10):
            n, d = divmod(n, 62)
            digits = NUID_DIGITS[d] + digits
        guesses.append(f"{parts[-1][0]}.{tokens[-1][:12]}{digits}")
    return guesses


async def test_bob_cannot_guess_the_service_inbox_of_alices_call(users: Users, service: Service) -> None:
    """Bob may publish into `_INBOX.svc.>` (his own calls need it), so the name of the service's inbox
    for alice's call must not follow from the names bob saw in his own calls."""
    alice, bob = await users("alice"), await users("bob")
    seen = []
    for _ in range(3):  # bob's own client-stream handshakes, raw: the ack names the service's inbox
        ack = await bob.nc.request("api.v1.stream.sum", b"", timeout=2, headers={"Reply-To": bob.nc.new_inbox()})
        server_inbox = (ack.headers or {})["Nats-Stream-Inbox"]
        seen.append(server_inbox)
        await bob.nc.publish(server_inbox, b"", headers={"Nats-Stream-End": "true", "Nats-Stream-Count": "0"})
    assert all(name.startswith("_INBOX.svc.") for name in seen)

    upload = await alice.client(timeout=10).sum()
    await upload.send(SumRequest(value=1))
    # With nats-py's new_inbox() the first guess was alice's inbox (a forged seq, then a cancel, ended
    # her call); random names leave nothing to extrapolate.
    for guess in predict(seen):
        await bob.nc.publish(guess, bytes(SumRequest(value=1000)), headers={"Nats-Stream-Seq": "2"})
        await bob.nc.publish(guess, b"", headers={"Nats-Stream-Cancel": "bob"})
    await flush_ordered(bob.nc)  # the NATS server has routed bob's messages ...
    await flush_ordered(service.user.nc)  # ... and the service has read them
    await asyncio.sleep(0.05)
    await upload.send(SumRequest(value=2))
    try:
        result = await asyncio.wait_for(upload.close_and_recv(), 5)
    except (RpcError, asyncio.TimeoutError) as error:
        pytest.fail(f"bob's guesses reached alice's call: {error!r}")
    assert (result.total, result.count) == (3, 2)
    assert bob.errors == []


async def fails_fast(call: Awaitable[Any], bound: float = 3.0) -> RpcError:
    """The RpcError `call` fails with, which must come within `bound` seconds (not at its deadline)."""
    try:
        await asyncio.wait_for(call, bound)
    except RpcError as error:
        return error
    except asyncio.TimeoutError:
        pytest.fail(f"the call was still waiting after {bound} s instead of failing")
    pytest.fail("the call succeeded")


async def test_denied_publish_into_the_service_inbox_fails_client_stream_and_bidi(
    users: Users, service: Service
) -> None:
    carol = await users("carol")
    client = carol.client(timeout=10)  # far beyond the bound: a deadline is not what ends the calls

    error = await fails_fast(client.sum([SumRequest(value=1), SumRequest(value=2)]))
    assert error.code == ErrorCode.PERMISSION_DENIED, error

    async def chat() -> list[ChatMessage]:
        return [m async for m in client.chat([ChatMessage(text="hello")])]

    error = await fails_fast(chat())
    assert error.code == ErrorCode.PERMISSION_DENIED, error
    assert any('permissions violation for publish to "_inbox.svc.' in e for e in carol.errors)  # her callback too
    assert (await client.ping(PingRequest(payload="ok"), timeout=2)).payload == "ok"  # connection intact
    await settle(lambda: not service.server.calls, timeout=3)  # the service's side ends by itself too


async def test_denied_subscription_to_the_own_inbox_fails_a_server_stream(users: Users, service: Service) -> None:
    dave = await users("dave")
    client = dave.client(timeout=10)

    async def count_up() -> list[int]:
        return [r.number async for r in client.count_up(CountUpRequest(start=1, count=3))]

    error = await fails_fast(count_up())
    assert error.code == ErrorCode.PERMISSION_DENIED, error
    assert any('permissions violation for subscription to "_inbox.dave.' in e for e in dave.errors)
    await settle(lambda: not service.server.calls, timeout=3)
    assert dave.nc.is_connected and dave.subscriptions() == []  # the denied one went; the connection lives on
    error = await fails_fast(count_up())  # and the next stream fails the same way
    assert error.code == ErrorCode.PERMISSION_DENIED, error


async def test_unary_only_service_with_allow_responses(users: Users) -> None:
    svc, alice = await users("unary"), await users("alice")
    server = await betterproto_nats.serve(svc.nc, Demo(), subject_prefix="api.v1.unary")
    try:
        client = alice.client(subject_prefix="api.v1.unary", timeout=2)
        for i in range(3):
            assert (await client.ping(PingRequest(payload=str(i)))).payload == str(i)
        ops = await users("ops")
        assert json.loads((await ops.nc.request("$SRV.PING", b"", timeout=2)).data)["id"] == server.id
    finally:
        await server.stop(grace_period=0.5)
    assert svc.errors == [] and alice.errors == []
