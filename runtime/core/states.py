"""The states of a call on each side and the moves between them: a client's `ClientCall` and a
server's responders allow only these (`InvalidTransition` otherwise, a bug). Pure tables, checked
inline by their owners (no call per move).
"""

from __future__ import annotations

import enum


class InvalidTransition(RuntimeError):
    """A call was asked to move where its state machine does not go: a bug in the runtime."""


class CallState(enum.Enum):
    """Where a call is; `ClientCall.move` allows only the transitions in `CLIENT_MOVES`."""

    __hash__ = object.__hash__  # members are singletons: identity, not Enum's hash of the name (per call)

    OPENING = "opening"  # subscribing, sending the request or waiting for the handshake ack
    OPEN = "open"  # messages flow in the call's directions
    HALF_CLOSED = "half-closed"  # we ended our direction; the server's is still open
    CLOSED = "closed"  # the server ended the call cleanly
    FAILED = "failed"  # ended with an error, by either side, or abandoned by the client


CLIENT_MOVES: dict[CallState, frozenset[CallState]] = {
    CallState.OPENING: frozenset({CallState.OPEN, CallState.FAILED}),
    CallState.OPEN: frozenset({CallState.HALF_CLOSED, CallState.CLOSED, CallState.FAILED}),
    CallState.HALF_CLOSED: frozenset({CallState.CLOSED, CallState.FAILED}),
    CallState.CLOSED: frozenset(),
    CallState.FAILED: frozenset(),
}


class ServerState(enum.Enum):
    """Where a served call is; `Responder.move` allows only the transitions in `SERVER_MOVES`."""

    __hash__ = object.__hash__  # members are singletons: identity, not Enum's hash of the name (per call)

    OPENING = "opening"  # reading the request, or the handshake
    SERVING = "serving"  # the handler runs
    FINISHING = "finishing"  # the outcome goes on the wire
    CLOSED = "closed"  # ended without an error
    FAILED = "failed"  # ended with an error (ours, the handler's, or the client's doing)


SERVER_MOVES: dict[ServerState, frozenset[ServerState]] = {
    ServerState.OPENING: frozenset({ServerState.SERVING, ServerState.FINISHING}),
    ServerState.SERVING: frozenset({ServerState.FINISHING}),
    ServerState.FINISHING: frozenset({ServerState.CLOSED, ServerState.FAILED}),
    ServerState.CLOSED: frozenset(),
    ServerState.FAILED: frozenset(),
}
