"""Differential tests of the generated codecs, with hypothesis-generated messages of the fixtures:
byte for byte against google protobuf (upb, compiled from the same .proto files here) and object for
object against betterproto2's own parser, in both directions; truncated and corrupted bodies get the
same accept/reject decision as google protobuf.

Deliberate differences (docs/PERFORMANCE.md, "The generated codec"), allowed for below and nowhere else:
- A Timestamp or Duration field at zero is generated only as a oneof member (the generators' choice,
  kept from the betterproto 2.0.0b7 days: presence is now `is not None`, so a zero is written).
- Timestamps and Durations keep microseconds (datetime, timedelta): generated nanos are whole micros.
- A Timestamp or Duration beyond datetime's or timedelta's range is refused; google protobuf keeps it.
- Messages with no generated codec (proto2 ones, deprecated ones) are parsed by betterproto2 after
  a framing check: what they accept is betterproto2's decision.
"""

from __future__ import annotations

import atexit
import copy
import importlib
import math
import shutil
import struct
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import betterproto2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from betterproto_nats.encoding import protobuf as wire
from betterproto_nats.encoding.codec import PROTO
from betterproto_nats.core.errors import RpcError

ROOT = Path(__file__).resolve().parent.parent
PROTOS = [
    "fixtures/codec/v1/codec.proto",
    "fixtures/common/v1/common.proto",
    "fixtures/hard/v1/hard.proto",
    "natsmicro/options.proto",
    "streaming/v1/stream_demo.proto",
]


def _compile_google() -> dict[str, Any]:
    """google protobuf's classes for the fixtures, by full name (protoc --python_out, upb)."""
    out = Path(tempfile.mkdtemp(prefix="codec-pb2-"))
    atexit.register(shutil.rmtree, out, True)
    compiled = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", *PROTOS],
        capture_output=True,
        text=True,
    )
    assert compiled.returncode == 0, compiled.stderr
    sys.path.insert(0, str(out))
    try:
        modules = [importlib.import_module(p.removesuffix(".proto").replace("/", ".") + "_pb2") for p in PROTOS]
    finally:
        sys.path.remove(str(out))
    classes: dict[str, Any] = {}

    def add(container: Any) -> None:
        for cls in vars(container).values():
            if isinstance(cls, type) and hasattr(cls, "DESCRIPTOR") and hasattr(cls.DESCRIPTOR, "fields"):
                classes[cls.DESCRIPTOR.full_name] = cls
                add(cls)

    for module in modules:
        add(module)
    return classes


GOOGLE = _compile_google()
import gen.fixtures.codec.v1 as codec_v1  # noqa: E402
import gen.fixtures.common.v1 as common_v1  # noqa: E402
import gen.fixtures.hard.v1 as hard_v1  # noqa: E402
import gen.streaming.v1 as streaming_v1  # noqa: E402

OURS = {"fixtures.codec.v1": codec_v1, "fixtures.common.v1": common_v1, "fixtures.hard.v1": hard_v1, "streaming.v1": streaming_v1}
TYPES = [
    "fixtures.codec.v1.Scalars",
    "fixtures.codec.v1.Repeated",
    "fixtures.codec.v1.Optionals",
    "fixtures.codec.v1.Oneofs",
    "fixtures.codec.v1.Maps",
    "fixtures.codec.v1.WellKnown",
    "fixtures.codec.v1.Tree",
    "fixtures.codec.v1.Everything",
    "fixtures.hard.v1.Outer",
    "streaming.v1.PingResponse",
]


def ours(full_name: str) -> type[betterproto2.Message]:
    package, _, name = full_name.rpartition(".")
    while package not in OURS:  # nested: fixtures.hard.v1.Outer.Inner -> OuterInner
        package, _, outer = package.rpartition(".")
        name = outer + name
    cls: type[betterproto2.Message] = getattr(OURS[package], name)
    return cls


# --- google protobuf messages from descriptors ---------------------------------------------------------

