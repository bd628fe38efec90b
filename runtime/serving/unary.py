"""The server's side of one unary call (`UnaryCall`, one small object per call, no inbox or session)
and `ServedMethod`, what every call of one endpoint shares. The hot path of a service."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import caller_headers
from ..core.negotiation import request_deadline
from ..core.states import SERVER_MOVES, InvalidTransition, ServerState
from ..core.subjects import is_literal_reply
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo, Direction, Side, outcome_of
from ..features.persistence import StoreKeys
from ..net.transport import Transport
from ..schema.spec import MethodSpec
from ..streaming.deadline import Deadline
from .answer import answer
from .context import CallContext, set_current_call
from .discovery import EndpointRecord
from .policy import PEER_FAULTS, ServingPolicy, log, peer_faults


# The states `run` moves a call through, looked up once (an enum member's lookup costs a Python call).
_OPENING, _SERVING, _FINISHING = ServerState.OPENING, ServerState.SERVING, ServerState.FINISHING
_CLOSED, _FAILED = ServerState.CLOSED, ServerState.FAILED


@dataclass(frozen=True, slots=True)
class ServedMethod:
    """What every call of one endpoint shares (built once when serving starts)."""

    nc: Transport
    method: MethodSpec[Any, Any]
    name: str  # "package.Service/Method"
    handler: Callable[..., Any]
    codec: Codec
    policy: ServingPolicy
    task_name: str
    record: EndpointRecord  # what `$SRV` STATS report: each call's time and error code
    done: Callable[[UnaryCall], None]  # a call that never ran ends (its endpoint lets go of it)
    ended: Callable[[UnaryCall, int, str | None], None]  # a call ran to its end: its time (ns) and error code counted too
    decode: Callable[[bytes], Any]  # the request's decoder (INVALID_ARGUMENT when it does not decode)
    encode: Callable[[Any], bytes]  # the response type's encoder
    shed: Callable[[UnaryCall, float], None]  # refuse a call that never started: its batch kept the loop this long
    max_turn: float | None  # seconds a batch of calls may keep the loop before the rest are shed (None: never)


class UnaryCall:
    """The server's side of one unary call (run by a `UnaryBatch`): the request decoded, the
    handler run with `current_call()` set and the call's deadline applied, the response (or the
    error) published to the request's reply subject. One small object per call (no inbox, session
    or stream state); states as a `Responder`'s: OPENING -> SERVING -> FINISHING -> CLOSED | FAILED.

    What every call reads is set when it is made; what few calls need are class defaults until
    then (measured: a call object with fifteen slots set costs half as much again). Its `CallContext`
    is made only when something asks for it (`current_call()`, interceptors, response headers): most
    handlers never do."""

    state = ServerState.OPENING
    deadline: Deadline | None = None
    exception: BaseException | None = None  # a handler's unexpected exception
    answered = (0, 0)
    task: asyncio.Task[Any] | None = None  # what runs it, once it has a deadline to cancel it at
    expiry: asyncio.TimerHandle | None = None  # the deadline's timer, armed once the call waits (`waits`)
    alone = False  # it runs in a task of its own from the start: its deadline is armed before its handler runs
    expired = False  # the deadline passed while the handler ran: it was cancelled

    def __init__(self, served: ServedMethod, msg: Msg) -> None:
        self.served = served
        self.msg = msg
        self.context: CallContext | None = None  # made by `get_context()`, on first use
        self.info: CallInfo | None = None  # what interceptors see, when there are any
        self.keys: StoreKeys | None = None  # a persisted method's storage keys

    def get_context(self) -> CallContext:
        """The call's context (`current_call()`), made the first time it is asked for."""
        context = self.context
        if context is None:
            msg, deadline = self.msg, self.deadline
            headers = caller_headers(msg.headers) if msg.headers else {}
            context = self.context = CallContext(self.served.name, msg.subject, headers, None if deadline is None else deadline.epoch)
        return context

    def move(self, state: ServerState) -> None:
        if state not in SERVER_MOVES[self.state]:
            raise InvalidTransition(f"{self.served.name}: {self.state.value} -> {state.value}")
        self.state = state

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.served.name)

    def intercept(self, direction: Direction, message: Any) -> Any:
        chain = self.served.policy.interceptors
        return message if chain is None or self.info is None else chain.message(self.info, direction, message)

    def internal(self, raised: BaseException) -> RpcError:
        """A handler's unexpected exception: logged here with its traceback; the caller gets INTERNAL
        with a generic text unless the service exposes errors."""
        log.error("handler %s failed", self.served.name, exc_info=raised)
        self.exception = raised
        text = str(raised) or type(raised).__name__
        return self.error(ErrorCode.INTERNAL, text if self.served.policy.expose_errors else "internal error")

    def persist(self, body: bytes) -> Awaitable[None] | None:
        """Store the encoded answer before it is sent, where the method's options say."""
        persistence = self.served.policy.persistence
        if self.keys is None or persistence is None:
            return None
        return persistence.store(self.served.method, self.keys, body, self.deadline, self.served.name)

    async def run(self) -> None:
        """Serve the call to its end, count it in the endpoint's STATS and let the endpoint know
        (without a done-callback per call)."""
        started = time.perf_counter_ns()
        served, msg = self.served, self.msg
        reply = msg.reply
        if not reply or not is_literal_reply(reply):
            served.ended(self, time.perf_counter_ns() - started, None)
            return  # nobody to answer: dropped
        policy = served.policy
        method = served.method
        headers = msg.headers
        error: RpcError | None = None
        response: Any = None
        try:
            deadline = None
            if headers or method.timeout is not None:
                deadline = self.deadline = _unary_deadline(method, headers)
            request = served.decode(msg.data)
            set_current_call(self)  # (its context is made if the handler asks for it)
            chain = policy.interceptors
            if chain is not None:
                self.info = info = CallInfo(
                    Side.SERVER, served.name.rsplit("/", 1)[0], method.name, method.cardinality, msg.subject, self.get_context().headers, method
                )
                await chain.start(info)  # may reject the call: the handler never runs
                request = chain.message(info, Direction.RECEIVED, request)
            persistence = policy.persistence
            if persistence is not None and method.persists:  # a request without a valid key fails here
                self.keys = persistence.keys(method, request, served.name)
            self.state = _SERVING  # (the moves of `run` are the legal ones, in order: no check per call)
            if self.alone:  # (no batch sees it wait: its deadline's timer, if any, from the start)
                self.waits()
            response = await served.handler(request)
        except RpcError as raised:
            error = raised
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled here: the call ends, the task does not
            if self.expired:
                error = self.error(ErrorCode.DEADLINE_EXCEEDED, "deadline exceeded")
            else:
                error = self.error(ErrorCode.UNAVAILABLE, "the service stopped before the call finished")
        except Exception as raised:
            error = self.internal(raised)
        expiry = self.expiry
        if expiry is not None:  # (no cancel from it after this: nothing before was left waiting)
            expiry.cancel()
        if error is not None and error.code in PEER_FAULTS:
            peer_faults.warning("call to %s on %s ended with %s", served.name, msg.subject, error)
        self.state = _FINISHING
        try:
            sending = answer(self, served, reply, response, error)
            if sending is not None:
                await sending
        except Exception:
            log.exception("could not finish %s", served.name)
        self.state = _FAILED if error is not None else _CLOSED
        try:
            if self.info is not None and policy.interceptors is not None:
                outcome = outcome_of(self.info, error, self.answered, (1, len(msg.data)), self.exception)
                await policy.interceptors.end(self.info, outcome)
        finally:
            served.ended(self, time.perf_counter_ns() - started, None if error is None else error.code)

    def waits(self) -> None:
        """The call waits (its batch saw it, or it runs alone): its deadline, if it has one, now
        cancels it when it passes. Armed only now: a handler that never waits cannot be cancelled,
        and a timer armed and cancelled for every call costs more than the rest of its bookkeeping.
        Not once its handler is over (it may wait for its answer to go out: no cancel then)."""
        deadline = self.deadline
        if deadline is not None and self.expiry is None and (self.state is _SERVING or self.state is _OPENING):
            self.task = asyncio.current_task()  # its batch's: a call that waits goes on in it
            self.expiry = asyncio.get_running_loop().call_at(deadline.at, self._expire)

    def _expire(self) -> None:
        """The call's deadline passed while its handler runs: it is cancelled (DEADLINE_EXCEEDED)."""
        if self.task is not None and not self.task.done():
            self.expired = True
            self.task.cancel()

    def done(self) -> None:
        self.served.done(self)


def _unary_deadline(method: MethodSpec[Any, Any], headers: Mapping[str, str] | None) -> Deadline | None:
    """The earlier of the method's `timeout` option and the caller's `Nats-Deadline` (malformed:
    INVALID_ARGUMENT). Asked only when there is either (`UnaryCall.run`)."""
    epoch = request_deadline(headers)
    if epoch is None:
        return Deadline.after(method.timeout)
    caller = Deadline.at_epoch(epoch)
    return caller if method.timeout is None else caller.earliest(Deadline(method.timeout))
