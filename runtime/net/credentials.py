"""nats-py `connect()` options for who we are: the natscli-style flags the commands share
(`serve`, the CLI and its gateway)."""

from __future__ import annotations

import argparse
import ssl
from typing import Any


def credential_options(args: argparse.Namespace) -> dict[str, Any]:
    """`--creds`, `--user/--password`, `--token`, `--tls-ca/--tls-cert/--tls-key` as nats-py takes them."""
    options: dict[str, Any] = {}
    if args.creds:
        options["user_credentials"] = args.creds
    if args.user:
        options["user"], options["password"] = args.user, args.password
    if args.token:
        options["token"] = args.token
    if args.tls_ca or args.tls_cert:
        context = ssl.create_default_context(cafile=args.tls_ca)
        if args.tls_cert:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        options["tls"] = context
    return options
