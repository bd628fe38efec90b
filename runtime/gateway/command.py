"""`betterproto-nats gateway -s NATS_URL [--host H] [--port P]`: the gateway as a process, in front of
the services it finds on the account (or those of `--proto` / `--descriptor-set`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Sequence

import nats
import uvicorn
from nats.aio.client import Client as NATS

from ..reflection.catalog import Catalog
from .app import GatewayOptions, create_app
from .mapping import DEFAULT_PASSED_HEADERS

log = logging.getLogger("betterproto_nats.gateway")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="betterproto-nats gateway",
        description="An HTTP gateway to the services on NATS: JSON, server-sent events, NDJSON and WebSockets; "
        "OpenAPI at /openapi.json, a page to try every method at /.",
    )
    parser.add_argument("-s", "--server", default="nats://127.0.0.1:4222", help="NATS URL (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s)")
    parser.add_argument("--proto", action="append", default=[], metavar="FILE", help="serve the services of this .proto (repeatable) instead of discovering them")
    parser.add_argument("-I", "--proto-path", action="append", default=[], metavar="DIR", help="import path for --proto (repeatable)")
    parser.add_argument("--descriptor-set", metavar="FILE", help="serve the services of this FileDescriptorSet (buf build -o, protoc -o --include_imports)")
    parser.add_argument("--discover-timeout", type=float, default=1.0, help="seconds to wait for services' answers when discovering (default %(default)s)")
    parser.add_argument(
        "--pass-header",
        action="append",
        metavar="NAME",
        help=f"request header passed on as a call header (repeatable; default {', '.join(DEFAULT_PASSED_HEADERS)}); spelled as the service reads it",
    )
    parser.add_argument("--max-body", type=int, default=GatewayOptions.max_body, help="bytes of a request body, an NDJSON line or a WebSocket frame (default %(default)s)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="uvicorn's log level")
    return parser


async def load_catalog(args: argparse.Namespace, nc: NATS) -> Catalog:
    if args.descriptor_set:
        return Catalog.from_descriptor_set(Path(args.descriptor_set).read_bytes())
    if args.proto:
        return Catalog.from_proto_files(args.proto_path or ["."], args.proto)
    return await Catalog.discover(nc, timeout=args.discover_timeout)


async def serve(args: argparse.Namespace, ready: "asyncio.Event | None" = None) -> None:
    """Connect, find the services, serve HTTP until stopped (SIGINT/SIGTERM through uvicorn)."""
    nc = await nats.connect(args.server, connect_timeout=5, max_reconnect_attempts=-1)
    try:
        catalog = await load_catalog(args, nc)
        methods = sum(len(service.methods) for service in catalog.services)
        for problem in getattr(catalog, "problems", ()):
            log.warning("%s", problem)
        options = GatewayOptions(pass_headers=tuple(args.pass_header or DEFAULT_PASSED_HEADERS), max_body=args.max_body)
        app = create_app(nc, catalog, options=options)
        config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="off", log_level=args.log_level, ws_max_size=args.max_body)
        server = uvicorn.Server(config)
        serving = asyncio.ensure_future(server.serve())
        while not server.started and not serving.done():  # bounded by uvicorn's startup
            await asyncio.sleep(0.02)
        if server.started:
            port = server.servers[0].sockets[0].getsockname()[1]  # the real one when --port 0
            print(f"gateway on http://{args.host}:{port}/ : {len(catalog.services)} services, {methods} methods", flush=True)
        await serving
    finally:
        await nc.close()  # a client only: nothing to drain (nats-py's drain does not know the fast paths' subscriptions)


def main(argv: Sequence[str] | None = None) -> int:
    """The `gateway` subcommand: parse `argv` (without the subcommand's name) and serve."""
    args = parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    except (OSError, nats.errors.NoServersError) as error:
        print(f"betterproto-nats gateway: {error}", file=sys.stderr)
        return 1
    return 0
