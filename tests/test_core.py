"""The protocol core on plain inputs, no event loop: v1 and v2 negotiation, frame classification,
call states, credit, batches, loss counting and liveness bookkeeping. Tables, each in milliseconds."""

from __future__ import annotations

from typing import Any, Awaitable

import pytest

from betterproto_nats.core.credit import NO_ACKS, AckPolicy, Credit
from betterproto_nats.core.errors import ErrorCode, Overloaded, RpcError
from betterproto_nats.core.frames import FrameKind, classify, is_control
from betterproto_nats.core.headers import (
    DEADLINE,
    ERROR,
    ERROR_CODE,
    MAX_BATCH,
    REPLY_TO,
    RETRY_AFTER,
    STATUS,
    STREAM_ACK,
    STREAM_BATCH,
    STREAM_CANCEL,
    STREAM_COUNT,
    STREAM_END,
    STREAM_HEARTBEAT,
    STREAM_INBOX,
    STREAM_PEER,
    STREAM_SEQ,
    STREAM_VERSION,
    STREAM_WINDOW,
    STREAM_WINDOW_BYTES,
    error_from_headers,
    error_headers,
    message_size,
    parse_uint,
    user_headers,
)
from betterproto_nats.core.heartbeats import (
    BEAT_BODY_LIMIT,
    MAX_ENTRIES,
    RELEASED,
    SENT,
    beat_bodies,
    beat_entry,
    beat_lines,
    overdue,
    past_stall,
    released_line,
    sent_line,
    silence,
    silent,
)
from betterproto_nats.core.loss import lost_in_transit, missing_at_release, short_end
from betterproto_nats.core.negotiation import (
    DEFAULT_WINDOW_BYTES,
    DEFAULT_WINDOW_MESSAGES,
    Window,
    client_heartbeat,
    client_offer,
    confirmation,
    longest_heartbeat,
    server_terms,
)
from betterproto_nats.core.states import CLIENT_MOVES, SERVER_MOVES, CallState, ServerState
from betterproto_nats.core.subjects import InboxPolicy
from betterproto_nats.encoding.batch import pack, unpack

V2 = {STREAM_VERSION: "2", REPLY_TO: "_INBOX.r"}

# --- Negotiation: what a server makes of the opening headers (v1 and v2 rules) ----------------------

# (headers, streaming, idle timeout) -> (v2, heartbeat, deadline, peer)
TERMS: list[tuple[dict[str, str] | None, bool, float, tuple[bool, float, float | None, str | None]]] = [
    (None, False, 60, (False, 0.0, None, None)),  # unary, nothing said
    ({}, True, 60, (False, 0.0, None, None)),  # a v1 stream (the Go client)
    ({STREAM_VERSION: "2"}, True, 60, (False, 0.0, None, None)),  # v2 offered, no inbox named: v1
    ({STREAM_VERSION: "3", REPLY_TO: "_INBOX.r"}, True, 60, (False, 0.0, None, None)),  # unknown version: v1
    (V2, False, 60, (False, 0.0, None, None)),  # v2 means nothing on a unary call
    (V2, True, 60, (True, 1.0, None, None)),  # v2, the default heartbeat
    ({**V2, STREAM_HEARTBEAT: "250"}, True, 60, (True, 0.25, None, None)),
    ({**V2, STREAM_HEARTBEAT: "1"}, True, 60, (True, 0.05, None, None)),  # clamped up
    ({**V2, STREAM_HEARTBEAT: "999999"}, True, 60, (True, 20.0, None, None)),  # clamped down
    ({**V2, STREAM_HEARTBEAT: "5000"}, True, 3, (True, 1.0, None, None)),  # 3 beats within the idle timeout
    ({**V2, STREAM_HEARTBEAT: "x"}, True, 60, (True, 1.0, None, None)),  # malformed: the default
    ({**V2, DEADLINE: "1700000000500"}, True, 60, (True, 1.0, 1700000000.5, None)),
    ({DEADLINE: "1700000000500"}, True, 60, (False, 0.0, None, None)),  # a v1 stream's deadline: not ours to read
    ({DEADLINE: "1700000000500"}, False, 60, (False, 0.0, 1700000000.5, None)),  # unary: read
    ({**V2, STREAM_PEER: "_INBOX.p"}, True, 60, (True, 1.0, None, "_INBOX.p")),
    ({STREAM_PEER: "_INBOX.p"}, True, 60, (False, 0.0, None, None)),  # v1: no shared heartbeats
]


