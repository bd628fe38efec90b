"""Interceptors: code that runs around every call, on either side, for all four RPC shapes.

Subclass `Interceptor` and override what you need; pass instances to `serve(..., interceptors=[...])`
or `<Service>NatsClient(nc, interceptors=[...])`. They run in the order given at the start of a call
and in reverse order at its end (like nested `async with` blocks); with none installed a call does no
interceptor work at all. Interceptors never see v2 control messages; chunk messages of chunked I/O
are counted in the outcome but not handed to `message` (they bypass the codec).
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Generic, Sequence, TypeVar

from ..core.errors import ErrorCode, RpcError
from ..schema.spec import Cardinality, MethodSpec


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class Direction(enum.Enum):
    SENT = "sent"
    RECEIVED = "received"


@dataclass
class CallInfo:
    """What an interceptor sees of a call, from its start: names, shape, subject and headers."""

    side: Side
    service: str  # "streaming.v1.StreamDemoService"
    method: str  # "CountUp"
    shape: Cardinality
    subject: str  # the endpoint subject
    # Client: the headers about to be sent (add or change them in `start`). Server: the caller's.
    headers: dict[str, str]
    spec: MethodSpec[Any, Any]
    started: float = field(default_factory=time.perf_counter)
    # Scratch space for interceptors that keep state per call (e.g. a span), keyed as they like.
    state: dict[Any, Any] = field(default_factory=dict)
    retries: int = 0  # client: how often the call was sent again after a refusal (calling/refusals.py)

    @property
    def full_name(self) -> str:
        """`package.Service/Method`."""
        return f"{self.service}/{self.method}"


@dataclass
class CallOutcome:
    """How a call ended: its code (None when it succeeded), duration and traffic each way."""

    code: str | None
    message: str
    duration: float  # seconds
    messages_sent: int
    messages_received: int
    bytes_sent: int
    bytes_received: int
    exception: BaseException | None = None  # server: a handler's unexpected exception, for its traceback
    retries: int = 0  # client: sent again after refusals

    @property
    def ok(self) -> bool:
        return self.code is None


class Interceptor:
    """Runs around every call; each hook is optional.

    - `start`: before anything is sent (client) or before the handler runs (server); may change the
      client's outgoing headers, and raise `RpcError` to reject the call.
    - `message`: sees each message in either direction, in order, once; returns it (or a replacement).
    - `end`: after the call ended, with its outcome.
    - `refused` (server): a call the service refused without starting it (admission control: at its
      limits, overloaded, stopping); `start` and `end` never run for it.
    """

    shapes: frozenset[Cardinality] = frozenset(Cardinality)  # the RPC shapes it runs for

    async def start(self, call: CallInfo) -> None:
        """Before the call; raise RpcError to reject it."""

    def message(self, call: CallInfo, direction: Direction, message: Any) -> Any:
        """Each message, sent or received; return it or a replacement of the same type."""
        return message

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        """After the call."""

    async def refused(self, call: CallInfo, error: RpcError) -> None:
        """A call the service refused before starting it, with the error its caller gets."""


Req = TypeVar("Req")
Resp = TypeVar("Resp")


class _ShapeInterceptor(Interceptor, Generic[Req, Resp]):
    """Typed hooks for calls of one shape: `request` sees each request message, `response` each
    response message, on either side (`start` and `end` as for every interceptor)."""

    def request(self, call: CallInfo, request: Req) -> Req:
        return request

    def response(self, call: CallInfo, response: Resp) -> Resp:
        return response

    def message(self, call: CallInfo, direction: Direction, message: Any) -> Any:
        is_request = (direction is Direction.SENT) == (call.side is Side.CLIENT)
        return self.request(call, message) if is_request else self.response(call, message)


class UnaryInterceptor(_ShapeInterceptor[Req, Resp]):
    """Runs for unary calls only."""

    shapes = frozenset({Cardinality.UNARY})


class ServerStreamInterceptor(_ShapeInterceptor[Req, Resp]):
    """Runs for server-streaming calls only (one request, many responses)."""

    shapes = frozenset({Cardinality.SERVER_STREAM})


class ClientStreamInterceptor(_ShapeInterceptor[Req, Resp]):
    """Runs for client-streaming calls only (many requests, one response)."""

    shapes = frozenset({Cardinality.CLIENT_STREAM})


class BidiInterceptor(_ShapeInterceptor[Req, Resp]):
    """Runs for bidirectional calls only."""

    shapes = frozenset({Cardinality.BIDI})


class Chain:
    """Interceptors composed once, when a server or client is built."""

    def __init__(self, interceptors: Sequence[Interceptor]) -> None:
        for interceptor in interceptors:
            if not isinstance(interceptor, Interceptor):
                raise TypeError(f"{interceptor!r} is not a betterproto_nats.Interceptor")
        self.interceptors = tuple(interceptors)
        # Only the hooks that are overridden run, so an interceptor that only ends costs nothing per message.
        self._message_hooks = tuple(i for i in interceptors if type(i).message is not Interceptor.message)

    @classmethod
    def of(cls, interceptors: Sequence[Interceptor] | None) -> Chain | None:
        """None when there are none: calls then skip interceptor work entirely."""
        return cls(interceptors) if interceptors else None

    async def start(self, call: CallInfo) -> None:
        started: list[Interceptor] = []
        call.state[Chain] = started
        call.state[Direction] = [i for i in self._message_hooks if call.shape in i.shapes]
        for interceptor in self.interceptors:
            if call.shape in interceptor.shapes:
                await interceptor.start(call)
                started.append(interceptor)

    def message(self, call: CallInfo, direction: Direction, message: Any) -> Any:
        for interceptor in call.state.get(Direction, ()):
            message = interceptor.message(call, direction, message)
        return message

    async def refused(self, call: CallInfo, error: RpcError) -> None:
        """`refused` of every interceptor for the call's shape; a failing one is logged."""
        for interceptor in self.interceptors:
            if call.shape in interceptor.shapes:
                try:
                    await interceptor.refused(call, error)
                except Exception:
                    log.exception("interceptor %r failed on a refused call to %s", interceptor, call.full_name)

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        """`end` of every interceptor whose `start` completed, in reverse order; a failing `end` is
        logged and does not stop the others."""
        for interceptor in reversed(call.state.get(Chain, [])):
            try:
                await interceptor.end(call, outcome)
            except Exception:
                log.exception("interceptor %r failed at the end of %s", interceptor, call.full_name)


