"""`betterproto-nats` and `python -m betterproto_nats`: `serve module:Class ...` runs services
(`betterproto_nats.runner`); `ls`, `describe`, `call`, `stats` inspect and call them
(`betterproto_nats.cli`, the `cli` extra); `gateway` serves them over HTTP (the `gateway` extra)."""

import sys


def main() -> None:
    """`serve` needs only the runtime; the other commands load the CLI (google protobuf)."""
    if sys.argv[1:2] == ["serve"]:
        from .runner import main as serve

        serve()
        return
    try:
        from .cli.main import main as cli
    except ImportError as error:
        raise SystemExit(f"betterproto-nats: {error.name or error}: install the CLI with pip install 'betterproto-nats[cli]'") from None
    cli()


if __name__ == "__main__":
    main()
