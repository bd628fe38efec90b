"""The runtime without its fast paths over nats-py's internals (issue 27, item 5): switched off by
`BETTERPROTO_NATS_FAST_PATHS=0`, or switching themselves off, loudly, when nats-py's internals are
not as expected; and a changed internal is not mistaken for a closed connection.

The suite does not run twice: `test_the_basics_pass_with_the_fast_paths_off` runs this module, the
unary tests and the stream basics in a subprocess with the switch (about 10 s)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import nats
import pytest
from conftest import needs_fast_paths
from demo_service import Demo
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats.core import logs
from betterproto_nats.net import nats_fast
from betterproto_nats.net.nats_fast import Requests, deliver_directly, publish_nowait
from betterproto_nats.net.nats_fixes import flush_ordered
from betterproto_nats.net.transport import transport_of
from betterproto_nats.testing import NatsServer
from gen.streaming.v1 import ChatMessage, CountUpRequest, PingRequest, StreamDemoServiceNatsClient, SumRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def told(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.LogCaptureFixture]:
    """The WARNING records of logger "betterproto_nats", with what was said once forgotten first."""
    monkeypatch.setattr(logs, "_told", set())
    with caplog.at_level(logging.WARNING, logger="betterproto_nats"):
        yield caplog


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "betterproto_nats" and r.levelno == logging.WARNING]


async def four_shapes(nc: NATS, server_nc: NATS) -> None:
    """A unary call, a server stream, a client stream and a bidi stream, each answered in full."""
    server = await betterproto_nats.serve(server_nc, Demo())
    try:
        client = StreamDemoServiceNatsClient(nc)
        assert (await client.ping(PingRequest(payload="p"), timeout=5)).payload
        assert [r.number async for r in client.count_up(CountUpRequest(start=1, count=50))] == list(range(1, 51))
        assert (await client.sum([SumRequest(value=v) for v in range(10)])).total == 45
        texts = [f"m{i}" for i in range(20)]
        assert [r.text async for r in client.chat([ChatMessage(text=t) for t in texts])] == ["echo: " + t for t in texts]
    finally:
        await server.stop()


@pytest.mark.skipif(nats_fast.FAST_PATHS, reason="runs where BETTERPROTO_NATS_FAST_PATHS=0 (the subprocess below)")
async def test_with_the_switch_no_fast_path_is_used(nc: NATS, server_nc: NATS, told: pytest.LogCaptureFixture) -> None:
    """Every fast path reports itself unusable, the four shapes work on nats-py's public API alone,
    and the switch is said once (not per connection)."""
    await four_shapes(nc, server_nc)
    assert not Requests.of(nc).usable and not publish_nowait(nc, "x", b"", None)
    for conn in (nc, server_nc):
        assert not hasattr(conn, "_betterproto_nats_direct_reads")
        assert not any(type(sub._pending_queue) is nats_fast.DirectDelivery for sub in conn._subs.values())
    assert [m for m in warnings_of(told) if "fast paths are off" in m] == [
        "nats-py fast paths are off (BETTERPROTO_NATS_FAST_PATHS=0): nats-py's public API is used everywhere"
    ]


@needs_fast_paths
def test_the_basics_pass_with_the_fast_paths_off() -> None:
    """The issue's "the suite runs once with the fast paths off", at the cost of seconds: this module,
    the unary tests and the stream basics (the 100k streams left out) in a pytest of their own."""
    env = {**os.environ, nats_fast.SWITCH: "0"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-k", "not 100k",
         "tests/test_fast_paths_off.py", "tests/test_unary.py", "tests/test_streaming.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "test_fast_paths_off.py::test_with_the_switch_no_fast_path_is_used PASSED" in run.stdout
    assert "test_streaming.py::test_bidi_explicit_style PASSED" in run.stdout


@needs_fast_paths
async def test_changed_internals_switch_each_fast_path_off_once(
    nc: NATS, server_nc: NATS, told: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-py whose internals are not those the fast paths expect (here: each expects an attribute
    nats-py does not have): every fast path says once which internal and what is used instead, and
    the four shapes still work, twice (the second time says nothing new)."""
    for expected in (nats_fast._PENDING_BUFFER, nats_fast._REQUESTS, nats_fast._SUBSCRIPTION):
        monkeypatch.setitem(expected, "_renamed_by_a_future_nats_py", None)
    await four_shapes(nc, server_nc)
    said = warnings_of(told)
    for path, owner, instead in (
        ("publish_nowait", "Client", "Client.publish"),
        ("Requests", "Client", "Client.request"),
        ("DirectDelivery", "Subscription", "the subscription's callback"),
    ):
        assert [m for m in said if m.startswith(f"fast path {path} is off")] == [
            f"fast path {path} is off: nats-py's {owner}._renamed_by_a_future_nats_py (missing) is not as expected "
            f"(is nats-py the version pyproject.toml pins?); {instead} is used instead"
        ]
    await four_shapes(nc, server_nc)
    assert warnings_of(told) == said


