"""`protoc-gen-python_nats`: the protoc/buf plugin entry point."""

from __future__ import annotations

import sys

from .adapter import run


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
