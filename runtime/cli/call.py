"""`call`: one method, JSON in and out, any shape. Unary and server streams take one JSON request
(argument, `-d`, `-d @file`, `-d @-`); client streams and bidi take JSON lines (stdin, `-d @file`, or
an argument: an object or an array of them), bidi sending each stdin line as it is typed. Responses
are printed one JSON line each as they arrive. Chunked methods read or write files (`--in`, `--out`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
import threading
import time
from typing import Any, AsyncIterator, Iterator

from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from ..reflection import jsonmap
from ..reflection.catalog import MethodInfo
from ..reflection.dynamic import DynamicClient
from .sources import catalog_of

MAX_LINE = 64 * 1024 * 1024  # one JSON request line, at most


def add_call(commands: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser("call", help="call a method with JSON (every shape)")
    sub.add_argument("method", help="pkg.Service/Method (Service/Method and Service.Method work)")
    sub.add_argument("data", nargs="?", help="the JSON request (client streams and bidi: an object or an array)")
    sub.add_argument("-d", "--data", dest="data_flag", metavar="JSON|@FILE|@-", help="the request(s): JSON, a file of JSON lines, or stdin")
    sub.add_argument("-H", "--header", action="append", default=[], metavar="KEY:VALUE", help="a request header (repeatable)")
    sub.add_argument("--timeout", type=float, help="seconds for the whole call (default: the proto's, else none)")
    sub.add_argument("--max-messages", type=int, default=0, help="stop after this many responses (streams)")
    sub.add_argument("--defaults", action="store_true", help="print fields at their default value too")
    sub.add_argument("--json", action="store_true", help="errors as JSON on stdout")
    sub.add_argument("--service-version", metavar="VERSION", help="the version of the service to call (or its schema: sha256:...); default: the newest")
    sub.add_argument("--out", metavar="FILE", help="chunked download: write the blob to FILE")
    sub.add_argument("--in", dest="in_file", metavar="FILE", help="chunked upload: send FILE")
    sub.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    sub.set_defaults(run=call)
    return sub


def headers_of(items: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"-H {item!r}: a header is KEY:VALUE")
        headers[key.strip()] = value.strip()
    return headers


def _text(args: argparse.Namespace) -> str | None:
    """The request text given (argument or -d); `@file` and `@-` read."""
    if args.data is not None and args.data_flag is not None:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, "give the request as an argument or with -d, not both")
    text: str | None = args.data if args.data is not None else args.data_flag
    if text is not None and text.startswith("@"):
        if text == "@-":
            return sys.stdin.read()
        try:
            with open(text[1:], encoding="utf-8") as source:
                return source.read()
        except OSError as error:
            raise RpcError(ErrorCode.NOT_FOUND, f"-d {text}: {error.strerror}") from None
    return text


def _one_request(method: MethodInfo, text: str | None) -> bytes:
    return jsonmap.encode(method.input, jsonmap.loads(text) if text and text.strip() else {})


def _lines(method: MethodInfo, text: str) -> Iterator[bytes]:
    """Requests from JSON text: an array, or JSON lines (blank lines skipped)."""
    stripped = text.strip()
    if stripped.startswith("["):
        items = jsonmap.loads(stripped)
        for item in items:
            yield jsonmap.encode(method.input, item)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield jsonmap.encode(method.input, jsonmap.loads(line.strip()))
            except RpcError as error:
                raise RpcError(error.code, f"request line {number}: {error.message}") from None


async def _stdin_lines(method: MethodInfo) -> AsyncIterator[bytes]:
    """Requests as stdin gives them, line by line (a daemon thread reads: exit never waits on stdin)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)

    def read() -> None:
        try:
            for line in sys.stdin:
                asyncio.run_coroutine_threadsafe(queue.put(line), loop).result()
        except Exception:  # the loop ended: nobody reads any more
            return
        try:
            asyncio.run_coroutine_threadsafe(queue.put(None), loop).result()
        except Exception:
            return

    threading.Thread(target=read, name="stdin", daemon=True).start()
    number = 0
    while (line := await queue.get()) is not None:
        number += 1
        if line.strip():
            if len(line) > MAX_LINE:
                raise RpcError(ErrorCode.INVALID_ARGUMENT, f"request line {number} is longer than {MAX_LINE} bytes")
            try:
                yield jsonmap.encode(method.input, jsonmap.loads(line.strip()))
            except RpcError as error:
                raise RpcError(error.code, f"request line {number}: {error.message}") from None