def outcome_of(
    call: CallInfo,
    error: BaseException | None,
    sent: tuple[int, int],
    received: tuple[int, int],
    exception: BaseException | None = None,
) -> CallOutcome:
    """The outcome of `call` now: `error` (an RpcError, or anything else as CANCELLED), and the
    (messages, bytes) sent and received."""
    if error is None:
        code, message = None, ""
    elif isinstance(error, RpcError):
        code, message = error.code, error.message
    else:
        code, message = ErrorCode.CANCELLED, type(error).__name__
    return CallOutcome(
        code, message, time.perf_counter() - call.started, sent[0], received[0], sent[1], received[1], exception, call.retries
    )


log = logging.getLogger("betterproto_nats.calls")


class LoggingInterceptor(Interceptor):
    """One log record per call through the standard `logging` module (logger `betterproto_nats.calls`
    by default): INFO when it succeeded, WARNING with its code when it failed, ERROR with the
    traceback for a handler's unexpected exception (server side). The record's `extra` fields hold the
    same data for structured handlers: service, method, shape, side, code, duration, messages and bytes
    each way, subject."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    async def end(self, call: CallInfo, outcome: CallOutcome) -> None:
        fields = {
            "rpc_service": call.service,
            "rpc_method": call.method,
            "rpc_shape": call.shape.value,
            "rpc_side": call.side.value,
            "rpc_code": outcome.code or "OK",
            "rpc_duration_ms": round(outcome.duration * 1000, 3),
            "rpc_messages_sent": outcome.messages_sent,
            "rpc_messages_received": outcome.messages_received,
            "rpc_bytes_sent": outcome.bytes_sent,
            "rpc_bytes_received": outcome.bytes_received,
            "rpc_subject": call.subject,
        }
        text = "%s %s %s in %.1f ms (%d sent, %d received)"
        args = (
            call.side.value,
            call.full_name,
            f"{outcome.code}: {outcome.message}" if outcome.code and outcome.message else fields["rpc_code"],
            outcome.duration * 1000,
            outcome.messages_sent,
            outcome.messages_received,
        )
        if outcome.ok:
            self.logger.info(text, *args, extra=fields)
        elif outcome.exception is not None and call.side is Side.SERVER:
            self.logger.error(text, *args, extra=fields, exc_info=outcome.exception)
        else:
            self.logger.warning(text, *args, extra=fields)