@pytest.mark.parametrize("headers, streaming, idle, expected", TERMS)
def test_server_terms(
    headers: dict[str, str] | None, streaming: bool, idle: float, expected: tuple[bool, float, float | None, str | None]
) -> None:
    terms = server_terms(headers, streaming, idle)
    assert (terms.v2, terms.heartbeat, terms.deadline_epoch, terms.peer) == expected


@pytest.mark.parametrize("deadline", ["soon", "-1", "1.5", "", "٣"])
def test_a_malformed_deadline_is_invalid_argument(deadline: str) -> None:
    with pytest.raises(RpcError) as raised:
        server_terms({**V2, DEADLINE: deadline}, True, 60)
    assert raised.value.code == ErrorCode.INVALID_ARGUMENT


# (what the peer granted) -> the window we send within
GRANTED: list[tuple[dict[str, str] | None, Window]] = [
    (None, Window(DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES, 1)),  # a peer that says nothing: no batches
    ({STREAM_WINDOW: "8", STREAM_WINDOW_BYTES: "4096"}, Window(8, 4096, 1)),
    ({STREAM_WINDOW: "0", STREAM_WINDOW_BYTES: "junk"}, Window(DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES, 1)),
    ({STREAM_BATCH: "64"}, Window(DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES, 64)),
    ({STREAM_BATCH: "100000"}, Window(DEFAULT_WINDOW_MESSAGES, DEFAULT_WINDOW_BYTES, MAX_BATCH)),  # clamped
]


@pytest.mark.parametrize("headers, window", GRANTED)
def test_granted_windows(headers: dict[str, str] | None, window: Window) -> None:
    assert Window.granted(headers) == window


@pytest.mark.parametrize(
    "max_inflight, messages", [(0, DEFAULT_WINDOW_MESSAGES), (16, 16), (5000, 5000)]
)
def test_the_window_a_method_grants(max_inflight: int, messages: int) -> None:
    window = Window.for_method(max_inflight)
    assert (window.messages, window.max_bytes, window.batch) == (messages, DEFAULT_WINDOW_BYTES, MAX_BATCH)
    assert Window.for_method(max_inflight) is window  # one shared object per size


def test_offer_and_confirmation_round_trip() -> None:
    """What a client offers, a server reads; what the server confirms, the client reads."""
    offer = client_offer(0.5, "1700000000000", Window(10, 1000, 4), peer="_INBOX.c")
    assert offer == {
        STREAM_VERSION: "2",
        STREAM_HEARTBEAT: "500",
        STREAM_PEER: "_INBOX.c",
        STREAM_WINDOW: "10",
        STREAM_WINDOW_BYTES: "1000",
        STREAM_BATCH: "4",
        DEADLINE: "1700000000000",
    }
    terms = server_terms({**offer, REPLY_TO: "_INBOX.r"}, True, 60)
    assert (terms.v2, terms.heartbeat, terms.deadline_epoch, terms.peer) == (True, 0.5, 1700000000.0, "_INBOX.c")
    assert Window.granted(offer) == Window(10, 1000, 4)
    confirmed = confirmation("_INBOX.s", terms.heartbeat, None, peer="_INBOX.p")
    assert confirmed == {STREAM_VERSION: "2", STREAM_INBOX: "_INBOX.s", STREAM_HEARTBEAT: "500", STREAM_PEER: "_INBOX.p"}
    assert client_heartbeat(confirmed, own=2.0) == 0.5
    assert client_heartbeat({STREAM_VERSION: "2"}, own=2.0) == 2.0  # the server said none: ours
    assert client_offer(1.0, None, None) == {STREAM_VERSION: "2", STREAM_HEARTBEAT: "1000"}  # receives nothing


@pytest.mark.parametrize("idle, longest", [(60, 20.0), (3, 1.0), (0.01, 0.05)])
def test_longest_heartbeat(idle: float, longest: float) -> None:
    assert longest_heartbeat(idle) == longest


