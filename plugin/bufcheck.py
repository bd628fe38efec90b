"""Catch `buf generate` without `strategy: all` before it drops messages.

betterproto2 writes one module per proto package. buf's default strategy runs the plugin once per
folder, so a package that spans folders is written twice and buf keeps one copy (with a warning that
blames the plugin). A request cannot show this, so when buf is our parent we read its template.
Best effort: anything we cannot read (no /proc, an inline template) passes."""

from __future__ import annotations

import os
import pathlib
import re

PLUGIN_NAMES = ("protoc-gen-python_nats", "python_nats")
_PLUGINS = re.compile(r"^plugins:\s*(?:#.*)?\n(?:\s*(?:#.*)?\n)*(?P<indent>[ \t]*)-\s", re.M)
_STRATEGY_ALL = re.compile(r"^\s*(?:-\s*)?strategy:\s*[\"']?all[\"']?\s*(?:#.*)?$", re.M)


def parent_argv(pid: int | None = None) -> list[str]:
    """The command line of the process that started us (Linux /proc), or [] when unknown."""
    try:
        raw = pathlib.Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def template_of(argv: list[str], cwd: pathlib.Path) -> pathlib.Path | None:
    """The buf.gen.yaml that a `buf generate` command line uses, when it is a file."""
    if not argv or not pathlib.Path(argv[0]).name.startswith("buf") or "generate" not in argv[1:]:
        return None
    template = "buf.gen.yaml"
    for index, arg in enumerate(argv):
        if arg == "--template" and index + 1 < len(argv):
            template = argv[index + 1]
        elif arg.startswith("--template="):
            template = arg.split("=", 1)[1]
    path = pathlib.Path(template) if pathlib.Path(template).is_absolute() else cwd / template
    return path if path.is_file() else None


def entry_lacks_strategy_all(template_text: str) -> bool:
    """True when the template's entry for this plugin does not say `strategy: all`."""
    plugins = _PLUGINS.search(template_text)
    if plugins is None:
        return False
    item = re.compile(rf"^{plugins['indent']}-\s", re.M)  # plugin entries; nested lists are deeper
    starts = [m.start() for m in item.finditer(template_text, plugins.start("indent"))] + [len(template_text)]
    entries = [template_text[a:b] for a, b in zip(starts, starts[1:])]
    ours = [e for e in entries if any(name in e for name in PLUGIN_NAMES)]
    return any(not _STRATEGY_ALL.search(entry) for entry in ours)


def strategy_problem(argv: list[str] | None = None, cwd: pathlib.Path | None = None) -> str | None:
    """The template to fix when buf runs us without `strategy: all`; None when fine or unknown."""
    template = template_of(parent_argv() if argv is None else argv, cwd or pathlib.Path.cwd())
    if template is None:
        return None
    try:
        text = template.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    return str(template) if entry_lacks_strategy_all(text) else None
