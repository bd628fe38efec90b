"""Retries of unary calls, opt-in per client: `RetryPolicy`.

Which calls: a call may run again only where that is safe. A method marked idempotent (the proto's
`option idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS`, or `idempotent=True` on the call) is
tried again after a refusal (`Overloaded`: admission control) and after the codes in `retry_codes`
(by default UNAVAILABLE: no service answered, or the connection broke). Any other call is tried
again after nothing, by default: a refusal is a peer's claim that the call did not run, and the
client cannot check it. NATS hands a request to one member of each queue group *and* to every other
subscriber of the subject, so the first answer may be a refusal from one receiver while another runs
the call (instances without a queue group, one of them busy; or a third party that answers first).
Only when one receiver takes each call does a refusal prove that nothing ran: `trust_refusals=True`
says the deployment guarantees that (NATS permissions let nobody but the service's instances
subscribe to its subjects, docs/SECURITY.md, and they serve in a queue group), and then refused calls
of methods whose proto does not turn the queue group off are tried again too.
Streams are never retried by the runtime: a refused stream raises `Overloaded`, whose `retry_after`
says when the caller may open it again.

How: up to `attempts` tries in all, waiting between them `retry_after` (the service's hint, when it
gave one) plus a random share of an exponential backoff (full jitter), so refused clients do not all
come back at once; each wait at most `max_delay` (also for a call without a deadline), and never
past the call's deadline (the last error is raised instead).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..core.errors import ErrorCode, Overloaded, RpcError

MAX_DELAY = 5.0  # seconds: the longest wait between two tries, by default


@dataclass(frozen=True)
class RetryPolicy:
    """How a client retries the unary calls that may be retried (see the module)."""

    attempts: int = 3  # tries in all, the first included
    initial_backoff: float = 0.05  # seconds: the backoff of the first retry (before jitter)
    max_backoff: float = 2.0
    multiplier: float = 2.0
    retry_codes: frozenset[str] = field(default_factory=lambda: frozenset({ErrorCode.UNAVAILABLE}))
    max_delay: float = MAX_DELAY  # seconds: no wait between tries is longer, whatever a peer hints
    # The deployment guarantees one receiver per call (see the module): refusals of any method served
    # in a queue group are then retried, not only of idempotent ones.
    trust_refusals: bool = False

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        times = (self.initial_backoff, self.max_backoff, self.max_delay)
        if not all(math.isfinite(t) and t >= 0 for t in times) or not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError("backoffs and max_delay must be finite and not negative, the multiplier at least 1")

    def retries(self, error: RpcError, idempotent: bool, queue_group: bool = False) -> bool:
        """Whether a call that failed with `error` may be sent again: `idempotent`, the method's
        marking; `queue_group`, whether its proto lets the service serve it in a queue group."""
        if idempotent:
            return isinstance(error, Overloaded) or error.code in self.retry_codes
        return isinstance(error, Overloaded) and self.trust_refusals and queue_group

    def delay(self, retry: int, hint: float | None) -> float:
        """Seconds before retry number `retry` (1 for the first): the service's hint plus full jitter
        over the exponential backoff, at most `max_delay` (a hint that is no number counts as none)."""
        try:
            grown = self.initial_backoff * self.multiplier ** (retry - 1)
        except OverflowError:  # (many retries of a steep backoff)
            grown = math.inf
        backoff = min(self.max_backoff, grown)
        wait = hint if hint is not None and hint > 0 else 0.0  # (NaN > 0 is False)
        return min(self.max_delay, wait + random.uniform(0.0, backoff))