# --- Frames: what a message on a stream inbox is --------------------------------------------------

# headers -> (kind, seq, count, batch, error code)
FRAMES: list[tuple[dict[str, str] | None, tuple[FrameKind, int, int | None, int, str | None]]] = [
    (None, (FrameKind.OTHER, 0, None, 1, None)),
    ({}, (FrameKind.OTHER, 0, None, 1, None)),
    ({STREAM_SEQ: "1"}, (FrameKind.DATA, 1, None, 1, None)),
    ({STREAM_SEQ: "7", STREAM_BATCH: "3"}, (FrameKind.DATA, 7, None, 3, None)),
    ({STREAM_SEQ: "x"}, (FrameKind.ERROR, 0, None, 1, ErrorCode.DATA_LOSS)),
    ({STREAM_SEQ: "-1"}, (FrameKind.ERROR, 0, None, 1, ErrorCode.DATA_LOSS)),
    ({STREAM_SEQ: "1" * 19}, (FrameKind.ERROR, 0, None, 1, ErrorCode.DATA_LOSS)),  # beyond 63 bits
    ({STREAM_SEQ: "1", STREAM_BATCH: "0"}, (FrameKind.ERROR, 0, None, 1, ErrorCode.DATA_LOSS)),
    ({STREAM_SEQ: "1", STREAM_BATCH: str(MAX_BATCH + 1)}, (FrameKind.ERROR, 0, None, 1, ErrorCode.DATA_LOSS)),
    ({STREAM_END: "true", STREAM_COUNT: "5"}, (FrameKind.END, 0, 5, 1, None)),
    ({STREAM_END: "true", STREAM_COUNT: "five"}, (FrameKind.END, 0, None, 1, None)),  # malformed: as if absent
    ({STREAM_END: "true", ERROR_CODE: "NOT_FOUND", ERROR: "gone"}, (FrameKind.END, 0, None, 1, "NOT_FOUND")),
    ({STREAM_END: "false", STREAM_SEQ: "2"}, (FrameKind.DATA, 2, None, 1, None)),  # only "true" ends
    ({ERROR_CODE: "INTERNAL", ERROR: "boom"}, (FrameKind.ERROR, 0, None, 1, "INTERNAL")),
    ({STATUS: "503"}, (FrameKind.ERROR, 0, None, 1, ErrorCode.UNAVAILABLE)),  # no responders
    ({STATUS: "408"}, (FrameKind.OTHER, 0, None, 1, None)),  # another NATS status: not an answer
    ({STATUS: "NOT_FOUND"}, (FrameKind.ERROR, 0, None, 1, "NOT_FOUND")),  # the Go project's status pair
    ({STREAM_ACK: "10"}, (FrameKind.OTHER, 0, None, 1, None)),
]


@pytest.mark.parametrize("headers, expected", FRAMES)
def test_classify(headers: dict[str, str] | None, expected: tuple[FrameKind, int, int | None, int, str | None]) -> None:
    frame = classify(headers, "pkg.S/M")
    assert (frame.kind, frame.seq, frame.count, frame.batch, frame.error and frame.error.code) == expected
    if frame.error is not None:
        assert frame.error.method == "pkg.S/M"


@pytest.mark.parametrize(
    "headers, control",
    [
        (None, False),
        ({STREAM_ACK: "3"}, True),
        ({STREAM_HEARTBEAT: "1000"}, True),
        ({STREAM_CANCEL: "bye"}, True),
        ({STREAM_VERSION: "2", STREAM_INBOX: "_INBOX.s"}, True),  # an open message
        ({STREAM_ACK: "3", STREAM_SEQ: "1"}, False),  # data is never control
        ({STREAM_HEARTBEAT: "1000", STREAM_END: "true"}, False),
        ({"X-Mine": "1"}, False),
    ],
)
def test_is_control(headers: dict[str, str] | None, control: bool) -> None:
    assert is_control(headers) is control


