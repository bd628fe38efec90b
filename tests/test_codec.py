"""The generated codecs and how the runtime finds them: registered per class by generated modules,
used by `Codec` for protobuf bodies; betterproto2's own codec for every other class (messages left to
it, code generated before the codec) and for JSON bodies. Decode errors are INVALID_ARGUMENT with a
short message. Messages are as cheap as plain dataclasses. The byte- and object-level comparisons with
google protobuf and betterproto2 over generated messages are in test_codec_differential.py.
"""

from __future__ import annotations

import copy
import importlib.machinery
import importlib.util
import pickle
import sys
import timeit
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import betterproto2
import pytest
from google.protobuf import duration_pb2
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats.encoding import protobuf as wire
from betterproto_nats.encoding.codec import JSON, PROTO
from betterproto_nats.core.errors import ErrorCode, RpcError
from gen.fixtures.codec import v1 as codec_v1
from gen.fixtures.common import v1 as common
from gen.fixtures.common.v1 import Money
from gen.fixtures.hard import v1 as hard
from gen.google.protobuf import Duration, Empty, Timestamp
from gen.streaming import v1 as streaming

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def test_generated_modules_register_a_codec_per_message() -> None:
    for cls in (hard.Outer, hard.OuterInner, hard.Optional, streaming.PingRequest, Money, codec_v1.Nothing, Timestamp, Empty):
        assert wire.ENCODERS[cls].__name__ == f"_encode_{cls.__name__}"
        assert wire.DECODERS[cls].__name__ == f"_decode_{cls.__name__}"
    message = streaming.PingResponse(payload="hi", count=3)
    assert PROTO.encode(message) == bytes(message) == b"\x0a\x02hi\x10\x03"
    assert PROTO.encoder(streaming.PingResponse) is wire.ENCODERS[streaming.PingResponse]  # no call in between
    assert PROTO.encoder(streaming.PingResponse)(message) == b"\x0a\x02hi\x10\x03"
    decoded = PROTO.decode(streaming.PingResponse, b"\x0a\x02hi\x10\x03")
    assert decoded == message and type(decoded) is streaming.PingResponse


def test_classes_without_a_generated_codec_use_betterproto2() -> None:
    # Messages the generator leaves to betterproto2 (with a comment why); well-known types get codecs.
    for cls in (codec_v1.WrappedValues, codec_v1.Retired):
        assert cls not in wire.ENCODERS and cls not in wire.DECODERS
    stamp = Timestamp(seconds=5, nanos=7000)
    assert PROTO.decode(Timestamp, PROTO.encode(stamp)) == stamp
    values = codec_v1.WrappedValues(values={"a": 1})
    assert PROTO.encode(values) == bytes(values) == PROTO.encoder(codec_v1.WrappedValues)(values)
    assert PROTO.decode(codec_v1.WrappedValues, bytes(values)) == values
    code = (ROOT / "gen" / "fixtures" / "codec" / "v1" / "__init__.py").read_text()
    assert "# WrappedValues has no generated codec (betterproto2's is used): map field values has" in code
    assert "# Retired has no generated codec (betterproto2's is used): deprecation warnings come" in code
    with warnings.catch_warnings(record=True) as caught:  # decoded by betterproto2: it still warns
        warnings.simplefilter("always")
        assert PROTO.decode(codec_v1.Retired, b"\x0a\x01x").name == "x"
    assert any("Retired is deprecated" in str(w.message) for w in caught)


