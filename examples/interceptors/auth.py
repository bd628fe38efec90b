"""Token auth with interceptors: the service answers UNAUTHENTICATED without a valid `Authorization`
header, and the client adds it to every call. Run: `python examples/interceptors/auth.py`
(starts its own nats-server; `make gen` first)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import nats  # noqa: E402

import betterproto_nats  # noqa: E402
from betterproto_nats import CallInfo, ErrorCode, Interceptor, RpcError  # noqa: E402
from betterproto_nats.testing import NatsServer  # noqa: E402


class RequireToken(Interceptor):
    """Server side: every call must carry `Authorization: Bearer <one of tokens>`."""

    def __init__(self, *tokens: str) -> None:
        self.accepted = {f"Bearer {token}" for token in tokens}

    async def start(self, call: CallInfo) -> None:
        if call.headers.get("Authorization") not in self.accepted:
            raise RpcError(ErrorCode.UNAUTHENTICATED, "a valid bearer token is required")


class SendToken(Interceptor):
    """Client side: add the token to every call's headers."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def start(self, call: CallInfo) -> None:
        call.headers["Authorization"] = f"Bearer {self.token}"


async def main() -> None:
    from gen.streaming.v1 import CountUpRequest, PingRequest, StreamDemoServiceNatsClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "streaming"))
    from demo import StreamDemo  # the seed example's service

    with NatsServer() as server:
        nc = await nats.connect(server.url)
        service = await betterproto_nats.serve(
            nc, StreamDemo(), interceptors=[betterproto_nats.LoggingInterceptor(), RequireToken("s3cret")]
        )
        good = StreamDemoServiceNatsClient(nc, interceptors=[SendToken("s3cret")])
        print((await good.ping(PingRequest(payload="with a token"))).payload)
        print([r.number async for r in good.count_up(CountUpRequest(start=1, count=3))])
        try:
            await StreamDemoServiceNatsClient(nc).ping(PingRequest(payload="without"))
        except RpcError as refused:
            print("without a token:", refused.code)
        await service.stop()
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
