"""Refusals absorbed: a call the service refused before running it (admission control's
`RESOURCE_EXHAUSTED` with a retry hint) is sent again by the client after the hint, with jitter,
within the call's deadline and a per-connection `RetryBudget`, so a default client against a healthy
service never sees a refusal. On by default; `absorb_refusals=False` on a client, or
`raise_refusals()` around a call, turns it off.

A refusal is a peer's claim: NATS hands a request to one member of each queue group and to every
subscriber outside one, so while one receiver refuses, another may run the call. So a call is sent
again only where that cannot run it twice:
- idempotent methods, always (as a fresh request where the transport cannot do better);
- others only where the proto keeps the queue group (one member takes each call) and the request can
  go again to the *same* reply subject, marked `Nats-Retry: <try>`. Meanwhile the client keeps
  listening there, so an answer of another receiver of an earlier try (the call ran there) ends the
  call; and a service of ours that already took a call with that reply subject (it ran or runs it)
  drops the retry (`serving/server.py`, `core/recent.py`). With queue groups off (every instance runs
  every call anyway) nothing is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from typing import Callable, ClassVar, Iterator

import nats.errors
from nats.aio.msg import Msg

from ..core.errors import ErrorCode, Overloaded, RpcError
from ..core.headers import RETRY, error_from_headers
from ..features.interceptors import CallInfo
from ..health.admission import MIN_RETRY_AFTER
from ..net.transport import Transport
from .requests import request_failed

_RAISE = contextvars.ContextVar("betterproto_nats_raise_refusals", default=False)
# Tries of one call without a deadline, at most (with one, its deadline bounds them).
MAX_TRIES_WITHOUT_DEADLINE = 10


@contextlib.contextmanager
def raise_refusals() -> Iterator[None]:
    """Calls made within raise `Overloaded` at once instead of being sent again (a per-call opt-out)."""
    token = _RAISE.set(True)
    try:
        yield
    finally:
        _RAISE.reset(token)


def absorbs(client_absorbs: bool) -> bool:
    """Whether a refused call is to be sent again (the client's setting, unless `raise_refusals`)."""
    return client_absorbs and not _RAISE.get()


class RetryBudget:
    """How many refused calls one connection may send again (in the style of gRPC's retry
    throttling, as a token bucket): at most `MAX_TOKENS`, one spent per retry, one earned for every
    call the service took (an answer that is no refusal: `taken`, counted by the callers) and
    `PER_SECOND` as time passes. So a client retries about as fast as the service takes its calls,
    a service that takes nothing earns its clients no retries, and a fleet of refused clients cannot
    stampede it; a retry waits for a token (within its call's deadline) rather than fail."""

    MAX_TOKENS, PER_TAKEN, PER_SECOND = 1000.0, 1.0, 10.0

    _budgets: ClassVar[dict[int, RetryBudget]] = {}  # by id() of the transport

    __slots__ = ("tokens", "taken", "counted", "refilled", "retries", "waiting")

    def __init__(self) -> None:
        self.tokens = self.MAX_TOKENS
        self.taken = 0  # calls the service took (the callers count them)
        self.counted = 0  # `taken` when tokens were last earned
        self.refilled: float | None = None  # loop time of the last refill
        self.retries = 0  # sent again, in all
        self.waiting = 0  # retries waiting for a token now

    @classmethod
    def of(cls, nc: Transport) -> RetryBudget:
        budget = cls._budgets.get(id(nc))
        if budget is None:
            budget = cls._budgets[id(nc)] = cls()
        return budget

    def _refill(self, now: float) -> None:
        since = 0.0 if self.refilled is None else now - self.refilled
        earned = (self.taken - self.counted) * self.PER_TAKEN + since * self.PER_SECOND
        self.tokens = min(self.MAX_TOKENS, self.tokens + earned)
        self.counted, self.refilled = self.taken, now

    async def spend(self, give_up: float | None) -> bool:
        """Take a token, waiting for one at most until `give_up` (loop time); False: none in time."""
        loop = asyncio.get_running_loop()
        self.waiting += 1
        try:
            while True:
                now = loop.time()
                self._refill(now)
                if self.tokens >= 1:
                    self.tokens -= 1
                    self.retries += 1
                    return True
                wait = (1 - self.tokens) / self.PER_SECOND
                if give_up is not None and now + wait >= give_up:
                    return False
                await asyncio.sleep(min(wait, 0.05))  # (calls taken meanwhile earn tokens sooner)
        finally:
            self.waiting -= 1


def retry_wait(hint: float) -> float:
    """Seconds before sending a refused call again: the service's hint (at least `MIN_RETRY_AFTER`,
    also when a peer hinted 0) and up to a quarter as much again at random, so refused clients
    spread out."""
    wait = max(MIN_RETRY_AFTER, hint)
    return wait + random.uniform(0.0, wait / 4)


def next_wait(refused: Overloaded, give_up: float | None, tries: int) -> float | None:
    """How long to wait before try `tries + 1` of a refused call; None: no more tries (it has no
    deadline and made its tries, or its deadline, `give_up` on the loop's clock, would pass before
    an answer could come: the wait, then as long again as the hint says a call waits there now (the
    loop's lag, a typical call). A try that cannot be answered in time only adds to the load that
    refused it: at the end of a flood, such tries kept the service busy for up to a deadline)."""
    wait = retry_wait(refused.retry_after)
    if give_up is None:
        return wait if tries < MAX_TRIES_WITHOUT_DEADLINE else None
    answered_by = asyncio.get_running_loop().time() + wait + max(MIN_RETRY_AFTER, refused.retry_after)
    return wait if answered_by < give_up else None


async def _answer_within(future: asyncio.Future[Msg], seconds: float | None) -> Msg | None:
    """What arrives on `future` within `seconds` (None: nothing; `seconds` None: no limit)."""
    if not future.done():
        await asyncio.wait((future,), timeout=seconds)
    return future.result() if future.done() else None


async def absorbed(
    nc: Transport,
    subject: str,
    body: bytes,
    headers: dict[str, str] | None,
    refusal: Msg,
    refused: Overloaded,
    give_up: float | None,
    idempotent: bool,
    queue_group: bool,
    name: str,
    info: CallInfo | None = None,
) -> Msg:
    """The answer to a refused request, sent again as the module says; raises `refused` (the last
    refusal) when it may not be sent again, its deadline (`give_up`, loop time) would pass first or
    the retry budget has no token in time, DEADLINE_EXCEEDED when no answer comes in time."""
    get_requests = getattr(nc, "requests", None)
    requests = get_requests() if get_requests is not None else None
    reply = refusal.subject
    future = requests.listen(reply) if requests is not None else None
    if future is None:  # no same reply subject: a fresh request, safe for idempotent calls only
        if not idempotent:
            raise refused
        return await _fresh_tries(nc, subject, body, headers, refused, give_up, name, info)
    if not (idempotent or queue_group):
        requests.forget(reply)  # type: ignore[union-attr]
        raise refused
    assert requests is not None
    loop = asyncio.get_running_loop()
    budget = RetryBudget.of(nc)
    tries = 1
    try:
        while True:
            wait = next_wait(refused, give_up, tries)
            if wait is None:
                raise refused
            answer = await _answer_within(future, wait)  # another receiver of an earlier try may answer
            if answer is None:
                if not await budget.spend(give_up):
                    raise refused
                answer = future.result() if future.done() else None
            if answer is None:
                tries += 1
                if info is not None:
                    info.retries += 1
                await requests.send(subject, body, {**(headers or {}), RETRY: str(tries)}, reply)
                answer = await _answer_within(future, None if give_up is None else max(0.0, give_up - loop.time()))
                if answer is None:
                    raise RpcError(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded", method=name)
            error = error_from_headers(answer.headers, name)
            if not isinstance(error, Overloaded):
                budget.taken += 1
                return answer  # an answer, or an error that is the caller's to see
            refused = error
            future = requests.listen(reply)
            assert future is not None
    finally:
        requests.forget(reply)


async def _fresh_tries(
    nc: Transport,
    subject: str,
    body: bytes,
    headers: dict[str, str] | None,
    refused: Overloaded,
    give_up: float | None,
    name: str,
    info: CallInfo | None,
) -> Msg:
    """An idempotent call sent again as new requests while it is refused (within the same bounds)."""
    loop = asyncio.get_running_loop()
    budget = RetryBudget.of(nc)
    tries = 1
    while True:
        wait = next_wait(refused, give_up, tries)
        if wait is None:
            raise refused
        await asyncio.sleep(wait)
        if not await budget.spend(give_up):
            raise refused
        tries += 1
        if info is not None:
            info.retries += 1
        remaining = None if give_up is None else max(0.0, give_up - loop.time())
        try:
            answer = await nc.request(subject, body, timeout=remaining, headers=headers or None)
        except nats.errors.Error as failed:
            raise request_failed(failed, subject, name) from failed
        again = error_from_headers(answer.headers, name)
        if not isinstance(again, Overloaded):
            budget.taken += 1
            return answer
        refused = again

class Reopening:
    """A server stream's request sent again after a refusal (its first message, an end marker with
    the refusal, arrived on the call's inbox `R` before anything else): to the same subject, with `R`
    as its reply subject again and `Nats-Retry`, after the hint and a token of the `RetryBudget`;
    what the service sends next arrives on `R` as for the first try. `give_up` is called with the
    refusal when the call may not wait for another try (its deadline, the budget, the tries)."""

    __slots__ = ("nc", "subject", "body", "headers", "reply", "deadline", "name", "give_up", "tries", "task", "info")

    def __init__(
        self,
        nc: Transport,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        reply: str,
        deadline: float | None,
        name: str,
        give_up: Callable[[RpcError], None],
        info: CallInfo | None = None,
    ) -> None:
        self.nc = nc
        self.info = info  # what interceptors see: counts the retries
        self.subject = subject
        self.body = body
        self.headers = headers
        self.reply = reply
        self.deadline = deadline  # loop time (None: no deadline)
        self.name = name
        self.give_up = give_up
        self.tries = 1
        self.task: asyncio.Task[None] | None = None

    def refused(self, refusal: Overloaded) -> bool:
        """The service refused the last try: send again later (True), or not at all (False)."""
        wait = next_wait(refusal, self.deadline, self.tries)
        if wait is None:
            return False
        if self.task is not None and not self.task.done():
            return True  # (another receiver refused the same try: one retry is enough)
        self.task = asyncio.get_running_loop().create_task(self._again(wait, refusal), name=f"betterproto-nats retry {self.name}")
        return True

    async def _again(self, wait: float, refusal: Overloaded) -> None:
        await asyncio.sleep(wait)
        if not await RetryBudget.of(self.nc).spend(self.deadline):
            self.give_up(refusal)
            return
        self.tries += 1
        if self.info is not None:
            self.info.retries += 1
        try:
            await self.nc.publish(self.subject, self.body, reply=self.reply, headers={**self.headers, RETRY: str(self.tries)})
        except nats.errors.Error as failed:
            self.give_up(request_failed(failed, self.subject, self.name))

    def cancel(self) -> None:
        task, self.task = self.task, None
        if task is not None and not task.done():
            task.cancel()