F = next(iter(GOOGLE.values())).DESCRIPTOR.fields[0].__class__
INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}
SPECIAL_FLOATS = st.sampled_from([0.0, -0.0, math.inf, -math.inf, math.nan, 1.0])
MICROS = 1_000_000
TIMESTAMP_SECONDS = (-62135596800, 253402300799)  # datetime's range, in UTC
DURATION_SECONDS = 315576000000  # protobuf's range, well inside timedelta's


def small_ints(low: int, high: int) -> st.SearchStrategy[int]:
    """Whole range, with the small values (one-byte varints, zero) that real messages are made of."""
    return st.one_of(st.integers(max(low, -3), min(high, 300)), st.integers(low, high), st.sampled_from([low, high]))


def scalar(field: Any) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in INT_RANGES:
        return small_ints(*INT_RANGES[kind])
    if kind == F.TYPE_BOOL:
        return st.booleans()
    if kind == F.TYPE_FLOAT:
        return st.one_of(st.floats(width=32), SPECIAL_FLOATS)
    if kind == F.TYPE_DOUBLE:
        return st.one_of(st.floats(), SPECIAL_FLOATS)
    if kind == F.TYPE_STRING:
        return st.one_of(st.text(max_size=8), st.text(min_size=120, max_size=160))
    if kind == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=8), st.binary(min_size=120, max_size=300))
    if kind == F.TYPE_ENUM:  # open enums: unknown numbers too
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), small_ints(-(2**31), 2**31 - 1))
    raise AssertionError(field.full_name)


def is_zero_time(message: Any) -> bool:
    return message.DESCRIPTOR.full_name in ("google.protobuf.Timestamp", "google.protobuf.Duration") and not (
        message.seconds or message.nanos
    )


@st.composite
def google_message(draw: st.DrawFn, descriptor: Any, depth: int = 0) -> Any:
    message = GOOGLE[descriptor.full_name]() if descriptor.full_name in GOOGLE else _wkt(descriptor)()
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = draw(st.integers(*TIMESTAMP_SECONDS))
        message.nanos = draw(st.integers(0, MICROS - 1)) * 1000
        return message
    if name == "google.protobuf.Duration":
        micros = draw(st.one_of(st.integers(-3 * MICROS, 3 * MICROS), st.integers(-DURATION_SECONDS * MICROS, DURATION_SECONDS * MICROS)))
        seconds, rest = divmod(abs(micros), MICROS)
        sign = -1 if micros < 0 else 1
        message.seconds, message.nanos = sign * seconds, sign * rest * 1000
        return message
    chosen = {}
    for oneof in descriptor.oneofs:
        if not oneof.name.startswith("_"):  # a real oneof, not proto3 optional's synthetic one
            chosen[oneof.name] = draw(st.sampled_from([None, *oneof.fields]))
    for field in descriptor.fields:
        oneof = field.containing_oneof
        in_oneof = oneof is not None and not oneof.name.startswith("_")
        if in_oneof and chosen[oneof.name] is not field:
            continue
        if not in_oneof and not draw(st.booleans()):
            continue
        if field.type == F.TYPE_MESSAGE and depth >= 3 and not field.message_type.full_name.startswith("google."):
            continue
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields
            keys = draw(st.lists(scalar(key_field), max_size=4, unique=True))
            target = getattr(message, field.name)
            for key in keys:
                if value_field.type == F.TYPE_MESSAGE:
                    target[key].CopyFrom(draw(google_message(value_field.message_type, depth + 1)))
                else:
                    target[key] = draw(scalar(value_field))
        elif field.type == F.TYPE_MESSAGE:
            count = draw(st.integers(0, 3)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(google_message(field.message_type, depth + 1))
                if field.is_repeated:
                    getattr(message, field.name).add().CopyFrom(value)
                elif in_oneof or not is_zero_time(value):
                    getattr(message, field.name).CopyFrom(value)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(scalar(field), max_size=5)))
        else:
            setattr(message, field.name, draw(scalar(field)))
    return message


def _wkt(descriptor: Any) -> Any:
    from google.protobuf import symbol_database

    return symbol_database.Default().GetSymbol(descriptor.full_name)


# --- Comparing objects --------------------------------------------------------------------------------


