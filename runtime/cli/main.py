"""`betterproto-nats`: the parser, the connection (natscli's flags), where schemas come from, and
errors as exit statuses. The commands themselves are `show.py` (ls, describe, stats) and `call.py`."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any, Awaitable, Callable, Sequence

import nats
import nats.errors
from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError, grpc_number
from ..net.credentials import credential_options
from . import call, gateway, show

DEFAULT_SERVER = "nats://127.0.0.1:4222"
# Exit statuses: 64 + the gRPC number of the error's code (as grpcurl); a code of a service's own is UNKNOWN.
EXIT_BASE = 64
Command = Callable[[argparse.Namespace, NATS], Awaitable[int]]


def exit_status(code: str) -> int:
    """The process's exit status for an error code (64 + its gRPC number; UNKNOWN for others)."""
    return EXIT_BASE + grpc_number(code)


def _connection_flags(parser: argparse.ArgumentParser, inherit: bool) -> None:
    """natscli's flags; on a subcommand they default to what was given before it (`inherit`)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if inherit else value

    group = parser.add_argument_group("connection")
    group.add_argument("-s", "--server", default=default(os.environ.get("NATS_URL") or DEFAULT_SERVER),
                       help="NATS server URL(s), comma-separated (default: $NATS_URL or %s)" % DEFAULT_SERVER)  # fmt: skip
    group.add_argument("--creds", default=default(None), help="NATS credentials file")
    group.add_argument("--user", default=default(None))
    group.add_argument("--password", default=default(None))
    group.add_argument("--token", default=default(None))
    group.add_argument("--tlsca", "--tls-ca", dest="tls_ca", default=default(None), help="CA certificate file")
    group.add_argument("--tlscert", "--tls-cert", dest="tls_cert", default=default(None), help="client certificate file")
    group.add_argument("--tlskey", "--tls-key", dest="tls_key", default=default(None), help="client key file")
    group.add_argument("--connect-timeout", type=float, default=default(5.0), help="seconds to reach the server")
    schemas = parser.add_argument_group("schemas (default: from the services, by reflection)")
    schemas.add_argument("--proto-path", "-I", action="append", default=default([]), metavar="DIR", help="import path of --proto files")
    schemas.add_argument("--proto", action="append", default=default([]), metavar="FILE", help="a .proto file (services that publish no schema)")
    schemas.add_argument("--descriptor-set", action="append", default=default([]), metavar="FILE",
                         help="a FileDescriptorSet (buf build -o FILE, protoc -o FILE --include_imports)")  # fmt: skip
    schemas.add_argument("--wait", type=float, default=default(1.0), help="seconds to wait for services to answer discovery")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="betterproto-nats",
        description="Call and inspect betterproto-nats / protoc-gen-nats-micro services over NATS.",
        epilog="`betterproto-nats serve module:Class ...` runs services (see `betterproto-nats serve --help`). "
        "Exit status on an error: 64 + the gRPC number of its code (INVALID_ARGUMENT 67, NOT_FOUND 69, ...).",
    )
    _connection_flags(top, inherit=False)
    commands = top.add_subparsers(dest="command", required=True, metavar="{ls,describe,call,stats,gateway,serve}")
    for name, register in (
        ("ls", show.add_ls), ("describe", show.add_describe), ("call", call.add_call), ("stats", show.add_stats), ("gateway", gateway.add_gateway)
    ):  # fmt: skip
        sub = register(commands)
        _connection_flags(sub, inherit=True)
    return top


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "servers": args.server.split(","),
        "allow_reconnect": False,
        "connect_timeout": args.connect_timeout,
        "max_reconnect_attempts": 0,
    }
    if getattr(args, "reconnect", False):  # a long-running command (gateway): through server restarts
        options.update(allow_reconnect=True, max_reconnect_attempts=-1)
    options.update(credential_options(args))
    return options


async def _quiet(error: Exception) -> None:
    """nats-py's error callback: the command reports what matters itself."""


def as_rpc_error(error: OSError | ValueError) -> RpcError:
    """A local failure (a file, a header the protocol reserves) as an error of the matching code."""
    if isinstance(error, FileNotFoundError):
        return RpcError(ErrorCode.NOT_FOUND, f"{error.filename}: {error.strerror}")
    if isinstance(error, PermissionError):
        return RpcError(ErrorCode.PERMISSION_DENIED, f"{error.filename}: {error.strerror}")
    if isinstance(error, OSError):
        return RpcError(ErrorCode.UNAVAILABLE, str(error) or type(error).__name__)
    return RpcError(ErrorCode.INVALID_ARGUMENT, str(error))


def report(error: RpcError, as_json: bool) -> None:
    """An error as one line: `CODE: message` on stderr, or JSON on stdout with --json."""
    if as_json:
        print(json.dumps({"error": {"code": str(error.code), "message": error.message}}), flush=True)
    else:
        print(f"error: {error.code}: {error.message}", file=sys.stderr, flush=True)


async def _run(args: argparse.Namespace) -> int:
    command: Command = args.run
    try:
        # nats-py keeps trying a server that is not there: the wait is bounded here
        nc = await asyncio.wait_for(nats.connect(**_connect_options(args), error_cb=_quiet), args.connect_timeout)
    except (OSError, asyncio.TimeoutError, nats.errors.Error) as error:
        why = f"no answer within {args.connect_timeout:g} s" if isinstance(error, asyncio.TimeoutError) else str(error) or type(error).__name__
        raise RpcError(ErrorCode.UNAVAILABLE, f"cannot connect to {args.server}: {why}") from None
    try:
        return await command(args, nc)
    finally:
        try:
            await nc.close()
        except Exception:  # already closed
            pass


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, run, exit with the command's status."""
    args = parser().parse_args(argv)
    try:
        status = asyncio.run(_run(args))
    except (RpcError, OSError, ValueError) as error:
        failure = error if isinstance(error, RpcError) else as_rpc_error(error)
        report(failure, getattr(args, "json", False))
        status = exit_status(str(failure.code))
    except KeyboardInterrupt:
        status = 130
    except BrokenPipeError:  # `| head`: the reader left
        status = 0
    sys.exit(status)
