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


class RpcError(Exception):
    """An RPC failed with `code` and `message`; raise it in a handler to fail the call that way."""

    def __init__(self, code: str, message: str = "", *, method: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.method = method

    def __str__(self) -> str:
        where = f"{self.method}: " if self.method else ""
        return f"{where}{self.code}: {self.message}" if self.message else f"{where}{self.code}"

    def __repr__(self) -> str:
        return f"RpcError({self.code!r}, {self.message!r}, method={self.method!r})"
