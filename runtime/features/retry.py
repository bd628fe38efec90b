"""Retries of unary calls, opt-in per client: `RetryPolicy`.

Which calls: a call the service refused before starting it (`Overloaded`: admission control; nothing
ran, so sending it again is safe whatever it does), and, for methods marked idempotent (the proto's
`option idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS`, or `idempotent=True` on the call), also
the codes in `retry_codes` (by default UNAVAILABLE: no service answered, or the connection broke).
Streams are never retried by the runtime: a refused stream raises `Overloaded`, whose `retry_after`
says when the caller may open it again.

How: up to `attempts` tries in all, waiting between them `retry_after` (the service's hint, when it
gave one) plus a random share of an exponential backoff (full jitter), so refused clients do not all
come back at once; never past the call's deadline (the last error is raised instead).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..core.errors import ErrorCode, Overloaded, RpcError


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries the unary calls that may be retried (see the module)."""

    attempts: int = 3  # tries in all, the first included
    initial_backoff: float = 0.05  # seconds: the backoff of the first retry (before jitter)
    max_backoff: float = 2.0
    multiplier: float = 2.0
    retry_codes: frozenset[str] = field(default_factory=lambda: frozenset({ErrorCode.UNAVAILABLE}))

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("backoffs must not be negative and the multiplier at least 1")

    def retries(self, error: RpcError, idempotent: bool) -> bool:
        """Whether a call that failed with `error` may be sent again."""
        return isinstance(error, Overloaded) or (idempotent and error.code in self.retry_codes)

    def delay(self, retry: int, hint: float | None) -> float:
        """Seconds before retry number `retry` (1 for the first): the service's hint plus full jitter
        over the exponential backoff."""
        backoff = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return (hint or 0.0) + random.uniform(0.0, backoff)
