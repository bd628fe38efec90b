"""The context of the call a handler is serving: `betterproto_nats.current_call()`."""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol

from ..core.headers import BLOB_SIZE, user_headers


@dataclass(slots=True)
class CallContext:
    """What a handler may want to know about its call, and the response headers it sets."""

    method: str  # "package.Service/Method"
    subject: str  # the endpoint subject the call arrived on
    headers: dict[str, str]  # the caller's headers, without protocol headers
    deadline: float | None = None  # unix epoch seconds, or None for no deadline
    response_headers: dict[str, str] = field(default_factory=dict)

    def set_response_headers(self, headers: Mapping[str, str] | None = None, **more: str) -> None:
        """Headers to send back with the response (unary, client stream) or first message (streams)."""
        self.response_headers.update(user_headers({**(headers or {}), **more}))

    def set_blob_size(self, size: int) -> None:
        """A chunked download's total size in bytes, sent with its first chunk (before the first
        `yield`): the client's progress callback receives it as `total`."""
        if size < 0:
            raise ValueError("a blob size is not negative")
        self.response_headers[BLOB_SIZE] = str(int(size))

    def time_remaining(self) -> float | None:
        """Seconds until the deadline (may be negative), or None without one."""
        return None if self.deadline is None else self.deadline - time.time()

    def get_context(self) -> CallContext:
        return self


class ServedCall(Protocol):
    """What the running handler's call is known by: its `CallContext`, or a call that makes it when
    first asked (a unary call: most handlers never ask)."""

    def get_context(self) -> CallContext: ...


_current: ContextVar[ServedCall] = ContextVar("betterproto_nats_call")


def current_call() -> CallContext:
    """The call being served by the running handler; RuntimeError outside a handler."""
    try:
        served = _current.get()
    except LookupError:
        raise RuntimeError("current_call() is only available inside a betterproto-nats handler") from None
    return served.get_context()


# Runs for every call: the context variable's own `set` (no Python frame around it).
set_current_call: Callable[[ServedCall], object] = _current.set


@contextlib.contextmanager
def call_context(
    method: str = "test.Service/Method",
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float | None = None,
    subject: str = "test.method",
) -> Iterator[CallContext]:
    """Run a handler outside a served call, as a unit test does: `current_call()` inside the block
    returns this context (caller `headers`, a deadline `timeout` seconds away), and the handler's
    response headers can be read from it afterwards."""
    context = CallContext(
        method=method,
        subject=subject,
        headers=dict(headers or {}),
        deadline=None if timeout is None else time.time() + timeout,
    )
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)
