"""The gateway as a process: uvicorn on the runtime's loop, until SIGINT/SIGTERM. The command line
(`betterproto-nats gateway`, its flags, the connection and the catalog) is `cli/gateway.py`."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import uvicorn

from ..reflection.catalog import Catalog
from .app import GatewayOptions, create_app


async def serve(
    nc: Any,
    catalog: Catalog,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    options: GatewayOptions | None = None,
    log_level: str = "warning",
    ready: Callable[[str], None] = print,
) -> None:
    """Serve `catalog`'s methods over `nc` on http://host:port/ until uvicorn is told to stop (a
    signal); `ready` gets one line with the real URL (port 0 picks a free port) once it listens."""
    options = options or GatewayOptions()
    app = create_app(nc, catalog, options=options)
    config = uvicorn.Config(app, host=host, port=port, lifespan="off", log_level=log_level, ws_max_size=options.max_body)
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started and not serving.done():  # bounded by uvicorn's start-up
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            methods = sum(len(service.methods) for service in catalog.services)
            ready(f"gateway on http://{host}:{bound}/ : {len(catalog.services)} services, {methods} methods")
        await serving
    finally:
        if not serving.done():
            server.should_exit = True
            await asyncio.gather(serving, return_exceptions=True)