def outcome(call: Callable[[], Any]) -> str:
    """What a call returns (repr: NaN equals NaN) or raises."""
    try:
        return repr(call())
    except Exception as error:  # betterproto's to_dict raises on unknown enum numbers
        return type(error).__name__


ZERO_DOUBLE = struct.pack("<d", 0.0)


def plain(value: Any) -> Any:
    """What a value means to betterproto's `==`: unset and default fields left out (but a chosen
    oneof member or a set `optional` kept), floats as bits so that NaN equals NaN."""
    if isinstance(value, betterproto2.Message):
        meta = value._betterproto
        fields = vars(value)
        meaning = {}
        for name in meta.sorted_field_names:
            field = meta.meta_by_field_name[name]
            raw = fields[name]
            if raw is None:
                continue
            meant = plain(raw)
            if field.group or field.optional or not is_default(meant):
                meaning[name] = meant
        return meaning
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, betterproto2.Enum):
        return int(value)
    return value


def is_default(meant: Any) -> bool:
    return meant in (0, "", b"", ZERO_DOUBLE, wire.EPOCH, timedelta(0)) or meant == [] or meant == {}


def assert_same(got: Any, want: Any, path: str = "") -> None:
    """Identical betterproto2 objects: the same `__dict__` keys in the same order, None where
    betterproto2 has it, private entries included, floats bit for bit; nested messages alike."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__} ({got!r} != {want!r})"
    if isinstance(want, betterproto2.Message):
        got_fields, want_fields = vars(got), vars(want)
        assert list(got_fields) == list(want_fields), path
        for name in want_fields:
            assert_same(got_fields[name], want_fields[name], f"{path}.{name}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, dict):
        assert list(got) == list(want), path
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, float):
        assert struct.pack("<d", got) == struct.pack("<d", want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, betterproto2.Enum):
        assert (got.value, got.name) == (want.value, want.name), f"{path}: {got!r} != {want!r}"
    elif want is None:
        assert got is None, f"{path}: {got!r} is not None"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


@st.composite
def unknown_fields(draw: st.DrawFn) -> bytes:
    """Fields no fixture message knows (numbers 3000-3999; no groups, which betterproto cannot read)."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 3))):
        number, wire_type = draw(st.integers(3000, 3999)), draw(st.sampled_from([0, 1, 2, 5]))
        out += wire.varint(number << 3 | wire_type)
        if wire_type == 0:
            out += wire.varint(draw(st.integers(0, 2**64 - 1)))
        elif wire_type == 2:
            value = draw(st.binary(max_size=10))
            out += wire.varint(len(value)) + value
        else:
            out += draw(st.binary(min_size=8 if wire_type == 1 else 4, max_size=8 if wire_type == 1 else 4))
    return bytes(out)


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.parametrize("full_name", TYPES)
@SETTINGS
@given(data=st.data())
def test_decode_and_encode_match_google_and_betterproto2(full_name: str, data: st.DataObject) -> None:
    cls = ours(full_name)
    assert cls in wire.DECODERS, f"{full_name} has no generated codec"
    google = data.draw(google_message(GOOGLE[full_name].DESCRIPTOR))
    body = google.SerializeToString(deterministic=True)

    decoded = PROTO.decode(cls, body)
    reference = cls.parse(body)
    built = copy.deepcopy(reference)  # as users build objects, before any read
    assert_same(decoded, reference)  # betterproto2's objects, private state included
    assert outcome(decoded.to_dict) == outcome(reference.to_dict)
    assert PROTO.encode(decoded) == body  # google protobuf's bytes
    assert PROTO.encode(reference) == body

    # Unknown fields, before and after the known ones: kept as betterproto2 keeps them, written last.
    before, after = data.draw(unknown_fields()), data.draw(unknown_fields())
    decoded = PROTO.decode(cls, before + body + after)
    assert_same(decoded, cls.parse(before + body + after))
    assert PROTO.encode(decoded) == body + before + after
    assert GOOGLE[full_name].FromString(before + body + after).SerializeToString(deterministic=True) == body + before + after

    # The other direction, from objects built by users: betterproto2 reads back what they hold.
    encoded = PROTO.encode(built)
    assert plain(cls.parse(encoded)) == plain(built)
    again = GOOGLE[full_name]()
    again.ParseFromString(encoded)