@pytest.mark.parametrize(
    "text, value",
    [("0", 0), ("42", 42), ("9" * 18, int("9" * 18)), ("9" * 19, None), ("", None), (None, None), ("+1", None), ("²", None), (" 1", None)],
)
def test_parse_uint(text: str | None, value: int | None) -> None:
    assert parse_uint(text) == value


@pytest.mark.parametrize(
    "code, message, retry_after",
    [("NOT_FOUND", "no such key", None), ("RESOURCE_EXHAUSTED", "busy", 0.25), ("X" * 100, "y\r\nz" * 400, None)],
)
def test_error_headers_round_trip(code: str, message: str, retry_after: float | None) -> None:
    headers = error_headers(code, message, retry_after)
    assert all("\r" not in v and "\n" not in v for v in headers.values())
    error = error_from_headers(headers, "m")
    assert error is not None and error.code == (code if len(code) <= 64 else code[:61] + "...")
    if retry_after is not None:
        assert isinstance(error, Overloaded) and error.retry_after == retry_after and headers[RETRY_AFTER] == "250"
    else:
        assert not isinstance(error, Overloaded)


def test_user_headers_refuse_the_protocol_s() -> None:
    assert user_headers({"X-Trace": "a\nb"}) == {"X-Trace": "a b"}
    for reserved in (STREAM_SEQ, "nats-anything", "status", DEADLINE.upper()):
        with pytest.raises(ValueError):
            user_headers({reserved: "1"})
    with pytest.raises(ValueError):
        user_headers({"bad name": "1"})


def test_message_size_counts_the_header_block() -> None:
    assert message_size(10, None) == 10
    assert message_size(10, {"A": "bc"}) == len(b"NATS/1.0\r\n") + 2 + len(b"A: bc\r\n") + 10


@pytest.mark.parametrize(
    "subject, problem",
    [
        ("_INBOX.abc", None),
        ("_INBOX.a*", "not a literal"),
        ("_INBOX.a b", "not a literal"),
        ("$JS.API.STREAM.DELETE.x", "a system subject"),
        ("orders.new", "outside the allowed"),
        ("svc.inbox.1", None),  # a configured prefix
    ],
)
def test_which_inboxes_a_peer_may_name(subject: str, problem: str | None) -> None:
    why = InboxPolicy(["svc.inbox"]).check(subject)
    assert (why is None) if problem is None else (why is not None and why.startswith(problem))


# --- Call states --------------------------------------------------------------------------------


def test_the_client_s_moves() -> None:
    assert CLIENT_MOVES[CallState.OPENING] == {CallState.OPEN, CallState.FAILED}
    assert CallState.CLOSED in CLIENT_MOVES[CallState.HALF_CLOSED]
    assert CallState.OPEN not in CLIENT_MOVES[CallState.HALF_CLOSED]  # no way back
    assert not CLIENT_MOVES[CallState.CLOSED] and not CLIENT_MOVES[CallState.FAILED]


def test_the_server_s_moves() -> None:
    assert SERVER_MOVES[ServerState.OPENING] == {ServerState.SERVING, ServerState.FINISHING}
    assert SERVER_MOVES[ServerState.SERVING] == {ServerState.FINISHING}  # the outcome always goes on the wire
    assert not SERVER_MOVES[ServerState.CLOSED] and not SERVER_MOVES[ServerState.FAILED]


# --- Credit: what a sender may have unacknowledged ------------------------------------------------

# steps: ("sent", seq, size) | ("ack", seq) | ("fits", size, expected); window (messages, bytes)
CREDIT: list[tuple[str, tuple[int, int], list[tuple[Any, ...]]]] = [
    (
        "messages bound",
        (2, 1000),
        [("fits", 10, True), ("sent", 1, 10), ("sent", 2, 10), ("fits", 1, False), ("ack", 1), ("fits", 1, True)],
    ),
    (
        "bytes bound",
        (100, 100),
        [("sent", 1, 60), ("fits", 40, True), ("fits", 41, False), ("ack", 1), ("fits", 100, True)],
    ),
    ("one message always fits", (1, 10), [("fits", 10_000, True), ("sent", 1, 10_000), ("fits", 1, False)]),
    (
        "acks are cumulative, old ones ignored",
        (3, 1000),
        [("sent", 1, 1), ("sent", 2, 1), ("sent", 3, 1), ("ack", 2), ("fits", 1, True), ("ack", 1), ("sent", 4, 1), ("fits", 1, True), ("sent", 5, 1), ("fits", 1, False)],
    ),
]


