"""betterproto-nats compiler: betterproto's output plus NATS service bases and clients.

Importing this package needs nothing beyond the runtime; generating code needs the `compiler` extra."""

from __future__ import annotations

import os
import pathlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("betterproto-nats")
except PackageNotFoundError:  # run from a source tree
    __version__ = "0+unknown"


def include_dir() -> str:
    """The folder holding `natsmicro/options.proto`, for `protoc -I`."""
    return os.fspath(pathlib.Path(__file__).parent / "include")


__all__ = ["__version__", "include_dir"]