# --- Truncated and corrupted bodies -------------------------------------------------------------------


def google_accepts(full_name: str, body: bytes) -> bool:
    try:
        GOOGLE[full_name]().ParseFromString(body)
    except Exception:
        return False
    return True


def ours_accepts(cls: type[betterproto2.Message], body: bytes) -> tuple[bool, str]:
    """(accepted, why a refusal may differ from google protobuf's decision: "" when it may not)."""
    parsed_by_betterproto = []
    original = betterproto2.Message.__dict__["parse"]  # a classmethod

    def parse(cls: Any, data: bytes) -> Any:
        parsed_by_betterproto.append(cls.__name__)
        return original.__func__(cls, data)

    betterproto2.Message.parse = classmethod(parse)  # type: ignore[method-assign,assignment]
    try:
        wire.DECODERS[cls](body, 0, len(body), 0)
    except OverflowError:
        return False, "beyond datetime's or timedelta's range"
    except Exception:
        return False, "parsed by betterproto" if parsed_by_betterproto else ""
    finally:
        betterproto2.Message.parse = original  # type: ignore[method-assign]
    return True, "parsed by betterproto" if parsed_by_betterproto else ""


def check_same_decision(full_name: str, cls: type[betterproto2.Message], body: bytes) -> None:
    accepted, excuse = ours_accepts(cls, body)
    if accepted != google_accepts(full_name, body) and not excuse:
        raise AssertionError(f"{full_name}: ours {'accepts' if accepted else 'refuses'} {body.hex()}, google does not")
    if not accepted:
        with pytest.raises(RpcError) as refused:
            PROTO.decode(cls, body)
        assert refused.value.code == "INVALID_ARGUMENT" and len(refused.value.message) <= 200


@pytest.mark.parametrize("full_name", TYPES)
@SETTINGS
@given(data=st.data())
def test_truncated_and_corrupted_bodies_get_googles_decision(full_name: str, data: st.DataObject) -> None:
    cls = ours(full_name)
    body = data.draw(google_message(GOOGLE[full_name].DESCRIPTOR)).SerializeToString(deterministic=True)
    for cut in range(len(body)) if len(body) < 300 else data.draw(st.lists(st.integers(0, len(body) - 1), max_size=30)):
        check_same_decision(full_name, cls, body[:cut])
    if not body:
        return
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(body) - 1))
        how = data.draw(st.sampled_from(["set", "insert", "delete", "flip"]))
        byte = data.draw(st.integers(0, 255))
        if how == "set":
            corrupted = body[:pos] + bytes([byte]) + body[pos + 1 :]
        elif how == "insert":
            corrupted = body[:pos] + bytes([byte]) + body[pos:]
        elif how == "delete":
            corrupted = body[:pos] + body[pos + 1 :]
        else:
            corrupted = body[:pos] + bytes([body[pos] ^ 1 << data.draw(st.integers(0, 7))]) + body[pos + 1 :]
        check_same_decision(full_name, cls, corrupted)




