"""`python -m betterproto_nats_plugin init [DIR]`: start a project that buf (or protoc) can generate
from at once: buf.yaml, buf.gen.yaml (the local plugin, `strategy: all`), the options proto where buf
finds it, and a starter service. Existing files are never overwritten."""

from __future__ import annotations

import pathlib
import sys

from . import include_dir

BUF_YAML = """version: v2
modules:
  - path: proto
"""

BUF_GEN_YAML = """# `buf generate` writes Python into gen/ with the plugin from the betterproto-nats[compiler] install.
# strategy: all is required: betterproto2 emits whole packages, and buf's default (one run per folder)
# can leave a package module empty.
version: v2
plugins:
  - local: protoc-gen-python_nats
    out: gen
    strategy: all
"""

STARTER = """syntax = "proto3";

package {package}.v1;

import "natsmicro/options.proto";

message HelloRequest {{
  string name = 1;
}}

message HelloReply {{
  string message = 1;
}}

service Greeter {{
  option (natsmicro.service) = {{ subject_prefix: "{package}.v1" }};

  // One request, one reply.
  rpc SayHello(HelloRequest) returns (HelloReply) {{}}
  // One request, a stream of replies.
  rpc SayHellos(HelloRequest) returns (stream HelloReply) {{}}
}}
"""

SERVICE = """\"\"\"A starter service: `buf generate`, start a nats-server, then
`python -m betterproto_nats serve service:Greeter` and call it (see the README of betterproto-nats).\"\"\"

from typing import AsyncIterator

from gen.{package}.v1 import GreeterNatsBase, HelloReply, HelloRequest


class Greeter(GreeterNatsBase):
    async def say_hello(self, request: HelloRequest) -> HelloReply:
        return HelloReply(message=f"hello {{request.name}}")

    async def say_hellos(self, request: HelloRequest) -> AsyncIterator[HelloReply]:
        for greeting in ("hello", "hi", "hey"):
            yield HelloReply(message=f"{{greeting}} {{request.name}}")
"""


def init(folder: pathlib.Path, package: str = "hello") -> list[str]:
    """Write the project files that do not exist yet; returns what was written and what was kept."""
    options = pathlib.Path(include_dir()) / "natsmicro" / "options.proto"
    files = {
        folder / "buf.yaml": BUF_YAML,
        folder / "buf.gen.yaml": BUF_GEN_YAML,
        folder / "proto" / "natsmicro" / "options.proto": options.read_text(),
        folder / "proto" / package / "v1" / f"{package}.proto": STARTER.format(package=package),
        folder / "service.py": SERVICE.format(package=package),
    }
    report = []
    for path, text in files.items():
        if path.exists():
            report.append(f"kept     {path} (exists)")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        report.append(f"wrote    {path}")
    return report


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    folder = pathlib.Path(args[0] if args else ".")
    for line in init(folder):
        print(line)
    print("next: buf generate (or protoc, see the README), then python -m betterproto_nats serve service:Greeter")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