async def _requests(method: MethodInfo, text: str | None) -> AsyncIterator[bytes]:
    if text is not None:
        for request in _lines(method, text):
            yield request
    else:
        async for request in _stdin_lines(method):
            yield request


class ProgressLine:
    """`12.0 MiB / 40.0 MiB  30%  8.1 MiB/s` redrawn on stderr (a terminal only), a few times a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self.shown = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.shown < 0.1 and done != total):
            return
        self.shown = now
        rate = done / max(now - self.started, 1e-6)
        part = f" / {total / 2**20:.1f} MiB  {100 * done // total if total else 100:3d}%" if total else ""
        print(f"\r{done / 2**20:.1f} MiB{part}  {rate / 2**20:.1f} MiB/s ", end="", file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def _print(method: MethodInfo, body: bytes, defaults: bool) -> None:
    print(jsonmap.dumps(jsonmap.decode(method.output, body, defaults=defaults)), flush=True)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def call(args: argparse.Namespace, nc: NATS) -> int:
    service = args.method.rpartition("/")[0] if "/" in args.method else args.method.rpartition(".")[0]
    catalog = await catalog_of(args, nc, service=service)
    method = catalog.method(args.method, args.service_version)
    if args.service_version is None:
        others = [s for s in catalog.versions(method.service) if s.pool is not method.pool and any(m.name == method.name for m in s.methods)]
        if others:  # versions whose schemas differ: the request is encoded in the chosen one's
            versions = ", ".join(dict.fromkeys(s.version for s in others))
            print(f"note: {method.service} {method.version} called; also running with another schema: {versions} (--service-version to choose)", file=sys.stderr)
    client = DynamicClient(nc, catalog, headers=headers_of(args.header))
    timeout = args.timeout
    limit = args.max_messages
    if (args.out or args.in_file) and not method.chunked:
        raise RpcError(ErrorCode.INVALID_ARGUMENT, f"{method.full_name} is not chunked: --out and --in are for (natsmicro.chunked_io) methods")
    if args.out and method.shape == "server":
        progress = ProgressLine(not args.no_progress)
        size = await client.download(method, _one_request(method, _text(args)), args.out, timeout=timeout, progress=progress)
        progress.end()
        print(jsonmap.dumps({"path": os.fspath(args.out), "size": size, "sha256": _file_digest(args.out)}), flush=True)
        return 0
    if args.in_file and method.shape == "client":
        progress = ProgressLine(not args.no_progress)
        response = await client.upload(method, args.in_file, timeout=timeout, progress=progress)
        progress.end()
        _print(method, response, args.defaults)
        return 0
    if method.shape == "unary":
        _print(method, await client.unary(method, _one_request(method, _text(args)), timeout=timeout), args.defaults)
    elif method.shape == "server":
        async with contextlib.aclosing(client.server_stream(method, _one_request(method, _text(args)), timeout=timeout)) as stream:
            await _print_all(method, stream, args.defaults, limit)
    elif method.shape == "client":
        _print(method, await client.client_stream(method, _requests(method, _text(args)), timeout=timeout), args.defaults)
    else:
        async with contextlib.aclosing(client.bidi(method, _requests(method, _text(args)), timeout=timeout)) as stream:
            await _print_all(method, stream, args.defaults, limit)
    return 0


async def _print_all(method: MethodInfo, responses: AsyncIterator[bytes], defaults: bool, limit: int) -> None:
    """Each response as it arrives; after `limit` (0: none) the call is closed."""
    received = 0
    async for body in responses:
        _print(method, body, defaults)
        received += 1
        if limit and received >= limit:
            return
