"""RPC errors and their codes, as they travel in the NATS micro error headers."""

from __future__ import annotations


class ErrorCode:
    """Error codes; generated `<Service>ErrorCode` classes extend this with a service's own codes."""

    # Built in, as in the Go plugin.
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    # Ours.
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DATA_LOSS = "DATA_LOSS"


# The gRPC number of each code (gRPC's names: a service's own codes have none): what the CLI's exit
# statuses and the gateway's WebSocket close codes are made of.
GRPC_NUMBERS = {
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


def grpc_number(code: str) -> int:
    """A code's gRPC number; UNKNOWN's (2) for a code gRPC does not have."""
    return GRPC_NUMBERS.get(code, 2)


class RpcError(Exception):
    """An RPC failed with `code` and `message`; raise it in a handler to fail the call that way.
    `retry_after`: seconds the peer asked us to wait before trying again (None: it said nothing)."""

    def __init__(self, code: str, message: str = "", *, method: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.method = method
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.code}: {self.message}" if self.message else f"{where}{self.code}"

    def __repr__(self) -> str:
        return f"RpcError({self.code!r}, {self.message!r}, method={self.method!r})"


class Overloaded(RpcError):
    """The service refused the call before starting it: it is past its capacity (calls in progress,
    its event loop's lag, its outgoing backlog). Read from the wire this is a peer's claim: the service
    that refused ran nothing, but another subscriber of the subject may have run the call (see
    `RetryPolicy`, which sends again after `retry_after` seconds only calls that are safe to repeat)."""

    retry_after: float

    def __init__(self, message: str, *, retry_after: float, method: str | None = None, reason: str | None = None) -> None:
        super().__init__(ErrorCode.RESOURCE_EXHAUSTED, message, method=method, retry_after=retry_after)
        # What ran out, where the refusal was made ("loop_lag", "budget", "concurrency", "outbound",
        # "client"); None for a refusal read from the wire (the reason is not sent).
        self.reason = reason

    def __repr__(self) -> str:
        return f"Overloaded({self.message!r}, retry_after={self.retry_after!r}, method={self.method!r})"