@pytest.mark.parametrize(
    "full_name, body",
    [
        ("fixtures.codec.v1.Maps", "5a020801"),  # a map entry without its value: the default message
        ("fixtures.codec.v1.Maps", "5a021200"),  # ... without its key
        ("fixtures.codec.v1.Maps", "0a060a01610a0162"),  # a key given twice in one entry: the last one
        ("fixtures.codec.v1.Maps", "0a030a0161" "0a030a0161"),  # one key twice: one entry
        ("fixtures.codec.v1.Oneofs", "0801" "3201" "61" "0802"),  # a oneof switching members
        ("fixtures.codec.v1.Oneofs", "6200" "6801"),  # members of two oneofs
        ("fixtures.codec.v1.Everything", "0a020801" "0a021001"),  # a message field twice: the last one
        ("fixtures.codec.v1.Scalars", "f80101" "0801" "fd0100000000" "1002"),  # unknown fields between
        ("fixtures.codec.v1.Optionals", "0800" "4000"),  # optional fields set to their defaults
        ("fixtures.codec.v1.WellKnown", "2200" "5200"),  # wrappers present but empty: 0 and ""
        ("fixtures.codec.v1.Repeated", "0801" "0802"),  # packable elements one by one
        ("fixtures.codec.v1.Tree", ""),
    ],
)
def test_hand_written_bodies_decode_as_betterproto2_decodes_them(full_name: str, body: str) -> None:
    cls = ours(full_name)
    data = bytes.fromhex(body)
    want = cls.parse(data)
    if full_name == "fixtures.codec.v1.Maps" and body == "5a020801":
        # betterproto2 0.10 reads a map entry without its message value as None; protobuf (and ours)
        # as the default message
        assert want.scalars == {-1: None}
        want.scalars = {-1: codec_v1.Scalars()}
    if full_name == "fixtures.codec.v1.Oneofs" and body == "08013201610802":
        # betterproto2 0.10 keeps every member of a oneof it read; protobuf (and ours) only the last
        assert (want.i32, want.text) == (2, "a") and GOOGLE[full_name].FromString(data).WhichOneof("value") == "i32"
        want.text = None
    assert_same(PROTO.decode(cls, data), want)
    assert google_accepts(full_name, data)


@pytest.mark.parametrize(
    "body",
    [
        "fb01" "0801" "fc01",  # a group among unknown fields: kept
        "fb01" "0801" "f401",  # ended by another field number
        "fc01",  # an end-group key alone
        "fb01" "0801",  # never ended
        "0b" "0801" "0c",  # a group where field 1 (int32) is: unknown, kept
        "fe01",  # wire type 6
        "ff01",  # wire type 7
        "0001",  # field number 0
        "f8ffffff0f01",  # field number 2^29 - 1
        "8080808010" "01",  # field number 2^29
        "888080808000" "01",  # a six-byte key
        "8880808000" "01",  # a five-byte key for field 1
        "10" "ffffffffffffffffff01",  # a ten-byte varint
        "10" "ffffffffffffffffffff01",  # an eleven-byte varint
        "72" "8080808000",  # a five-byte length
        "72" "808080808000",  # a six-byte length
        "72" "ffffffffffffffff7f",  # a huge length
        "7201ff",  # invalid UTF-8 in a string
        "7203eda080",  # a UTF-8-encoded surrogate
        "fa0101ff",  # invalid UTF-8 in an unknown field: not checked
        "3d0000",  # a fixed32 cut short
        "6802",  # a bool of 2
        "800105",  # an enum number the enum does not have
    ],
)
def test_hand_written_bodies_get_googles_decision(body: str) -> None:
    check_same_decision("fixtures.codec.v1.Scalars", codec_v1.Scalars, bytes.fromhex(body))


@pytest.mark.parametrize(
    "full_name, body",
    [
        ("fixtures.codec.v1.Repeated", "3a03000000"),  # packed fixed32 of 3 bytes
        ("fixtures.codec.v1.Repeated", "0a0180"),  # a packed varint cut short
        ("fixtures.codec.v1.Maps", "0a030a01ff"),  # a map key with invalid UTF-8
        ("fixtures.codec.v1.Maps", "0a020801"),  # a string key given as a varint: unknown in the entry
        ("fixtures.codec.v1.WellKnown", "22020a00"),  # a wrapper's value with another wire type
        ("fixtures.codec.v1.Everything", "0a0208800a"),  # a varint running out of its message
        ("fixtures.codec.v1.Everything", "0a03080110"),  # a key at the end of a message
    ],
)
def test_hand_written_nested_bodies_get_googles_decision(full_name: str, body: str) -> None:
    check_same_decision(full_name, ours(full_name), bytes.fromhex(body))


# --- The generated fast paths' edges ----------------------------------------------------------------
# Generated code reads one-byte varints and short lengths in place and calls the helpers otherwise:
# values on both sides of each edge, cut at every byte, and inside a nested message whose end falls
# before the value's (the buffer goes on: only `end` can refuse it).

