"""Hard protos generate, import and work over NATS: nesting, cross-package types, well-known types,
maps, oneofs, proto3 optional, enums, and names that are Python keywords or look like internals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import betterproto2
from gen.google.protobuf import Duration, Empty, Timestamp
from nats.aio.client import Client as NATS

import betterproto_nats
from gen.fixtures.common.v1 import Color, Money
from gen.fixtures.hard import v1 as hard

AT = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


class HardImpl(hard.HardNatsBase):
    async def import_(self, request: hard.Outer) -> hard.Outer:
        return request

    async def close(self, request: hard.OuterInner) -> hard.OuterInner:
        return hard.OuterInner(kind=hard.OuterInnerKind.A, value=request.value + "!")

    async def request(self, request: hard.Optional) -> hard.Optional:
        return hard.Optional(value=request.value * 2)

    async def send(self, requests):  # type: ignore[no-untyped-def]
        async for outer in requests:
            yield outer

    async def nothing(self, request: Empty) -> Empty:
        return Empty()

    async def now(self, request: Empty) -> Timestamp:
        return Timestamp(seconds=int(AT.timestamp()))

    async def wait(self, request: Duration):  # type: ignore[no-untyped-def]
        for i in range(request.seconds):
            yield Timestamp(seconds=int(AT.timestamp()) + i)

    async def pay(self, request: Money) -> Money:
        return Money(currency=request.currency, units=request.units + 1)


async def test_hard_service_round_trips(nc: NATS, server_nc: NATS) -> None:
    server = await betterproto_nats.serve(server_nc, HardImpl())
    try:
        client = hard.HardNatsClient(nc)
        outer = hard.Outer(
            inner=hard.OuterInner(kind=hard.OuterInnerKind.A, value="v"),
            inners=[hard.OuterInner(value="x")],
            by_name={"k": hard.OuterInner(value="y")},
            prices={3: Money(currency="EUR", units=5)},
            money=Money(currency="USD", units=1),
            maybe=0,
            color=Color.RED,
            at=AT,
            took=timedelta(seconds=90),
            class_="c",
            typing=7,
            from_=True,
        )
        echoed = await client.import_(outer)
        assert echoed == outer
        assert betterproto2.which_one_of(echoed, "choice")[0] == "money"
        assert echoed.is_set("maybe")  # proto3 optional keeps presence of an explicit 0
        assert (await client.close(hard.OuterInner(value="a"))).value == "a!"
        assert (await client.request(hard.Optional(value="ab"))).value == "abab"
        assert await client.nothing(Empty()) == Empty()
        assert (await client.now(Empty())).seconds == int(AT.timestamp())
        assert [t.seconds async for t in client.wait(Duration(seconds=3))] == [int(AT.timestamp()) + i for i in range(3)]
        assert (await client.pay(Money(currency="EUR", units=1))).units == 2
        assert [o.class_ async for o in client.send([hard.Outer(class_="1"), hard.Outer(class_="2")])] == ["1", "2"]
        info = await nc.request(f"$SRV.INFO.Hard.{server.id}", b"", timeout=5)
        assert b'"hard.get_http_status"' in info.data
    finally:
        await server.stop()