def test_a_decoded_object_behaves_as_betterproto2s_own() -> None:
    at = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=timezone.utc)
    outer = hard.Outer(
        inner=hard.OuterInner(value="v"),
        by_name={"k": hard.OuterInner(kind=hard.OuterInnerKind.A)},
        prices={3: Money(currency="EUR", units=5)},
        text="",
        maybe=0,
        at=at,
        took=timedelta(seconds=90.5),
    )
    body = PROTO.encode(outer)
    ours, theirs = PROTO.decode(hard.Outer, body), hard.Outer.parse(body)
    assert vars(ours).keys() == vars(theirs).keys()
    assert ours == theirs == outer
    assert betterproto2.which_one_of(ours, "choice") == betterproto2.which_one_of(theirs, "choice") == ("text", "")
    assert ours.money is None and ours.inners == [] and ours.maybe == 0  # an unset oneof member is None
    assert ours.to_dict() == theirs.to_dict() and ours.to_json() == theirs.to_json()
    assert bytes(ours) == bytes(theirs)
    assert repr(ours) == repr(theirs)
    assert pickle.loads(pickle.dumps(ours)) == ours


def _samples() -> list[Any]:
    """A message of every fixture shape: scalars, repeated (packed and not), optional, oneofs, maps of
    every kind, well-known types and wrappers, recursion, another package's messages."""
    c = codec_v1
    at = datetime(2026, 12, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)
    scalars = c.Scalars(i32=-5, i64=-(1 << 40), u32=7, u64=1 << 63, s32=-3, s64=-(1 << 50), f32=9, f64=1 << 60,
                        sf32=-9, sf64=-(1 << 60), fl=1.5, db=-0.0, flag=True, text="héllo", data=b"\x00\xff",
                        level=c.Level(1), far="far")  # fmt: skip
    tree = c.Tree(name="root", children=[c.Tree(name="a"), c.Tree(name="b", children=[c.Tree(name="c")])],
                  by_name={"x": c.Tree(name="x")}, forest=c.Forest(trees=[c.Tree(name="f")], biggest=c.Tree()))  # fmt: skip
    return [
        c.Scalars(),
        scalars,
        c.Repeated(i32=[1, -1], i64=[1 << 40], u32=[3], u64=[1 << 63], s32=[-1, 1], s64=[-2], f32=[1], f64=[2],
                   sf32=[-3], sf64=[-4], fl=[0.5], db=[1e300], flag=[True, False], text=["a", ""], data=[b"", b"x"],
                   level=[c.Level(0), c.Level(2), c.Level(99)], scalars=[c.Scalars(), scalars], times=[at],
                   durations=[timedelta(seconds=-2)], unpacked_s32=[5, -5], unpacked_db=[2.5]),  # fmt: skip
        c.Optionals(i32=0, u64=0, text="", data=b"", flag=False, level=c.Level(0), scalars=c.Scalars()),
        c.Optionals(),
        c.Oneofs(i32=0, after="z"),
        c.Oneofs(scalars=c.Scalars()),
        c.Oneofs(at=at),
        c.Oneofs(money=common.Money(currency="EUR", units=5)),
        c.Maps(text={"a": "b", "": ""}, ints={-1: 1}, uints={1: 2}, zigzag={-5: -6}, fixed={1: 2}, sfixed={-1: -2},
               floats={1: 0.5}, doubles={2: -0.0}, flags={True: b"y", False: b""}, levels={"l": c.Level(2)},
               scalars={1: c.Scalars(), 2: scalars}, times={"t": at}, durations={3: timedelta(days=1)},
               money={"m": common.Money(currency="USD")}),  # fmt: skip
        c.WellKnown(at=at, took=timedelta(microseconds=1), bool_value=False, int32_value=0, int64_value=-1,
                    uint32_value=1, uint64_value=2, float_value=0.0, double_value=1.5, string_value="",
                    bytes_value=b"b"),  # fmt: skip
        c.WellKnown(at=datetime(1970, 1, 1, tzinfo=timezone.utc), took=timedelta()),
        tree,
        c.Everything(scalars=scalars, tree=tree, nothing=c.Nothing(), color=common.Color(1)),
    ]


