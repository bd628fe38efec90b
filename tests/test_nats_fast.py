"""nats-py fast paths (`net/nats_fast`): header blocks from the wire are read as nats-py reads them,
without its coroutine per message (`DirectReads`); a message published while the connection is quiet
is written at once, the rest of a busy turn together by nats-py's flusher (`publish_nowait`)."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import needs_fast_paths
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS

from betterproto_nats.net.nats_fast import header_lines, publish_nowait

# Bytes that decide how a line reads: separators, whitespace (ASCII and what str.isspace adds), a
# byte that is not ASCII, and bytes that start bad UTF-8.
PIECES = [b":", b": ", b" ", b"\t", b"\x1c", b"\x0b", b"\r", b"\n", b"\r\n", b"\xc3\xa9", b"\xff", b"Name", b"x", b"-", b"Nats-Deadline", b"1"]


def nats_py_reading(block: bytes) -> Any:
    """What nats-py's `_process_headers` makes of `block` (it never waits: driven by hand)."""
    reading = NATS()._process_headers(block)
    try:
        reading.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("nats-py's header reading waited")


@given(st.lists(st.lists(st.sampled_from(PIECES), max_size=8).map(b"".join), max_size=6))
def test_header_blocks_read_as_nats_py_reads_them(lines: list[bytes]) -> None:
    block = b"NATS/1.0\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"
    assert header_lines(block) == nats_py_reading(block)


def test_header_block_edges() -> None:
    for block in (
        b"NATS/1.0\r\n",
        b"NATS/1.0\r\n\r\n",
        b"NATS/1.0\r\nNats-Deadline: 1765000000000\r\n\r\n",
        b"NATS/1.0\r\nA: 1\r\nA: 2\r\n\r\n",
        b"NATS/1.0\r\nNo colon\r\n:empty name\r\n  Spaced :  value  \r\n\r\n",
        b"NATS/1.0\r\nIn side: x\r\nTab\tbed: y\r\nSep\x1cx: z\r\n\xc3\xa9: w\r\nV: \xff\xfe\r\n\r\n",
    ):
        assert header_lines(block) == nats_py_reading(block), block


@needs_fast_paths
async def test_a_quiet_connection_writes_at_once_and_a_busy_turn_together(nc: NATS, server_nc: NATS) -> None:
    """The first message of a quiet loop turn goes to the socket at once (nats-py's list stays empty
    and its flusher is not woken); the next ones of that turn wait in the list for the flusher, and
    all arrive, in order."""
    got: list[bytes] = []
    everything = asyncio.Event()

    async def received(msg: Any) -> None:
        got.append(msg.data)
        if len(got) == 3:
            everything.set()

    sub = await server_nc.subscribe("fast.quiet", cb=received)
    await server_nc.flush()
    await asyncio.sleep(0)  # (a turn of our own: nothing else ready in it)
    assert publish_nowait(nc, "fast.quiet", b"1", None)
    assert not nc._pending and nc._flush_queue.empty()  # written, flusher not woken
    assert publish_nowait(nc, "fast.quiet", b"2", None) and publish_nowait(nc, "fast.quiet", b"3", {"X-Seq": "3"})
    assert len(nc._pending) == 7 and not nc._flush_queue.empty()  # (a message's parts: its head, body and CRLF; a header block too)
    await asyncio.wait_for(everything.wait(), 5)
    assert got == [b"1", b"2", b"3"]
    await sub.unsubscribe()
