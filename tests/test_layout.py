"""The runtime's layout (issue 21): a sans-I/O core, packages in layers with an acyclic import graph
and no upward imports, every module path from before the packages still importable with its names."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path


RUNTIME = Path(__file__).resolve().parent.parent / "runtime"

# Who may import whom: a module imports its own package's modules and those of lower layers only
# (packages on one layer never import each other: `calling` and `serving` are the two sides).
LAYERS = {
    "_version": 0,
    "core": 0,  # the protocol's rules, pure
    "encoding": 1,  # bytes <-> messages
    "net": 1,  # NATS
    "schema": 2,  # what generated code declares
    "health": 2,  # liveness, loop lag, admission
    "streaming": 3,  # one direction of a stream, a call's v2 session
    "features": 4,  # chunks, persistence, interceptors, otel, retry, logs
    "calling": 5,  # the client side
    "serving": 5,  # the service side
    "reflection": 6,  # schemas from the account or local files, proto3 JSON, calls without generated code
    "gateway": 7,  # HTTP in front of the services: JSON, SSE, NDJSON, WebSockets, OpenAPI (the `gateway` extra)
    "cli": 8,  # the `betterproto-nats` command (its `gateway` subcommand runs the gateway)
}
SURFACE = 9  # the package's own top-level modules: its public surface
NOT_IN_CORE = ("asyncio", "nats", "betterproto", "socket", "selectors", "threading")


def modules() -> dict[str, Path]:
    """Every module of the runtime by its dotted name inside the package ("core.headers")."""
    found = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(RUNTIME).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path, type_checking: bool = True) -> tuple[set[str], set[str]]:
    """(modules of the runtime, top-level names of other packages) that `name` imports, wherever in
    the file; under `if TYPE_CHECKING:` too unless `type_checking` is False (a cycle that only the
    type checker sees is still a cycle for a reader)."""
    known = modules()
    parts = [part for part in name.split(".") if part]
    package = parts if path.name == "__init__.py" else parts[:-1]
    inside: set[str] = set()
    outside: set[str] = set()

    def visit(node: ast.AST) -> None:
        if not type_checking and _type_checking(node):
            return
        if isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                outside.add((node.module or "").split(".")[0])
            else:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                for alias in node.names:
                    sub = f"{target}.{alias.name}" if target else alias.name
                    inside.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    inside.discard("")
    return inside, outside


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], SURFACE)


def unit(module: str) -> str:
    """The package a module belongs to ("" for the package's own top-level modules)."""
    return module.split(".")[0] if "." in module or module in LAYERS else ""


def test_the_core_imports_no_io() -> None:
    """Nothing in `core` imports asyncio, nats or anything of the runtime outside `core`."""
    for name, path in modules().items():
        if unit(name) != "core":
            continue
        inside, outside = imports(name, path)
        assert not outside & set(NOT_IN_CORE), f"{name} imports {outside & set(NOT_IN_CORE)}"
        assert all(unit(module) == "core" for module in inside), f"{name} imports {inside}"


def test_the_core_loads_without_the_event_loop() -> None:
    """Loaded on its own in a fresh interpreter (the package's __init__ imports everything, so a bare
    parent stands in for it), the core leaves asyncio and nats unimported."""
    core = sorted(name for name in modules() if unit(name) == "core")
    script = (
        "import importlib, sys, types\n"
        f"parent = types.ModuleType('betterproto_nats'); parent.__path__ = [{str(RUNTIME)!r}]\n"
        "sys.modules['betterproto_nats'] = parent\n"
        f"for name in {core!r}: importlib.import_module('betterproto_nats.' + name)\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('asyncio', 'nats', 'betterproto')]\n"
        "print(','.join(loaded))\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == ""


def test_the_import_graph_is_layered_and_acyclic() -> None:
    graph = {name: imports(name, path)[0] for name, path in modules().items()}
    for name, targets in graph.items():
        for target in targets:
            if unit(target) == unit(name) and unit(name):
                continue  # within a package
            if unit(name) == "":
                continue  # the surface imports anything below it (and itself, acyclic: checked below)
            assert layer(target) < layer(name), f"{name} (layer {layer(name)}) imports {target} (layer {layer(target)})"
    # acyclic: a depth-first search finds no way back
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, "import cycle: " + " -> ".join([*path, name])
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if target != name and not (name and target == name.split(".")[0]):  # a module and its package
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])
    # The graph holds the imports made only for the type checker (a cycle through one is still a
    # cycle for a reader): streaming/inbox.py names `health.peers` under `if TYPE_CHECKING:` only.
    assert "health.peers" in graph["streaming.inbox"]
    assert "health.peers" not in imports("streaming.inbox", modules()["streaming.inbox"], type_checking=False)[0]