def test_generated_codec_agrees_with_betterproto2_both_ways() -> None:
    for message in _samples():
        cls = type(message)
        ours, theirs = wire.ENCODERS[cls](message), bytes(message)
        decode = PROTO.decoder(cls)
        assert decode(ours) == message and decode(theirs) == message, cls.__name__
        assert cls.parse(ours) == message, cls.__name__
        # betterproto2 0.10's JSON does not round-trip an unknown enum number (Level(99)) nor a map with
        # bool keys ("true" comes back a str key): docs/BETTERPROTO2.md. BytesValue does, with our override.
        if cls is codec_v1.Maps:
            message = copy.copy(message)
            message.flags = {}
        if cls is not codec_v1.Repeated:
            assert JSON.decode(cls, JSON.encode(message)) == message, cls.__name__
        # Bytes may differ: ours writes a float's -0.0 (protobuf compares bits; betterproto2 leaves it out)
        # and orders by field number, as upb does (test_codec_differential.py checks ours against upb).


def test_messages_are_as_cheap_as_plain_dataclasses() -> None:
    """The issue-31 budget: construct <= 2 us, read a field <= 0.1 us (betterproto 2.0.0b7: 25 and 1.3)."""
    ping = streaming.PingResponse
    construct = min(timeit.repeat(lambda: ping(payload="x", count=3), number=20000, repeat=3)) / 20000
    message = ping(payload="x", count=3)
    read = min(timeit.repeat("m.count", globals={"m": message}, number=200000, repeat=3)) / 200000
    assert construct < 2e-6 and read < 0.1e-6, (construct, read)


def test_unknown_fields_are_kept_and_written_back() -> None:
    body = b"\x0a\x02hi" + b"\xf8\x01\x05" + b"\x10\x03" + b"\xfb\x01\x08\x01\xfc\x01"  # a varint, a group
    decoded = PROTO.decode(streaming.PingResponse, body)
    assert decoded._unknown_fields == b"\xf8\x01\x05\xfb\x01\x08\x01\xfc\x01"
    assert PROTO.encode(decoded) == b"\x0a\x02hi\x10\x03" + decoded._unknown_fields  # protobuf: unknown last


def test_what_is_written_where_protobuf_and_betterproto2_differ() -> None:
    # Fields in field-number order; map entries with key and value even when they are defaults.
    maps = codec_v1.Maps(text={"": ""}, scalars={0: codec_v1.Scalars()})
    assert PROTO.encode(maps) == b"\x0a\x04\x0a\x00\x12\x00" + b"\x5a\x04\x08\x00\x12\x00"
    # A negative zero is written (protobuf compares a float's bits); betterproto2 leaves it out.
    assert PROTO.encode(codec_v1.Scalars(db=-0.0)) == b"\x61" + b"\x00" * 7 + b"\x80"
    # [packed = false] is honoured; packable repeated fields are packed otherwise.
    repeated = codec_v1.Repeated(s32=[1, -1], unpacked_s32=[1, -1])
    assert PROTO.encode(repeated) == b"\x2a\x02\x02\x01" + b"\xa8\x01\x02\xa8\x01\x01"
    # A negative Duration keeps one sign in seconds and nanos (betterproto2 0.10 writes -1.5 s as -2 s + 0.5 s).
    duration = duration_pb2.Duration(seconds=-1, nanos=-500_000_000).SerializeToString()
    message = codec_v1.WellKnown(took=timedelta(seconds=-1.5))
    assert PROTO.encode(message) == b"\x12" + bytes([len(duration)]) + duration
    assert PROTO.decode(codec_v1.WellKnown, PROTO.encode(message)) == message
    assert (Duration.parse(duration).seconds, Duration.parse(duration).nanos) == (-1, -500_000_000)
    # A Timestamp, Duration or message field is written when it is not None, zero or empty (presence).
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert PROTO.encode(codec_v1.WellKnown(at=epoch)) == b"\x0a\x00"
    assert PROTO.encode(codec_v1.Oneofs(at=epoch)) == b"\x52\x00"
    assert PROTO.encode(codec_v1.Everything(nothing=codec_v1.Nothing())) == b"\x42\x00"
    unset = codec_v1.Everything()
    assert unset.scalars is None and PROTO.encode(unset) == b""


