"""The protocol core on plain inputs, no event loop: v1 and v2 negotiation, a stream's receiving rules,
call states, credit, batches, loss counting and liveness bookkeeping. Tables, each in milliseconds."""

from __future__ import annotations

from typing import Any, Awaitable

import pytest

from betterproto_nats.core.sender import Sender, data_headers, refused_end
from betterproto_nats.core.errors import ErrorCode, Overloaded, RpcError
from betterproto_nats.core.frames import ack_headers, cancel_headers, ends_stream, heartbeat_headers, is_control, read_control
from betterproto_nats.core.headers import (
    BLOB_SIZE,
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
    STREAM_SENT,
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
    REPEAT,
    SENDING,
    BeatLedger,
    read_beat,
    beat_headers,
    beat_sender,
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
    named_inbox,
    server_terms,
)
from betterproto_nats.core.states import CLIENT_MOVES, SERVER_MOVES, CallState, ServerState
from betterproto_nats.core.subjects import InboxPolicy
from betterproto_nats.core.batch import pack, unpack
from betterproto_nats.core.receiver import END, Data, End, Failed, Receiver, ReceiverState, batch_size, stream_positions

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


# --- Receiving: a stream's rules (core/receiver.py) --------------------------------------------------

SEQ, BATCH, END_, COUNT = STREAM_SEQ, STREAM_BATCH, STREAM_END, STREAM_COUNT
Frame = tuple[dict[str, str] | None, bytes]


def _outcome(event: Data | End | Failed | None) -> tuple[Any, ...]:
    if isinstance(event, Data):
        return ("data", [event.body, *(event.more or [])])
    if event is END:
        return ("end",)
    if isinstance(event, Failed):
        return ("failed", event.error.code)
    return ("skip",)


D, E, S = "data", ("end",), ("skip",)
RECEIVING, ENDED, FAILED = ReceiverState.RECEIVING, ReceiverState.ENDED, ReceiverState.FAILED

