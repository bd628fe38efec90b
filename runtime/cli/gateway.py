"""`betterproto-nats gateway`: the HTTP gateway (`betterproto_nats.gateway`, the `gateway` extra) in
front of the services found by discovery (or the --proto / --descriptor-set files)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from .sources import catalog_of


def add_gateway(commands: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser("gateway", help="serve the services over HTTP: JSON, SSE, NDJSON, WebSockets, OpenAPI")
    sub.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    sub.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s; 0: a free one)")
    sub.add_argument("--pass-header", action="append", metavar="NAME", help="a request header passed on as a call header (repeatable; default Authorization)")
    sub.add_argument("--max-body", type=int, default=4 * 1024 * 1024, help="bytes of a request body, an NDJSON line or a WebSocket frame (default %(default)s)")
    sub.add_argument("--sse-keepalive", type=float, default=15.0, help="seconds of silence after which an SSE stream gets a comment line (0: never; default %(default)s)")
    sub.add_argument("--omit-defaults", action="store_true", help="leave fields at their default value out of answers")
    sub.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="uvicorn's log level")
    sub.set_defaults(run=gateway, reconnect=True)
    return sub


async def gateway(args: argparse.Namespace, nc: NATS) -> int:
    try:
        from ..gateway.app import GatewayOptions
        from ..gateway.command import serve
    except ImportError as error:
        raise RpcError(ErrorCode.UNAVAILABLE, f"{error.name or error}: install the gateway with pip install 'betterproto-nats[gateway]'") from None
    catalog = await catalog_of(args, nc)
    options = GatewayOptions(
        pass_headers=tuple(args.pass_header or ("Authorization",)), max_body=args.max_body, emit_defaults=not args.omit_defaults, sse_keepalive=args.sse_keepalive
    )
    await serve(nc, catalog, host=args.host, port=args.port, options=options, log_level=args.log_level, ready=functools.partial(print, flush=True, file=sys.stdout))
    return 0