def test_decoding_accepts_what_protobuf_accepts() -> None:
    # Packed and unpacked elements of one field concatenate.
    body = b"\x0a\x01\x01" + b"\x0a\x01\x02" + b"\x08\x03"
    assert PROTO.decode(codec_v1.Repeated, body).i32 == [1, 2, 3]
    # A known field with another wire type is an unknown field, as in protobuf.
    assert PROTO.decode(codec_v1.Scalars, b"\x0a\x01\x01")._unknown_fields == b"\x0a\x01\x01"
    # Negative enum numbers are read as int32: the member.
    assert PROTO.decode(codec_v1.Scalars, b"\x80\x01" + b"\xff" * 9 + b"\x01").level == codec_v1.Level.BELOW
    assert PROTO.decode(codec_v1.Scalars, b"\x80\x01\x07").level.value == 7  # open enum: kept


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\x0a\x05hi", "length past the end of the message"),
        (b"\x08", "truncated field"),
        (b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint longer than ten bytes"),
        (b"\x00\x01", "field number 0"),
        (b"\x0e", "wire type 6 where a field starts"),
        (b"\x0c", "wire type 4 where a field starts"),
        (b"\x0a\x02\xff\xfe", "invalid UTF-8 in a string field (invalid start byte)"),
        (b"\x8a\x80\x80\x80\x80\x00", "key or length longer than five bytes"),
        (b"\xfb\x01\x08\x01", "group without its end"),
    ],
)
def test_undecodable_bodies_are_invalid_argument_with_a_short_reason(body: bytes, why: str) -> None:
    with pytest.raises(RpcError) as caught:
        PROTO.decode(streaming.PingResponse, body, method="ping")
    assert caught.value.code == ErrorCode.INVALID_ARGUMENT
    assert caught.value.message == f"cannot decode PingResponse: {why}"


def test_nesting_deeper_than_protobufs_limit_is_refused() -> None:
    def nested(depth: int) -> bytes:
        body = b""
        for _ in range(depth):
            body = b"\x12" + wire.varint(len(body)) + body
        return body

    assert PROTO.decode(codec_v1.Tree, nested(100)).children[0].children  # 100 levels below the top
    with pytest.raises(RpcError, match="nested more than 100 deep"):
        PROTO.decode(codec_v1.Tree, nested(101))


def test_decode_errors_never_echo_the_body() -> None:
    secret = b"\xff" + b"SECRET" * 100
    entry = b"\x0a" + wire.varint(len(secret)) + secret
    for codec, cls, body in (
        (PROTO, streaming.PingResponse, b"\x0a" + wire.varint(len(secret)) + secret),
        (PROTO, codec_v1.WrappedValues, b"\x0a" + wire.varint(len(entry)) + entry),  # betterproto2's parser
        (JSON, streaming.PingResponse, b'{"count": "' + b"SECRET" * 100 + b'"}'),
    ):
        with pytest.raises(RpcError) as caught:
            codec.decode(cls, body)
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT
        assert len(caught.value.message) <= 200 and "SECRETSECRET" not in caught.value.message


def test_bytes_value_json_is_base64_as_proto3_json_says() -> None:
    """Our override of betterproto2 0.10's BytesValue in the generated well-known types."""
    message = codec_v1.WellKnown(bytes_value=b"\x00b")
    assert JSON.encode(message) == b'{"bytesValue":"AGI="}'
    assert JSON.decode(codec_v1.WellKnown, b'{"bytesValue":"AGI="}') == message


def test_json_bodies_keep_betterproto2s_mapping() -> None:
    message = hard.Outer(maybe=0, at=datetime(2026, 1, 1, tzinfo=timezone.utc), by_name={"k": hard.OuterInner(value="v")})
    body = JSON.encode(message)
    assert body == b'{"byName":{"k":{"value":"v"}},"maybe":0,"at":"2026-01-01T00:00:00Z"}'
    assert JSON.encoder(hard.Outer)(message) == body
    assert JSON.decode(hard.Outer, body) == message