# (name, frames fed in order, what each gives, the state after the last, peer_done after the last)
RECEIVER: list[tuple[str, list[Frame], list[tuple[Any, ...]], ReceiverState, bool]] = [
    ("in order", [({SEQ: "1"}, b"a"), ({SEQ: "2"}, b"b"), ({END_: "true", COUNT: "2"}, b"")], [(D, [b"a"]), (D, [b"b"]), E], ENDED, True),
    ("a batch", [({SEQ: "1", BATCH: "3"}, pack([b"a", b"b", b"c"])), ({SEQ: "4"}, b"d"), ({END_: "true", COUNT: "4"}, b"")], [(D, [b"a", b"b", b"c"]), (D, [b"d"]), E], ENDED, True),
    ("a batch of one", [({SEQ: "1", BATCH: "1"}, pack([b"a"]))], [(D, [b"a"])], RECEIVING, False),
    ("a gap", [({SEQ: "1"}, b"a"), ({SEQ: "3"}, b"c")], [(D, [b"a"]), ("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a repeat", [({SEQ: "1"}, b"a"), ({SEQ: "1"}, b"a")], [(D, [b"a"]), ("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a gap after a batch", [({SEQ: "1", BATCH: "2"}, pack([b"a", b"b"])), ({SEQ: "2"}, b"b")], [(D, [b"a", b"b"]), ("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a short end", [({SEQ: "1"}, b"a"), ({END_: "true", COUNT: "2"}, b"")], [(D, [b"a"]), ("failed", ErrorCode.DATA_LOSS)], FAILED, True),
    ("an end that counts more", [({END_: "true", COUNT: "1"}, b"")], [("failed", ErrorCode.DATA_LOSS)], FAILED, True),
    ("an end without count", [({SEQ: "1"}, b"a"), ({END_: "true"}, b"")], [(D, [b"a"]), E], ENDED, True),
    ("a malformed count: as if absent", [({END_: "true", COUNT: "five"}, b"")], [E], ENDED, True),
    ("an end with the error pair", [({END_: "true", ERROR_CODE: "NOT_FOUND", ERROR: "gone"}, b"")], [("failed", "NOT_FOUND")], FAILED, True),
    ("a malformed seq", [({SEQ: "x"}, b"a")], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a negative seq", [({SEQ: "-1"}, b"a")], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a seq beyond 63 bits", [({SEQ: "1" * 19}, b"a")], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a batch of none", [({SEQ: "1", BATCH: "0"}, b"")], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a batch beyond MAX_BATCH", [({SEQ: "1", BATCH: str(MAX_BATCH + 1)}, b"")], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("a batch that holds fewer", [({SEQ: "1", BATCH: "2"}, pack([b"a"]))], [("failed", ErrorCode.DATA_LOSS)], FAILED, False),
    ("only true ends", [({END_: "false", SEQ: "1"}, b"a")], [(D, [b"a"])], RECEIVING, False),
    ("an error answer", [({ERROR_CODE: "INTERNAL", ERROR: "boom"}, b"")], [("failed", "INTERNAL")], FAILED, True),
    ("no responders", [({STATUS: "503"}, b"")], [("failed", ErrorCode.UNAVAILABLE)], FAILED, True),
    ("another NATS status: skipped", [({STATUS: "408"}, b"")], [S], RECEIVING, False),
    ("the Go project's status pair", [({STATUS: "NOT_FOUND"}, b"")], [("failed", "NOT_FOUND")], FAILED, True),
    ("control and bare messages: skipped", [({STREAM_ACK: "10"}, b""), (None, b"x"), ({}, b"")], [S, S, S], RECEIVING, False),
    ("nothing after the end", [({END_: "true"}, b""), ({SEQ: "1"}, b"a")], [E, S], ENDED, True),
    ("drained after a failure: the peer's end still counts", [({SEQ: "2"}, b"b"), ({SEQ: "3"}, b"c"), ({END_: "true"}, b"")], [("failed", ErrorCode.DATA_LOSS), S, S], FAILED, True),
]


@pytest.mark.parametrize("name, frames, outcomes, state, peer_done", RECEIVER, ids=[r[0] for r in RECEIVER])
def test_receiver(name: str, frames: list[Frame], outcomes: list[tuple[Any, ...]], state: ReceiverState, peer_done: bool) -> None:
    receiver = Receiver("pkg.S/M")
    assert [_outcome(receiver.feed(headers, body)) for headers, body in frames] == outcomes
    assert (receiver.state, receiver.peer_done) == (state, peer_done)
    assert receiver.finished is (state is not RECEIVING)
    if receiver.error is not None:
        assert receiver.error.method == "pkg.S/M"


@pytest.mark.parametrize(
    "frames, error, stops",
    [
        ([], None, False),
        ([({END_: "true"}, b"")], None, True),  # its end marker
        ([({ERROR_CODE: "INTERNAL"}, b"")], None, True),  # an error answer
        ([({SEQ: "2"}, b"")], None, False),  # we failed it: it may still be sending
        ([], RpcError(ErrorCode.DEADLINE_EXCEEDED, "late"), True),  # the deadline: the peer knows it too
    ],
)
def test_when_the_peer_stops_by_itself(frames: list[Frame], error: RpcError | None, stops: bool) -> None:
    receiver = Receiver()
    for headers, body in frames:
        receiver.feed(headers, body)
    if error is not None:
        receiver.fail(error)
    assert receiver.peer_stops is stops


def test_receiver_keeps_the_peer_s_first_headers() -> None:
    receiver = Receiver()
    receiver.feed({SEQ: "1", "X-Trace": "t", BLOB_SIZE: "300", ERROR: "not a caller's"}, b"a")
    receiver.feed({SEQ: "2", "X-Later": "no"}, b"b")
    assert (receiver.headers, receiver.blob_size) == ({"X-Trace": "t"}, 300)


@pytest.mark.parametrize(
    "window, sizes, acked_at",
    [
        ((4, 10_000), [1] * 8, [2, 4, 6, 8]),  # every half window of messages
        ((100, 1000), [300, 300, 10, 10], [2]),  # or of bytes
        ((1, 1), [1, 1], [1, 2]),  # at least every message
        (None, [1] * 4, []),  # v1: no acks
    ],
)
def test_acks_due(window: tuple[int, int] | None, sizes: list[int], acked_at: list[int]) -> None:
    receiver = Receiver()
    if window is not None:
        receiver.acknowledge(Window(window[0], window[1], 1))
    due = [receiver.consumed(size) for size in sizes]
    assert [seq for seq in due if seq is not None] == acked_at
    assert (receiver.received, receiver.bytes_received) == (len(sizes), sum(sizes))


@pytest.mark.parametrize(
    "headers, positions",
    [
        (None, 0),
        ({STREAM_ACK: "1"}, 0),
        ({STATUS: "503"}, 0),
        ({SEQ: "1"}, 1),
        ({SEQ: "1", BATCH: "7"}, 7),
        ({SEQ: "1", BATCH: "0"}, 1),  # malformed: one (the rules fail it)
        ({SEQ: "1", BATCH: str(MAX_BATCH + 1)}, 1),  # one strictness with the rules
        ({END_: "true", COUNT: "9"}, 1),
    ],
)
def test_stream_positions(headers: dict[str, str] | None, positions: int) -> None:
    assert stream_positions(headers) == positions


@pytest.mark.parametrize("text, size", [("1", 1), (str(MAX_BATCH), MAX_BATCH), (str(MAX_BATCH + 1), None), ("0", None), ("x", None), (None, None)])
def test_batch_size(text: str | None, size: int | None) -> None:
    assert batch_size(text) == size


# headers -> (ack, sent, cancel, code) or None
CONTROL_MESSAGES: list[tuple[dict[str, str] | None, tuple[int | None, int | None, str | None, str] | None]] = [
    ({STREAM_ACK: "10"}, (10, None, None, ErrorCode.CANCELLED)),
    ({STREAM_ACK: "ten"}, (None, None, None, ErrorCode.CANCELLED)),  # malformed: as if absent
    ({STREAM_HEARTBEAT: "1000", STREAM_SENT: "5"}, (None, 5, None, ErrorCode.CANCELLED)),
    ({STREAM_CANCEL: "bye"}, (None, None, "bye", ErrorCode.CANCELLED)),
    ({STREAM_CANCEL: "lost", ERROR_CODE: ErrorCode.DATA_LOSS}, (None, None, "lost", ErrorCode.DATA_LOSS)),
    ({STREAM_CANCEL: "x", ERROR_CODE: "INTERNAL"}, (None, None, "x", ErrorCode.CANCELLED)),  # only DATA_LOSS is taken
    ({STREAM_CANCEL: "y" * 1000}, (None, None, "y" * 253 + "...", ErrorCode.CANCELLED)),  # clipped
    ({STREAM_ACK: "3", SEQ: "1"}, None),  # data is never control
    (None, None),
]


@pytest.mark.parametrize("headers, expected", CONTROL_MESSAGES)
def test_read_control(headers: dict[str, str] | None, expected: tuple[int | None, int | None, str | None, str] | None) -> None:
    control = read_control(headers)
    assert (None if control is None else (control.ack, control.sent, control.cancel, control.code)) == expected


@pytest.mark.parametrize(
    "headers, ends",
    [
        (None, False),
        ({SEQ: "1"}, False),
        ({SEQ: "1", BATCH: "3"}, False),
        ({SEQ: "x"}, True),  # the rules fail on it
        ({SEQ: "1", BATCH: "0"}, True),
        ({END_: "true"}, True),
        ({END_: "false", SEQ: "1"}, False),
        ({ERROR_CODE: "INTERNAL"}, True),
        ({STATUS: "408"}, False),
        ({STREAM_ACK: "1"}, False),
    ],
)
def test_ends_stream(headers: dict[str, str] | None, ends: bool) -> None:
    assert ends_stream(headers) is ends


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


# --- Sending: a stream's rules (core/sender.py): numbering, the window, the end marker ----------

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
def test_sender_window(name: str, window: tuple[int, int], steps: list[tuple[Any, ...]]) -> None:
    sender = Sender(Window(window[0], window[1], 1))
    for step in steps:
        if step[0] == "sent":
            assert sender.add(step[2]) == step[1]
        elif step[0] == "ack":
            sender.on_ack(step[1])
        else:
            assert sender.fits(step[1]) is step[2], step


def test_sender_reports_acks_and_peaks() -> None:
    sender = Sender(Window(4, 1000, 8))
    assert sender.batch == 4  # never more per frame than the window holds
    for seq in range(1, 4):
        sender.add(100)
    assert sender.on_ack(2) and not sender.on_ack(2) and not sender.on_ack(1)
    assert (sender.acked, sender.bytes_in_flight, sender.peak_messages, sender.peak_bytes) == (2, 100, 3, 300)
    assert sender.on_ack(3) and sender.bytes_in_flight == 0


def test_a_sender_without_window_counts_only() -> None:
    sender = Sender()
    assert [sender.add(10) for _ in range(3)] == [1, 2, 3] and sender.batch == 1
    assert sender.fits(10**9) and (sender.sent, sender.bytes_sent, sender.peak_messages) == (3, 30, 0)
    sender.limit(Window(1, 10, 4))  # v2 confirmed later: counted from now on
    assert sender.add(5) == 4 and not sender.fits(1) and sender.batch == 1


@pytest.mark.parametrize(
    "first, count, headers",
    [(1, 1, {SEQ: "1"}), (7, 3, {SEQ: "7", BATCH: "3"})],
)
def test_data_headers(first: int, count: int, headers: dict[str, str]) -> None:
    assert data_headers(first, count) == headers


# (sent, error, the handler's first headers, max_payload) -> the end marker's headers
END_MARKERS: list[tuple[int, RpcError | None, dict[str, str], int, dict[str, str]]] = [
    (3, None, {}, 1 << 20, {END_: "true", COUNT: "3"}),
    (0, None, {"X-Id": "7"}, 1 << 20, {END_: "true", COUNT: "0", "X-Id": "7"}),
    (2, RpcError("NOT_FOUND", "gone"), {}, 1 << 20, {END_: "true", COUNT: "2", ERROR_CODE: "NOT_FOUND", ERROR: "gone"}),
    (1, None, {"X-Big": "x" * 200}, 150, {END_: "true", COUNT: "1", ERROR_CODE: ErrorCode.RESOURCE_EXHAUSTED,
     ERROR: "the end marker's headers exceed the server's max_payload of 150"}),
]


@pytest.mark.parametrize("sent, error, first, max_payload, headers", END_MARKERS)
def test_end_marker(sent: int, error: RpcError | None, first: dict[str, str], max_payload: int, headers: dict[str, str]) -> None:
    sender = Sender()
    for _ in range(sent):
        sender.add(1)
    assert sender.end(error, first, max_payload) == headers and sender.ended


def test_refused_end() -> None:
    refusal = error_headers(ErrorCode.RESOURCE_EXHAUSTED, "busy", 0.25)
    assert refused_end(refusal) == {END_: "true", COUNT: "0", **refusal}


# --- Control messages written (read: test_read_control) ---------------------------------------------


def test_control_headers_round_trip() -> None:
    ack, beat, cancel = read_control(ack_headers(12)), read_control(heartbeat_headers(500, 7)), read_control(cancel_headers("x\r\ny", True))
    assert ack is not None and ack.ack == 12
    assert beat is not None and beat.sent == 7 and heartbeat_headers(500, None) == {STREAM_HEARTBEAT: "500"}
    assert cancel is not None and (cancel.cancel, cancel.code) == ("x y", ErrorCode.DATA_LOSS)  # no CR/LF travels
    assert cancel_headers("bye") == {STREAM_CANCEL: "bye"}


@pytest.mark.parametrize(
    "headers, sender",
    [(None, None), ({}, None), (beat_headers(250, "_INBOX.p"), ("_INBOX.p", 250)), ({STREAM_PEER: "p", STREAM_HEARTBEAT: "x"}, ("p", 0)), ({STREAM_HEARTBEAT: "9"}, ("", 9))],
)
def test_beat_sender(headers: dict[str, str] | None, sender: tuple[str, int] | None) -> None:
    assert beat_sender(headers) == sender


@pytest.mark.parametrize("headers, inbox", [(None, ""), ({STREAM_INBOX: "_INBOX.s"}, "_INBOX.s"), ({"X": "1"}, "")])
def test_named_inbox(headers: dict[str, str] | None, inbox: str) -> None:
    assert named_inbox(headers) == inbox


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


# --- The beat ledger: what shared beats say (core/heartbeats.py) ----------------------------------

# steps: ("sent", key) | ("release", key, final) | ("beat", expected lines); counts: key -> (name, sent)
LEDGER: list[tuple[str, dict[str, tuple[str, int | None]], list[tuple[Any, ...]]]] = [
    ("a stream still sending is not counted", {"a": ("A", 5)}, [("sent", "a"), ("beat", []), ("sent", "a"), ("beat", [])]),
    (
        "a quiet stream is counted in REPEAT beats, then no more",
        {"a": ("A", 5)},
        [("sent", "a"), ("beat", [])] + [("beat", ["A s5"])] * REPEAT + [("beat", [])],
    ),
    ("nothing handed over yet: no line", {"a": ("A", 0)}, [("sent", "a"), ("beat", []), ("beat", [])]),
    ("a stream that sends nothing: dropped", {"a": ("A", None)}, [("sent", "a"), ("beat", []), ("beat", []), ("beat", [])]),
    (
        "a release is said in REPEAT beats, and ends the counting",
        {"a": ("A", 5)},
        [("sent", "a"), ("release", "a", 5)] + [("beat", ["A e5"])] * REPEAT + [("beat", [])],
    ),
    ("a release without count", {}, [("release", "b", None)] + [("beat", ["b e"])] * REPEAT),
]


@pytest.mark.parametrize("name, counts, steps", LEDGER, ids=[c[0] for c in LEDGER])
def test_beat_ledger(name: str, counts: dict[str, tuple[str, int | None]], steps: list[tuple[Any, ...]]) -> None:
    ledger: BeatLedger[str] = BeatLedger()
    for step in steps:
        if step[0] == "sent":
            ledger.counting[step[1]] = SENDING
        elif step[0] == "release":
            ledger.release(step[1], counts.get(step[1], (step[1], None))[0], step[2])
        else:
            assert ledger.lines(counts.__getitem__) == step[1], step
    assert ledger.empty


def test_read_beat() -> None:
    assert read_beat(b"A s5\nB e\nC e7\nD x1\nE s\nF\nG s-1") == [("A", SENT, 5), ("B", RELEASED, None), ("C", RELEASED, 7)]
    assert read_beat(b"A s5\xff") == []  # not ASCII: dropped whole


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
