"""`protoc-gen-python_nats`: the protoc/buf plugin entry point (`--help`, `--version` for people)."""

from __future__ import annotations

import sys

USAGE = """protoc-gen-python_nats: a protoc/buf plugin that writes betterproto2 messages plus NATS service
classes (<Service>NatsBase, <Service>NatsClient) for .proto files.

It is run by protoc or buf, which pass it a CodeGeneratorRequest on standard input:
  buf generate                   with buf.gen.yaml: plugins: [{local: protoc-gen-python_nats, out: gen, strategy: all}]
  protoc -I proto -I "$(python -m betterproto_nats_plugin --include)" --python_nats_out=gen proto/...
Parameters (opt: / --python_nats_opt=): grpclib=false, pydantic_dataclasses, INCLUDE_GOOGLE.
Start a project: python -m betterproto_nats_plugin init [DIR]
"""


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if args and args[0] == "--version":
        from . import __version__

        print(f"protoc-gen-python_nats {__version__}")
        return
    if sys.stdin.isatty():
        print(USAGE, end="", file=sys.stderr)
        sys.exit(2)
    try:
        from .adapter import run
    except ImportError as missing:
        print(
            f"protoc-gen-python_nats: the generator needs betterproto2's compiler ({missing.name} is missing): "
            "pip install 'betterproto-nats[compiler]' (until it is on PyPI, from a checkout: "
            "pip install '/path/to/betterproto-nats[compiler]')",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(run())


if __name__ == "__main__":
    main()