def test_memoryview_and_bytearray_bodies_decode() -> None:
    body = b"\x0a\x02hi\x10\x03"
    for view in (memoryview(body), bytearray(body)):
        decoded = PROTO.decode(streaming.PingResponse, view)  # type: ignore[arg-type]
        assert decoded.payload == "hi" and type(decoded.payload) is str


def _load_golden(name: str, module_name: str):  # type: ignore[no-untyped-def]
    path = str(GOLDEN / name)
    loader = importlib.machinery.SourceFileLoader(module_name, path)
    spec = importlib.util.spec_from_file_location(module_name, path, loader=loader)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def test_unset_of_api_v1_is_betterproto_b7s_placeholder_only_where_that_code_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """API v1's `UNSET` is betterproto 2.0.0b7's PLACEHOLDER, found in `sys.modules` (code generated
    for 2.0.0b7 imported it); the runtime itself never imports betterproto 2.0.0b7."""
    import types

    import betterproto_nats._api_v1 as api_v1
    import betterproto_nats._api_v2 as api_v2

    monkeypatch.delitem(sys.modules, "betterproto", raising=False)
    with pytest.raises(AttributeError, match="install betterproto==2.0.0b7"):
        api_v2.UNSET  # noqa: B018
    placeholder = object()
    monkeypatch.setitem(sys.modules, "betterproto", types.SimpleNamespace(PLACEHOLDER=placeholder))
    assert api_v1.UNSET is placeholder and api_v2.UNSET is placeholder
    assert not wire.nonzero(placeholder)  # what 2.0.0b7 code hands it for a float never set


async def test_code_generated_before_the_codec_still_runs(nc: NATS, server_nc: NATS) -> None:
    """streaming/v1 as the generator of codegen API 1 wrote it, before codecs (the golden file
    test_golden.py keeps frozen): its classes register nothing and go through betterproto 2.0.0b7,
    which such code imports itself (the runtime does not): run where it is installed."""
    pytest.importorskip("betterproto", reason="code generated for betterproto 2.0.0b7 needs it installed")
    module = _load_golden("streaming_v1.api_v1.py.golden", "golden_streaming_v1_without_codec")
    assert "_encode_" not in (GOLDEN / "streaming_v1.api_v1.py.golden").read_text()
    assert module.PingRequest not in wire.ENCODERS and module.PingRequest not in wire.DECODERS

    class Impl(module.StreamDemoServiceNatsBase):  # type: ignore[name-defined,misc]
        async def ping(self, request):  # type: ignore[no-untyped-def]
            return module.PingResponse(payload=request.payload, count=len(request.payload))

        async def count_up(self, request):  # type: ignore[no-untyped-def]
            for i in range(request.count):
                yield module.CountUpResponse(number=i)

    server = await betterproto_nats.serve(server_nc, Impl())
    try:
        old_client = module.StreamDemoServiceNatsClient(nc)
        new_client = streaming.StreamDemoServiceNatsClient(nc)  # generated codec on the other side
        assert await old_client.ping(module.PingRequest(payload="old")) == module.PingResponse(payload="old", count=3)
        assert await new_client.ping(streaming.PingRequest(payload="new")) == streaming.PingResponse(payload="new", count=3)
        assert [r.number async for r in old_client.count_up(module.CountUpRequest(count=3))] == [0, 1, 2]
        answer = await nc.request("api.v1.stream.ping", b"\x0a\x05hi", timeout=5)
        assert answer.headers is not None and answer.headers["Nats-Service-Error-Code"] == "INVALID_ARGUMENT"
    finally:
        await server.stop()
        del sys.modules["golden_streaming_v1_without_codec"]