def test_nothing_below_the_surface_imports_the_surface() -> None:
    """The packages never import the package's top-level modules (the version aside)."""
    for name, path in modules().items():
        if unit(name):
            for target in imports(name, path)[0]:
                assert unit(target) or target == "_version", f"{name} imports the top-level module {target}"


# The top level of the runtime: its public surface, each a real module (docs/DESIGN.md).
SURFACE_MODULES = {
    "__init__": "the package: what users import (`betterproto_nats.serve`, `RpcError`, ...)",
    "__main__": "`python -m betterproto_nats` and the `betterproto-nats` command: `serve`, or the `cli` package",
    "_version": "the version",
    "_api_v1": "the private API that generated code of version 1 imports",
    "_api_v2": "version 2 of it",
    "otel": "OpenTelemetry interceptors (the `otel` extra)",
    "testing": "a nats-server for tests, in-memory serving",
    "pytest_plugin": "pytest fixtures",
    "runner": "`betterproto_nats.run` and the command line",
}


def test_the_top_level_is_the_public_surface() -> None:
    """Every top-level module is part of the public surface, and none only stands in for another
    (no `sys.modules` alias, no module of nothing but re-exports)."""
    top = {path.stem for path in RUNTIME.glob("*.py")}
    assert top == set(SURFACE_MODULES), f"unexpected: {top - set(SURFACE_MODULES)}, missing: {set(SURFACE_MODULES) - top}"
    for name in top:
        tree = ast.parse((RUNTIME / f"{name}.py").read_text())
        assert "sys.modules[" not in (RUNTIME / f"{name}.py").read_text(), f"{name} is an alias of another module"
        own = [
            node
            for node in tree.body
            if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr))  # (docstrings)
            and not (isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["__all__"])
        ]
        if name not in ("_api_v1", "_api_v2", "__init__", "__main__"):  # (the API modules and the package choose names; `-m` runs one)
            assert own, f"{name} only re-exports other modules"


def _base_name(node: ast.expr) -> str | None:
    """The class a base expression names: `Base`, `Base[T]`, `module.Base`."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _used_as_values(tree: ast.AST) -> set[str]:
    """Names a module uses as values (called, assigned, chosen, returned, put in a container):
    classes that exist on their own, not only as a base."""
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _base_name(node.func)
            if name is not None:
                used.add(name)
        values: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Return)) and node.value is not None:
            values.append(node.value)
        elif isinstance(node, ast.IfExp):
            values += [node.body, node.orelse]
        elif isinstance(node, ast.Dict):
            values += node.values
        elif isinstance(node, (ast.Tuple, ast.List)):
            values += node.elts
        used.update(name for value in values if (name := _base_name(value)) is not None)
    return used


def test_no_class_derives_from_a_base_that_exists_only_for_it() -> None:
    """Composition, not chains made to split files: a runtime class used as a base either has more
    than one subclass or exists on its own too (instantiated, or chosen as a value: `ServerStream`
    beside `DownloadStream`). A base with a single heir and no life of its own is the same concern
    in two places. Bases are read however they are written (`Base`, `Base[T]`, `module.Base`)."""
    bases: dict[str, list[str]] = {}
    defined: set[str] = set()
    used: set[str] = set()
    for path in sorted(RUNTIME.rglob("*.py")):
        tree = ast.parse(path.read_text())
        used |= _used_as_values(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined.add(node.name)
                for base in node.bases:
                    name = _base_name(base)
                    if name is not None:
                        bases.setdefault(name, []).append(node.name)
    single = {base: heirs for base, heirs in bases.items() if base in defined and len(heirs) == 1 and base not in used}
    assert set(single) <= set(ONE_HEIR), f"bases with one subclass and no use of their own: {single}"
    assert _base_name(ast.parse("class A(b.Base[T]): pass").body[0].bases[0]) == "Base"  # type: ignore[attr-defined]


# Bases with one subclass that stand on their own: a reason each.
ONE_HEIR = {
    "RpcError": "raised on its own everywhere; `Overloaded` is the refusal with a retry hint",
    "Codec": "the body codec every service uses; reflection's `PassThrough` hands bodies on as bytes",
}


def _stream_header(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id.startswith("STREAM_")


def test_stream_headers_are_read_in_the_core_only() -> None:
    """`Nats-Stream-*` values are read by the protocol core alone (its receiving rules, control
    messages, negotiation, beats): outside `core`, no module looks one up in a message's headers
    (`headers.get(STREAM_X)`, `headers[STREAM_X]`, `STREAM_X in headers`); writing them is fine."""
    for name, path in modules().items():
        if unit(name) == "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            read = (
                (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" and node.args and _stream_header(node.args[0]))
                or (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _stream_header(node.slice))
                or (isinstance(node, ast.Compare) and _stream_header(node.left) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops))
            )
            assert not read, f"{name}:{getattr(node, 'lineno', '?')} reads a Nats-Stream-* header outside core: {ast.unparse(node)}"
