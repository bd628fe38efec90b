"""Where the CLI's schemas come from: discovery (`$SRV` + `$SRV.PROTO`) and, for services that
publish none, the `--proto` / `--descriptor-set` files."""

from __future__ import annotations

import argparse
import sys

from nats.aio.client import Client as NATS

from ..core.errors import ErrorCode, RpcError
from ..reflection.catalog import Catalog, compile_protos


def local_catalog(args: argparse.Namespace) -> Catalog | None:
    """The schemas given on the command line (--proto, --descriptor-set), if any."""
    if not args.proto and not args.descriptor_set:
        return None
    catalog: Catalog | None = None
    sets: list[bytes] = []
    if args.proto:
        sets.append(compile_protos(args.proto_path or ["."], args.proto))
    for path in args.descriptor_set:
        try:
            with open(path, "rb") as source:
                sets.append(source.read())
        except OSError as error:
            raise RpcError(ErrorCode.NOT_FOUND, f"--descriptor-set {path}: {error.strerror}") from None
    for data in sets:
        try:
            if catalog is None:
                catalog = Catalog.from_descriptor_set(data)
            else:
                catalog.add_descriptor_set(data)
        except Exception as error:  # not a FileDescriptorSet, or files that contradict each other
            raise RpcError(ErrorCode.INVALID_ARGUMENT, f"schema does not load: {type(error).__name__}: {str(error)[:200]}") from None
    return catalog


async def catalog_of(args: argparse.Namespace, nc: NATS, name: str | None = None, service: str | None = None) -> Catalog:
    """Schemas by discovery (of `service` only, when given), with the local ones for services that
    publish none; discovery's problems on stderr."""
    found = await Catalog.discover(nc, args.wait, name=name, local=local_catalog(args), service=service)
    for problem in found.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return found