@pytest.mark.parametrize("name, window, steps", CREDIT, ids=[c[0] for c in CREDIT])
def test_credit(name: str, window: tuple[int, int], steps: list[tuple[Any, ...]]) -> None:
    credit = Credit(Window(window[0], window[1], 1))
    for step in steps:
        if step[0] == "sent":
            credit.sent(step[1], step[2])
        elif step[0] == "ack":
            credit.on_ack(step[1])
        else:
            assert credit.fits(step[1]) is step[2], step


def test_credit_reports_acks_and_peaks() -> None:
    credit = Credit(Window(4, 1000, 8))
    assert credit.batch == 4  # never more per frame than the window holds
    for seq in range(1, 4):
        credit.sent(seq, 100)
    assert credit.on_ack(2) and not credit.on_ack(2) and not credit.on_ack(1)
    assert (credit.acked, credit.bytes_in_flight, credit.peak_messages, credit.peak_bytes) == (2, 100, 3, 300)
    assert credit.on_ack(3) and credit.bytes_in_flight == 0


@pytest.mark.parametrize(
    "window, sizes, acked_at",
    [
        ((4, 10_000), [1] * 8, [2, 4, 6, 8]),  # every half window of messages
        ((100, 1000), [300, 300, 10, 10], [2]),  # or of bytes
        ((1, 1), [1, 1], [1, 2]),  # at least every message
    ],
)
def test_ack_policy(window: tuple[int, int], sizes: list[int], acked_at: list[int]) -> None:
    sent: list[int] = []

    def send_ack(seq: int) -> Awaitable[None]:
        sent.append(seq)
        return None  # type: ignore[return-value]  # what a session would await

    policy = AckPolicy(Window(window[0], window[1], 1), send_ack)
    for seq, size in enumerate(sizes, 1):
        policy.consumed(seq, size)
    assert sent == acked_at
    assert NO_ACKS.consumed(1, 1) is None


# --- Batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("bodies", [[b""], [b"a"], [b"", b"x" * 300, b"yz"], [bytes(range(256))] * MAX_BATCH])
def test_batches_round_trip(bodies: list[bytes]) -> None:
    assert unpack(pack(bodies), len(bodies)) == bodies


@pytest.mark.parametrize(
    "data, count",
    [
        (b"\x05abc", 1),  # a length past the end
        (b"\x01a\x01b", 1),  # bytes left over
        (b"\x01a", 2),  # fewer than it claims
        (b"\xff" * 11, 1),  # an over-long varint
        (b"", 1),
    ],
)
def test_malformed_batches(data: bytes, count: int) -> None:
    assert unpack(data, count) is None


# --- Loss counting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sent, arrived, lost",
    [(5, 5, False), (5, 7, False), (5, 4, True), (1, 0, True), (5, None, False)],
)
def test_a_peer_s_count_against_what_arrived(sent: int, arrived: int | None, lost: bool) -> None:
    why = lost_in_transit(sent, arrived)
    assert (why is not None) is lost
    if why is not None:
        assert f"sent {sent}" in why and f"{arrived} arrived" in why


@pytest.mark.parametrize(
    "final, arrived, missing",
    [(3, 3, None), (3, 1, "2 of the 3 messages it sent"), (None, 0, None), (3, None, None)],
)
def test_what_is_missing_when_the_peer_lets_go(final: int | None, arrived: int | None, missing: str | None) -> None:
    assert missing_at_release(final, arrived) == missing


@pytest.mark.parametrize("received, count, short", [(3, 3, False), (3, None, False), (2, 3, True), (4, 3, True)])
def test_an_end_marker_s_count(received: int, count: int | None, short: bool) -> None:
    assert (short_end(received, count) is not None) is short


