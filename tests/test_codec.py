"""The generated codecs and how the runtime finds them: registered per class by generated modules,
used by `Codec` for protobuf bodies; betterproto for every other class (code generated before the
codec, messages left to betterproto, betterproto's own types) and for JSON bodies. Decode errors are
INVALID_ARGUMENT with a short message. The byte- and object-level comparisons with google protobuf
and betterproto are in test_codec_differential.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pickle
import sys
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import betterproto
import pytest
from betterproto.lib.google.protobuf import Timestamp
from google.protobuf import duration_pb2
from nats.aio.client import Client as NATS

import betterproto_nats
from betterproto_nats.encoding import protobuf as wire
from betterproto_nats.encoding.codec import JSON, PROTO
from betterproto_nats.core.errors import ErrorCode, RpcError
from gen.fixtures.codec import v1 as codec_v1
from gen.fixtures.common.v1 import Money
from gen.fixtures.hard import v1 as hard
from gen.streaming import v1 as streaming

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def test_generated_modules_register_a_codec_per_message() -> None:
    for cls in (hard.Outer, hard.OuterInner, hard.Optional, streaming.PingRequest, Money, codec_v1.Nothing):
        assert wire.ENCODERS[cls].__name__ == f"_encode_{cls.__name__}"
        assert wire.DECODERS[cls].__name__ == f"_decode_{cls.__name__}"
    message = streaming.PingResponse(payload="hi", count=3)
    assert PROTO.encode(message) == bytes(message) == b"\x0a\x02hi\x10\x03"
    decoded = PROTO.decode(streaming.PingResponse, b"\x0a\x02hi\x10\x03")
    assert decoded == message and type(decoded) is streaming.PingResponse


def test_classes_without_a_generated_codec_use_betterproto() -> None:
    # betterproto's own types, and messages the generator leaves to betterproto (with a comment why).
    for cls in (Timestamp, codec_v1.WrappedValues, codec_v1.Retired):
        assert cls not in wire.ENCODERS and cls not in wire.DECODERS
    stamp = Timestamp(seconds=5, nanos=7)
    assert PROTO.decode(Timestamp, PROTO.encode(stamp)) == stamp
    values = codec_v1.WrappedValues(values={"a": 1})
    assert PROTO.encode(values) == bytes(values)
    code = (ROOT / "gen" / "fixtures" / "codec" / "v1" / "__init__.py").read_text()
    assert "# WrappedValues has no generated codec (betterproto's is used): map field values has" in code
    assert "# Retired has no generated codec (betterproto's is used): a deprecated message warns" in code
    with warnings.catch_warnings(record=True) as caught:  # decoded by betterproto: it still warns
        warnings.simplefilter("always")
        assert PROTO.decode(codec_v1.Retired, b"\x0a\x01x").name == "x"
    assert any("Retired is deprecated" in str(w.message) for w in caught)


def test_a_decoded_object_behaves_as_betterprotos_own() -> None:
    at = datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=timezone.utc)
    outer = hard.Outer(
        inner=hard.OuterInner(value="v"),
        by_name={"k": hard.OuterInner(kind=hard.OuterInnerKind.KIND_A)},
        prices={3: Money(currency="EUR", units=5)},
        text="",
        maybe=0,
        at=at,
        took=timedelta(seconds=90.5),
    )
    body = PROTO.encode(outer)
    ours, theirs = PROTO.decode(hard.Outer, body), hard.Outer().parse(body)
    assert wire.fields_of(ours).keys() == wire.fields_of(theirs).keys()
    assert ours == theirs == outer
    assert betterproto.which_one_of(ours, "choice") == betterproto.which_one_of(theirs, "choice") == ("text", "")
    assert [ours.is_set(f) for f in ("inner", "inners", "maybe", "money")] == [True, False, True, False]
    assert betterproto.serialized_on_wire(ours) and betterproto.serialized_on_wire(ours.inner)
    with pytest.raises(AttributeError):
        ours.money  # noqa: B018 - betterproto refuses to read a oneof member that is not chosen
    assert ours.to_dict() == theirs.to_dict() and ours.to_json() == theirs.to_json()
    assert bytes(ours) == bytes(theirs)
    assert repr(ours) == repr(theirs)
    assert pickle.loads(pickle.dumps(ours)) == ours


def test_unknown_fields_are_kept_and_written_back() -> None:
    body = b"\x0a\x02hi" + b"\xf8\x01\x05" + b"\x10\x03" + b"\xfb\x01\x08\x01\xfc\x01"  # a varint, a group
    decoded = PROTO.decode(streaming.PingResponse, body)
    assert decoded._unknown_fields == b"\xf8\x01\x05\xfb\x01\x08\x01\xfc\x01"
    assert PROTO.encode(decoded) == b"\x0a\x02hi\x10\x03" + decoded._unknown_fields  # protobuf: unknown last


def test_what_is_written_where_protobuf_and_betterproto_differ() -> None:
    # Fields in field-number order; map entries with key and value even when they are defaults.
    maps = codec_v1.Maps(text={"": ""}, scalars={0: codec_v1.Scalars()})
    assert PROTO.encode(maps) == b"\x0a\x04\x0a\x00\x12\x00" + b"\x5a\x04\x08\x00\x12\x00"
    # A negative zero is written (protobuf compares a float's bits); betterproto leaves it out.
    assert PROTO.encode(codec_v1.Scalars(db=-0.0)) == b"\x61" + b"\x00" * 7 + b"\x80"
    # [packed = false] is honoured; packable repeated fields are packed otherwise.
    repeated = codec_v1.Repeated(s32=[1, -1], unpacked_s32=[1, -1])
    assert PROTO.encode(repeated) == b"\x2a\x02\x02\x01" + b"\xa8\x01\x02\xa8\x01\x01"
    # A negative Duration keeps one sign in seconds and nanos (betterproto writes -1.5 s as -1 s + 0.5 s).
    duration = duration_pb2.Duration(seconds=-1, nanos=-500_000_000).SerializeToString()
    assert PROTO.encode(codec_v1.WellKnown(took=timedelta(seconds=-1.5))) == b"\x12" + bytes([len(duration)]) + duration
    # A zero Timestamp is written only as a chosen oneof member: betterproto cannot tell it from unset.
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    assert PROTO.encode(codec_v1.WellKnown(at=epoch)) == b""
    assert PROTO.encode(codec_v1.Oneofs(at=epoch)) == b"\x52\x00"
    # A set submessage is written even when empty; a default one read from an unset field is not.
    assert PROTO.encode(codec_v1.Everything(nothing=codec_v1.Nothing())) == b"\x42\x00"
    unset = codec_v1.Everything()
    assert unset.scalars.i32 == 0 and PROTO.encode(unset) == b""


def test_decoding_accepts_what_protobuf_accepts() -> None:
    # Packed and unpacked elements of one field concatenate (betterproto keeps the last packed run).
    body = b"\x0a\x01\x01" + b"\x0a\x01\x02" + b"\x08\x03"
    assert PROTO.decode(codec_v1.Repeated, body).i32 == [1, 2, 3]
    # A known field with another wire type is an unknown field, as in protobuf.
    assert PROTO.decode(codec_v1.Scalars, b"\x0a\x01\x01")._unknown_fields == b"\x0a\x01\x01"
    # Negative enum numbers are read as int32: the member (betterproto reads 2^64 - 1).
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
        (PROTO, codec_v1.WrappedValues, b"\x0a" + wire.varint(len(entry)) + entry),  # betterproto's parser
        (JSON, streaming.PingResponse, b'{"count": "' + b"SECRET" * 100 + b'"}'),
    ):
        with pytest.raises(RpcError) as caught:
            codec.decode(cls, body)
        assert caught.value.code == ErrorCode.INVALID_ARGUMENT
        assert len(caught.value.message) <= 200 and "SECRETSECRET" not in caught.value.message


def test_json_bodies_keep_betterprotos_mapping() -> None:
    message = hard.Outer(maybe=0, at=datetime(2026, 1, 1, tzinfo=timezone.utc), by_name={"k": hard.OuterInner(value="v")})
    body = JSON.encode(message)
    assert body == b'{"byName":{"k":{"value":"v"}},"maybe":0,"at":"2026-01-01T00:00:00Z"}'
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


async def test_code_generated_before_the_codec_still_runs(nc: NATS, server_nc: NATS) -> None:
    """streaming/v1 as the generator of codegen API 1 wrote it, before codecs (the golden file
    test_golden.py keeps frozen): its classes register nothing and go through betterproto."""
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
