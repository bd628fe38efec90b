"""`ServedCall`: a served stream call's state, what it holds and what ends it: its moves, what ends
it early (`interrupt`: the client's cancel or silence, an overrun window, a denied permission, what
its session reports), and `release`, the one place it lets go. `Responder` runs it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nats.aio.msg import Msg

from ..core.errors import ErrorCode, RpcError
from ..core.headers import caller_headers
from ..core.states import SERVER_MOVES, InvalidTransition, ServerState
from ..core.subjects import is_literal
from ..encoding.codec import Codec
from ..features.interceptors import CallInfo
from ..features.persistence import BlobCopy
from ..health.peers import PeerLiveness
from ..net.mux import let_go
from ..net.transport import Transport
from ..schema.spec import MethodSpec
from ..streaming.deadline import Deadline
from ..streaming.inbox import Inbox
from ..streaming.session import StreamSession
from ..streaming.writer import StreamWriter
from .context import CallContext
from .policy import ServingPolicy, log


@dataclass(frozen=True)
class Interruption:
    """Why a call must end before its handler is done, and whether the client is to be told."""

    error: RpcError
    tell_client: bool


class ServedCall:
    """A served stream call's state and holdings, and what ends it (see the module).

    Slots, not a `__dict__`: thousands of streams each hold one for as long as they last."""

    __slots__ = (
        "nc", "impl", "method", "name", "codec", "msg", "policy", "state", "v2", "heartbeat", "deadline", "session",
        "peer_subject", "peers", "task", "interruption", "stopping", "inboxes", "info", "exception", "watched",
        "context", "writer", "answered", "reply", "request", "response", "blob",
    )

    def __init__(
        self, nc: Transport, impl: Any, method: MethodSpec[Any, Any], name: str, codec: Codec, msg: Msg, policy: ServingPolicy
    ) -> None:
        self.nc = nc
        self.impl = impl
        self.method = method
        self.name = name
        self.codec = codec
        self.msg = msg
        self.policy = policy
        self.state = ServerState.OPENING
        self.v2 = False  # negotiated in `run`, inside the call's error handling
        self.heartbeat = 0.0
        self.deadline = Deadline.after(method.timeout)
        self.session: StreamSession | None = None
        self.peer_subject: str | None = None  # the client's liveness subject, checked (shared heartbeats)
        self.peers: PeerLiveness | None = None  # our connection's, when heartbeats are shared
        self.task: asyncio.Task[Any] | None = None
        self.interruption: Interruption | None = None
        self.stopping = False  # the service is stopping: answer now, hold nothing back
        self.inboxes: list[Inbox] = []  # what this call subscribed to (released at its end)
        self.info: CallInfo | None = None  # what interceptors see, when there are any
        self.exception: BaseException | None = None  # a handler's unexpected exception
        self.watched: list[str] = []  # subjects whose permission errors end this call
        self.writer: StreamWriter | None = None  # the stream to the client's `R`, for shapes that send one
        self.answered = (0, 0)  # a single final answer sent: (1, its size)
        # The request's NATS reply subject, or "" when it has none we may publish to.
        self.reply = msg.reply if msg.reply and is_literal(msg.reply) else ""
        self.request: Any = None  # the decoded request (unary and server streams)
        self.response: Any = None  # the handler's single response (unary and client streams)
        self.blob: BlobCopy | None = None  # a chunked download's blob on its way to the object store
        self.context = CallContext(
            method=name,
            subject=msg.subject,
            headers=caller_headers(msg.headers),
            deadline=None,
        )

    def move(self, state: ServerState) -> None:
        if state not in SERVER_MOVES[self.state]:
            raise InvalidTransition(f"{self.name}: {self.state.value} -> {state.value}")
        self.state = state

    def error(self, code: str, message: str) -> RpcError:
        return RpcError(code, message, method=self.name)

    @property
    def handler(self) -> Any:
        return getattr(self.impl, self.method.py_name)

    def watch_permissions(self, subject: str) -> None:
        """A permission violation on `subject` (our publish or subscription) ends the call at once."""
        self.nc.watch_permissions(subject, self.denied)
        self.watched.append(subject)

    def denied(self, text: str) -> None:
        self.interrupt(self.error(ErrorCode.PERMISSION_DENIED, text), tell_client=True)

    def overflowed(self, error: RpcError) -> None:
        """The client sent more than its window or our buffers allow."""
        self.interrupt(error, tell_client=True)

    def interrupt(self, error: RpcError, tell_client: bool) -> None:
        """End the call now with `error`: the handler is cancelled. The client is told when
        `tell_client` (it overran its window, a permission was denied), not when it cancelled or is
        gone. The first reason counts."""
        if self.interruption is not None:
            return
        self.interruption = Interruption(error, tell_client)
        if not tell_client and self.session is not None:
            self.session.close()  # send nothing more
        if self.state is ServerState.SERVING and self.task is not None:
            self.task.cancel()

    def end_idle(self, quiet: float) -> None:
        """The service is stopping: streams that wait for a client which sent nothing for `quiet`
        seconds end now instead of holding `stop()` for its grace period."""
        for inbox in self.inboxes:
            inbox.end_when_quiet(quiet, ErrorCode.UNAVAILABLE, "the service is stopping")

    def peer_unreachable(self, why: str, tell: bool) -> None:
        """The client is gone, or our connection was interrupted; with `tell` it is told at once (no
        first-hop probing): it may only have gone silent (shared heartbeats), or still be there."""
        if tell and self.writer is not None:
            self.writer.first_hop = None
        self.interrupt(self.error(ErrorCode.UNAVAILABLE, f"the client is unreachable: {why}"), tell_client=tell)

    def peer_cancelled(self, reason: str, code: str) -> None:
        self.interrupt(self.error(code, reason or "cancelled"), tell_client=False)

    def messages_lost(self, why: str) -> None:
        self.interrupt(self.error(ErrorCode.DATA_LOSS, why), tell_client=True)

    def peer_released(self, missing: str | None) -> None:
        """The client let go of the call but its cancel did not arrive (or what it sent did not)."""
        if missing is not None:
            error = self.error(ErrorCode.DATA_LOSS, f"the client ended the call, but {missing} did not arrive")
        else:
            error = self.error(ErrorCode.CANCELLED, "the client ended the call (its cancel did not arrive)")
        self.interrupt(error, tell_client=False)

    async def release(self) -> None:
        """The one place a call lets go of what it holds: session, permission watches, inboxes."""
        if self.session is not None:  # released: the client was sent how the call ended
            self.session.close(released=self.interruption is None or self.interruption.tell_client)
        for subject in self.watched:
            self.nc.forget_permissions(subject)
        steps: list[Callable[[], Awaitable[None]]] = [inbox.close for inbox in self.inboxes]
        peers, self.peers = self.peers, None
        if peers is not None:
            steps.append(peers.release)
        await let_go(steps)

    def internal(self, raised: BaseException) -> RpcError:
        """A handler's unexpected exception: logged with its traceback here; the caller gets
        INTERNAL with a generic text unless the service exposes errors (for development)."""
        log.error("handler %s failed", self.name, exc_info=raised)
        self.exception = raised
        text = str(raised) or type(raised).__name__
        return self.error(ErrorCode.INTERNAL, text if self.policy.expose_errors else "internal error")
