"""What generated methods return: awaitables that open the call when awaited (`Pending`,
`PendingStream`, `ServerStreamCall`, `DownloadCall`, `BidiStreamCall`); awaited, they give the
stream views of `calling/views.py`."""

from __future__ import annotations

import asyncio
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Generic,
    Iterable,
    TypeVar,
)

import betterproto2

from .views import BidiStream, DownloadStream, ServerStream, _View

Req = TypeVar("Req", bound=betterproto2.Message)
Resp = TypeVar("Resp", bound=betterproto2.Message)
T = TypeVar("T")


class _Awaitable:
    """A call's result before it is awaited. Using it as if it were the result (a forgotten `await`)
    is a TypeError that says so, instead of Python's puzzling errors about coroutines."""

    _what = "this call"

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("_", "cr_", "gi_")):  # Python's and asyncio's own probes
            raise AttributeError(name)
        raise TypeError(
            f"{self._what} returns an awaitable, not its result: write `await client.{self._what}(...)` "
            f"(`.{name}` is on what it gives)"
        )


class _Deferred(_Awaitable, Generic[T]):
    """A call made when it is awaited (`run` makes it)."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, T]], what: str) -> None:
        self._run = run
        self._what = what

    def __await__(self) -> Generator[Any, None, T]:
        return self._run().__await__()


class Pending(_Deferred[T], Coroutine[Any, Any, T]):
    """A unary or client-streaming call: `await` it, or hand it to `asyncio.create_task` (it is a
    coroutine; the call starts when it is first awaited or run, never otherwise)."""

    def __init__(self, run: Callable[[], Coroutine[Any, Any, T]], what: str) -> None:
        super().__init__(run, what)
        self._coroutine: Coroutine[Any, Any, T] | None = None

    def _started(self) -> Coroutine[Any, Any, T]:
        if self._coroutine is None:
            self._coroutine = coroutine = self._run()
            # A task drives this object from now on: its later steps go straight to the coroutine.
            self.send = coroutine.send  # type: ignore[method-assign,assignment]
            self.throw = coroutine.throw  # type: ignore[method-assign,assignment]
        return self._coroutine

    def __await__(self) -> Generator[Any, None, T]:
        return self._started().__await__()

    def send(self, value: Any) -> Any:
        return self._started().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None and tb is None:
            return self._started().throw(typ)
        return self._started().throw(typ, val, tb)

    def close(self) -> None:
        if self._coroutine is not None:
            self._coroutine.close()


S = TypeVar("S", bound=_View)


class PendingStream(_Deferred[S]):
    """A stream to be opened: `stream = await ...`, or `async with ... as stream:` (closed at the end).
    Not a coroutine: a stream has `send` and `close` of its own, and a forgotten `await` must say so."""

    _stream: S | None = None

    async def __aenter__(self) -> S:
        self._stream = await self._run()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()


class ServerStreamCall(_Awaitable, Generic[Resp]):
    """`await` it for a `ServerStream`, `async with` it (closed at the end), or `async for` over it."""

    def __init__(self, open_stream: Callable[[], Awaitable[ServerStream[Resp]]], what: str = "this call") -> None:
        self._open = open_stream
        self._what = what
        self._stream: ServerStream[Resp] | None = None

    def __await__(self) -> Generator[Any, None, ServerStream[Resp]]:
        return self._open().__await__()

    async def __aenter__(self) -> ServerStream[Resp]:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()

    async def __aiter__(self) -> AsyncIterator[Resp]:
        stream = await self._open()
        try:
            async for message in stream:
                yield message
        finally:
            await stream.close()


class DownloadCall(ServerStreamCall[Resp]):
    """`await` it for a `DownloadStream` (blob helpers), or `async for` over the chunk messages."""

    def __await__(self) -> Generator[Any, None, DownloadStream[Resp]]:
        return self._open().__await__()  # type: ignore[return-value]

    async def __aenter__(self) -> DownloadStream[Resp]:
        return await super().__aenter__()  # type: ignore[return-value]


class BidiStreamCall(_Awaitable, Generic[Req, Resp]):
    """`await` it for a `BidiStream`, `async with` it (closed at the end), or `async for` over the
    responses to the given requests."""

    def __init__(
        self,
        open_stream: Callable[[], Awaitable[BidiStream[Req, Resp]]],
        requests: Iterable[Req] | AsyncIterable[Req] | None,
        what: str = "this call",
    ) -> None:
        self._open = open_stream
        self._requests = requests
        self._what = what
        self._stream: BidiStream[Req, Resp] | None = None

    def __await__(self) -> Generator[Any, None, BidiStream[Req, Resp]]:
        return self._open().__await__()

    async def __aenter__(self) -> BidiStream[Req, Resp]:
        self._stream = await self._open()
        return self._stream

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()

    async def __aiter__(self) -> AsyncIterator[Resp]:
        if self._requests is None:
            raise TypeError("pass the requests to iterate over the responses, or await the call for a stream")
        stream = await self._open()
        sender = asyncio.create_task(stream._send_all_and_close(self._requests))
        try:
            async for message in stream:
                yield message
            await sender
        finally:
            if not sender.done():
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await stream.close()