@needs_fast_paths
async def test_direct_reads_step_aside_when_a_subscription_changed(nc: NATS, told: pytest.LogCaptureFixture) -> None:
    """A subscription attribute the connection's direct reads use is gone mid-run: the connection goes
    back to its `ReadGuard` (which drops that message: nats-py's own way reads the same attribute),
    that is said once, and the next message arrives the nats-py way."""
    got: list[bytes] = []
    sub = await transport_of(nc).subscribe_direct("direct.renamed", lambda msg: got.append(msg.data))  # type: ignore[attr-defined]
    raw = next(s for s in nc._subs.values() if s.subject == "direct.renamed")
    guard = nc._betterproto_nats_guard  # type: ignore[attr-defined]
    assert vars(nc)["_process_msg"] != guard.process_msg  # the direct reads are in place
    max_msgs = raw._max_msgs
    del raw._max_msgs  # what a rename in nats-py would look like to them
    await nc.publish("direct.renamed", b"one")
    await flush_ordered(nc)
    raw._max_msgs = max_msgs
    await nc.publish("direct.renamed", b"two")
    await flush_ordered(nc)
    assert got == [b"two"] and guard.dropped == 1
    assert vars(nc)["_process_msg"] == guard.process_msg
    assert [m for m in warnings_of(told) if m.startswith("fast path DirectReads is off")]
    await sub.unsubscribe()


def test_what_is_not_as_expected_is_named() -> None:
    """Each fast path's check names the first internal that is missing or of another type."""
    assert nats_fast._not_as_expected(object(), {"_pending": list}) == "object._pending (missing)"
    wrong: Any = type("Client", (), {"_pending": (), "stats": {}})()
    assert nats_fast._not_as_expected(wrong, {"stats": dict, "_pending": list}) == "Client._pending (a tuple, expected a list)"
    assert nats_fast._not_as_expected(wrong, {"stats": dict}) is None


@needs_fast_paths
def test_a_subscription_unlike_nats_py_s_keeps_its_callback(told: pytest.LogCaptureFixture) -> None:
    assert not deliver_directly(object(), print)  # type: ignore[arg-type]
    assert warnings_of(told) == [
        "fast path DirectDelivery is off: nats-py's object._pending_queue (missing) is not as expected "
        "(is nats-py the version pyproject.toml pins?); the subscription's callback is used instead"
    ]


async def test_a_changed_flush_pending_is_not_a_closed_connection(
    nats_server: NatsServer, nc: NATS, told: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`flush_ordered` on a nats-py whose `_flush_pending` no longer takes `force_flush`: said once,
    and the round trip still happens (nats-py's `flush()` alone). A closed connection is False,
    silently, as before."""
    original = nc._flush_pending

    async def renamed_parameter() -> Any:  # nats-py's own calls pass nothing
        return await original()

    monkeypatch.setattr(nc, "_flush_pending", renamed_parameter)
    assert await flush_ordered(nc) and await flush_ordered(nc)
    assert [m for m in warnings_of(told) if "_flush_pending" in m] == [
        "nats-py's Client._flush_pending(force_flush=True) is not as expected (TypeError: test_a_changed_flush_pending_is_not_a_closed_connection.<locals>."
        "renamed_parameter() got an unexpected keyword argument 'force_flush'); flush_ordered uses flush() "
        "alone, which may answer before queued subscriptions reach the server. Is nats-py the version "
        "pyproject.toml pins?"
    ]
    told.clear()
    closed = await nats.connect(nats_server.url, allow_reconnect=False)
    await closed.close()
    assert not await flush_ordered(closed)
    assert warnings_of(told) == []
