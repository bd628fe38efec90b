"""`Deadline`: the point in time a call must end by, on the loop's clock and as a unix time."""

from __future__ import annotations

import asyncio
import time


class Deadline:
    """A point in time a call must end by, on the event loop's clock and as a unix time."""

    __slots__ = ("at", "epoch")

    def __init__(self, timeout: float) -> None:
        self.at = asyncio.get_running_loop().time() + timeout
        self.epoch = time.time() + timeout

    @classmethod
    def after(cls, timeout: float | None) -> Deadline | None:
        return None if timeout is None else cls(timeout)

    @classmethod
    def at_epoch(cls, epoch: float) -> Deadline:
        """The deadline a peer sent as unix time."""
        return cls(epoch - time.time())

    def earliest(self, other: Deadline | None) -> Deadline:
        return self if other is None or self.at <= other.at else other

    @property
    def epoch_ms(self) -> str:
        return str(int(self.epoch * 1000))

    def remaining(self) -> float:
        return max(0.0, self.at - asyncio.get_running_loop().time())
