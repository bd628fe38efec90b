"""A writer's flow control: the `SendCredit` it asks before sending (`FlowWindow` in v2, `Unlimited`
for v1 peers), so writers never ask which version they speak. The accounting itself is the writer's
rules' (`core.sender.Sender`); this adds the waiting.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..core.sender import Sender


class SendCredit(Protocol):
    """What a writer asks before sending."""

    async def acquire(self, size: int) -> None: ...

    def ready(self, size: int) -> bool:
        """`acquire(size)` would return at once (no wait, no error): callers may skip it."""
        ...

    def fail(self, error: BaseException) -> None: ...


class Unlimited:
    """No flow control (a v1 peer): sending never waits, unless the call ended."""

    __slots__ = ("_failure",)

    def __init__(self) -> None:
        self._failure: BaseException | None = None

    async def acquire(self, size: int) -> None:
        if self._failure is not None:
            raise self._failure

    def ready(self, size: int) -> bool:
        return self._failure is None

    def fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error


class FlowWindow:
    """The window of a writer's rules (`Sender.fits`), waited for: `acquire` blocks when out of credit
    until an ack returns some, or the call ends (`fail`); nothing buffers without bound."""

    __slots__ = ("rules", "_waiter", "_failure")

    def __init__(self, rules: Sender) -> None:
        self.rules = rules
        self._waiter: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

    def ready(self, size: int) -> bool:
        return self._failure is None and self.rules.fits(size)

    async def acquire(self, size: int) -> None:
        while not self.rules.fits(size):
            if self._failure is not None:
                raise self._failure
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._failure is not None:
            raise self._failure

    def on_ack(self, seq: int) -> None:
        """Everything up to `seq` was consumed by the receiver: a blocked sender may go on."""
        if self.rules.on_ack(seq):
            self._wake()

    def fail(self, error: BaseException) -> None:
        """Wake a blocked sender with `error` (the call ended or the peer is gone)."""
        if self._failure is None:
            self._failure = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