A127, A128 = "a" * 127, "a" * 128
WIDE127, WIDE128 = "é" * 63 + "a", "é" * 64  # 127 and 128 bytes of UTF-8 in fewer characters
EDGES: list[tuple[str, dict[str, Any]]] = [
    *[("Scalars", {name: value}) for name in ("i32", "i64") for value in (1, 127, 128, 16383, 16384, -1)],
    *[("Scalars", {"u32": value}) for value in (127, 128, 2**32 - 1)],
    *[("Scalars", {"u64": value}) for value in (127, 128, 2**64 - 1)],
    *[("Scalars", {"s64": value}) for value in (63, -64, 64, -65)],  # zigzag: 126, 127, 128, 129
    *[("Scalars", {"level": value}) for value in (1, 127, 128, -1)],
    *[("Scalars", {"text": value}) for value in ("a", A127, A128, WIDE127, WIDE128)],
    *[("Scalars", {"data": value}) for value in (b"x" * 127, b"x" * 128)],
    *[("Scalars", {"far": value}) for value in (A127, A128)],  # a two-byte key
    ("Scalars", {"i32": 127, "text": A127, "data": b"x" * 128, "flag": True, "level": 128}),
    *[("Optionals", {"i32": value}) for value in (0, 127, 128)],
    *[("Optionals", {"text": value}) for value in ("", A127, A128)],
    *[("Optionals", {"data": value}) for value in (b"", b"x" * 128)],
    *[("Oneofs", {"text": value}) for value in (A127, A128)],
    *[("Oneofs", {"u32": value, "after": A127}) for value in (127, 128)],
    ("Repeated", {"text": ["", A127, A128], "data": [b"x" * 127, b"x" * 128]}),
    *[("Maps", {"text": {key: value}}) for key, value in ((A127, "v"), ("k", A128), (WIDE127, WIDE128))],
    *[("Everything", {"scalars": {"text": "a" * size}}) for size in (125, 126)],  # a body of 127, 128 bytes
]


def _edge_messages(name: str, values: dict[str, Any]) -> tuple[Any, Any]:
    """Ours and google's message with `values`."""
    google = GOOGLE[f"fixtures.codec.v1.{name}"]()
    for field, value in values.items():
        if isinstance(value, dict) and name == "Everything":
            getattr(google, field).CopyFrom(GOOGLE["fixtures.codec.v1.Scalars"](**value))
        elif isinstance(value, dict):
            getattr(google, field).update(value)
        elif isinstance(value, list):
            getattr(google, field).extend(value)
        else:
            setattr(google, field, value)
    body = google.SerializeToString(deterministic=True)
    return ours(f"fixtures.codec.v1.{name}").parse(body), google


@pytest.mark.parametrize("name, values", EDGES, ids=lambda v: v if isinstance(v, str) else None)
def test_fast_path_edges_match_google_cut_anywhere_and_nested(name: str, values: dict[str, Any]) -> None:
    cls = ours(f"fixtures.codec.v1.{name}")
    built, google = _edge_messages(name, values)
    body = google.SerializeToString(deterministic=True)
    assert PROTO.encode(built) == body
    assert PROTO.encoder(cls)(built) == body
    assert_same(PROTO.decode(cls, body), cls.parse(body))
    for cut in range(len(body)):
        check_same_decision(f"fixtures.codec.v1.{name}", cls, body[:cut])
    # As Everything.oneofs / .scalars / ... (field 1 holds a Scalars): the nested message's declared
    # length too short by 1..3 bytes while the outer body goes on with a valid field (color = 1).
    if name == "Scalars":
        for short in range(min(4, len(body) + 1)):
            nested = b"\x0a" + wire.varint(len(body) - short) + body + b"\x50\x01"
            check_same_decision("fixtures.codec.v1.Everything", codec_v1.Everything, nested)
            if 0 < short <= len(body) - 3 and list(values) in (["text"], ["data"], ["far"]):  # end inside the value
                with pytest.raises(RpcError, match="length past the end of the message"):
                    PROTO.decode(codec_v1.Everything, nested)