# --- Liveness bookkeeping ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "heard, due, now, period, moved",
    [
        (10.0, 11.0, 11.1, 0.25, 10.0),  # the timer ran on time: nothing moves
        (10.0, 11.0, 13.25, 0.25, 12.0),  # our loop stood still 2 s: not the peer's silence
        (10.0, 11.0, 11.25, 0.25, 10.0),  # late by exactly one period: on time
        (10.0, 1.0, 50.0, 0.25, 50.0),  # never beyond now
    ],
)
def test_past_stall(heard: float, due: float, now: float, period: float, moved: float) -> None:
    assert past_stall(heard, due, now, period) == pytest.approx(moved)


@pytest.mark.parametrize(
    "heard, now, progress, interval, by_clock, verdict",
    [
        (10.0, 12.0, 12.0, 1.0, False, False),
        (10.0, 13.5, 13.5, 1.0, True, True),  # silent for 3.5 intervals of what we read
        (10.0, 13.5, 12.0, 1.0, True, False),  # behind on reading: catch up before judging
        (10.0, 13.0, 13.0, 1.0, False, False),  # exactly 3 intervals: not yet
    ],
)
def test_silence_judgement(heard: float, now: float, progress: float, interval: float, by_clock: bool, verdict: bool) -> None:
    assert overdue(heard, now, interval) is by_clock
    assert silent(heard, progress, interval) is verdict
    assert silence(0.3) == "no word from the peer for 0.9 s"


def test_beat_bodies_split_at_the_limit() -> None:
    lines = [sent_line("_INBOX.a", 5), released_line("_INBOX.b", None), released_line("_INBOX.c", 7)]
    assert lines == ["_INBOX.a s5", "_INBOX.b e", "_INBOX.c e7"]
    assert beat_bodies(lines, 1000) == [b"_INBOX.a s5\n_INBOX.b e\n_INBOX.c e7"]
    assert beat_bodies(lines, 20) == [b"_INBOX.a s5", b"_INBOX.b e", b"_INBOX.c e7"]
    assert beat_bodies([], 20) == [b""]  # an idle beat: empty
    assert beat_lines(b"\n".join(beat_bodies(lines, 1000))) == [("_INBOX.a", "s5"), ("_INBOX.b", "e"), ("_INBOX.c", "e7")]


@pytest.mark.parametrize(
    "data, lines",
    [
        (b"", []),
        (b"\xff\xfe", []),
        (b"a s1 s2", [("a", "s1")]),  # one entry per line: the rest is not read
        (b"a " + b"s1 " * 20, [("a", "s1")]),
        (b"a\n\nb e\n c", [("b", "e"), ("", "c")]),
        (b"x s1\n" * (BEAT_BODY_LIMIT // 5 + 1), []),  # larger than a sender of ours writes: dropped whole
    ],
)
def test_beat_lines(data: bytes, lines: list[tuple[str, str]]) -> None:
    assert beat_lines(data) == lines


def test_beat_lines_read_a_full_body() -> None:
    body = b"\n".join([b"x s1"] * (BEAT_BODY_LIMIT // 5))  # as many lines as a body of ours can hold
    assert len(body) <= BEAT_BODY_LIMIT and len(beat_lines(body)) == BEAT_BODY_LIMIT // 5 <= MAX_ENTRIES


@pytest.mark.parametrize(
    "field, entry",
    [("s5", (SENT, 5)), ("e", (RELEASED, None)), ("e12", (RELEASED, 12)), ("s", None), ("sx", None), ("e-1", None), ("q1", None), ("", None)],
)
def test_beat_entry(field: str, entry: tuple[str, int | None] | None) -> None:
    assert beat_entry(field) == entry


def test_recent_replies_are_bounded_and_forget_the_oldest_first() -> None:
    from betterproto_nats.core.recent import RecentReplies

    recent = RecentReplies(size=8)
    for i in range(4):
        recent.add(f"r{i}")
    assert "r0" in recent and len(recent) == 4  # (a full half became the older generation)
    for i in range(4, 8):
        recent.add(f"r{i}")
    assert "r0" not in recent and "r4" in recent and len(recent) == 4  # the oldest half forgotten
    recent.add("r8")
    recent.discard("r8")
    recent.discard("r5")
    assert "r8" not in recent and "r5" not in recent and "r6" in recent
    for i in range(10_000):
        recent.add(f"x{i}")
    assert len(recent) <= 8
