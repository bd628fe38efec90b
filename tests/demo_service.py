"""The seed's StreamDemoService as tests use it: behaviour switched by the request, and probes."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from betterproto_nats import ErrorCode, RpcError, current_call
from gen.streaming.v1 import (
    ChatMessage,
    CountUpRequest,
    CountUpResponse,
    PingRequest,
    PingResponse,
    StreamDemoServiceNatsBase,
    SumRequest,
    SumResponse,
)


class Demo(StreamDemoServiceNatsBase):
    """CountUp fails after `count` messages when start < 0; Sum fails on a negative value; Chat
    echoes and fails on text "fail". Every handler records what it saw."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        self.finished = 0
        self.inside = 0
        self.barrier: asyncio.Event | None = None
        self.barrier_size = 0

    async def ping(self, request: PingRequest) -> PingResponse:
        return PingResponse(payload=request.payload)

    async def count_up(self, request: CountUpRequest) -> AsyncIterator[CountUpResponse]:
        call = current_call()
        self.headers.append(dict(call.headers))
        call.set_response_headers({"X-Stream": "count_up"})
        try:
            if self.barrier is not None:
                self.inside += 1
                if self.inside >= self.barrier_size:
                    self.barrier.set()
                await self.barrier.wait()
            for i in range(request.count):
                yield CountUpResponse(number=abs(request.start) + i)
            if request.start < 0:
                raise RpcError(ErrorCode.NOT_FOUND, f"failed after {request.count}")
            self.finished += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def sum(self, requests: AsyncIterator[SumRequest]) -> SumResponse:
        self.headers.append(dict(current_call().headers))
        total = count = 0
        async for request in requests:
            if request.value < 0:
                raise RpcError(ErrorCode.INVALID_ARGUMENT, "negative value")
            total += request.value
            count += 1
        return SumResponse(total=total, count=count)

    async def chat(self, requests: AsyncIterator[ChatMessage]) -> AsyncIterator[ChatMessage]:
        self.headers.append(dict(current_call().headers))
        async for message in requests:
            if message.text == "fail":
                raise RpcError(ErrorCode.PERMISSION_DENIED, "not allowed")
            yield ChatMessage(user="server", text="echo: " + message.text)
