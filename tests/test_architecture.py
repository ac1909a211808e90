"""The shape of the house: data flows one way (read → check/analyse → report → render), with no import cycles,
no upward imports, and the light modules free of torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PKG = ROOT / "optinspect"


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """optinspect modules a file imports (resolving relative imports); with `top_level_only`, only those run
    when the module itself is imported (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    me = _module(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(nodes, nested: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                if not (nested and top_level_only):
                    found.update(a.name for a in node.names if a.name.startswith("optinspect"))
            elif isinstance(node, ast.ImportFrom):
                if nested and top_level_only:
                    continue
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                       else []))
                if base.startswith("optinspect"):
                    for a in node.names:  # `from pkg import module` imports the module
                        sub = f"{base}.{a.name}"
                        found.add(sub if (PKG.parent / (sub.replace(".", "/") + ".py")).exists()
                                  or (PKG.parent / sub.replace(".", "/")).is_dir() else base)
            for child_list in ("body", "orelse", "finalbody", "handlers"):
                child = getattr(node, child_list, None)
                if isinstance(child, list) and not isinstance(node, (ast.Import, ast.ImportFrom)):
                    visit(child, nested or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree.body, False)
    found.discard(me)
    return found


FILES = sorted(p for p in PKG.rglob("*.py") if "optimizers" not in p.relative_to(PKG).parts[:1])
GRAPH_TOP = {_module(p): _imports(p, True) for p in FILES}
GRAPH_ALL = {_module(p): _imports(p, False) for p in FILES}

# Lower layers never import higher ones, even lazily inside a function.
LAYERS = [
    ("optinspect.specs", "optinspect.diagnostics", "optinspect.optimizers", "optinspect._version"),
    ("optinspect.config", "optinspect.state", "optinspect.dryrun", "optinspect.build", "optinspect.resume"),
    ("optinspect.render",),
    ("optinspect.tui",),
    ("optinspect.cli", "optinspect.__main__"),
]
# What a renderer may read: the plain report types, never an engine (engines import torch).
RENDER_MAY_IMPORT = ("optinspect.render", "optinspect.specs", "optinspect.diagnostics", "optinspect.config.secrets",
                     "optinspect.state.report", "optinspect.dryrun.report")


def _layer(module: str) -> int:
    for i, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH_TOP.get(m, ())):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n in GRAPH_TOP and not state.get(n):
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in GRAPH_TOP:
        if not state.get(m):
            dfs(m)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH_ALL if m != "optinspect"))
def test_no_upward_imports(module):
    """(The package root is the public facade: it may expose build_optimizer lazily, and anyone reads its
    __version__.)"""
    up = sorted(n for n in GRAPH_ALL[module] if n != "optinspect" and _layer(n) > _layer(module))
    assert not up, f"{module} imports the higher layer(s) {up}"


@pytest.mark.parametrize("module", sorted(m for m in GRAPH_ALL if m.startswith("optinspect.render")))
def test_renderers_read_reports_not_engines(module):
    bad = sorted(n for n in GRAPH_ALL[module] if n != "optinspect"
                 and not any(n == p or n.startswith(p + ".") for p in RENDER_MAY_IMPORT))
    assert not bad, f"{module} imports {bad}"


def test_the_optimizers_never_import_optinspect():
    """They are the drop-in a trainer copies: relative imports only."""
    for path in (PKG / "optimizers").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("optinspect"), path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("optinspect") for a in node.names), path


LIGHT = ["optinspect.specs", "optinspect.diagnostics", "optinspect.state.report", "optinspect.dryrun.report",
         "optinspect.render.view", "optinspect.render.state", "optinspect.render.dryrun", "optinspect.render.rules",
         "optinspect.render.text", "optinspect.render.machine", "optinspect.cli", "optinspect.cli.parser",
         "optinspect.cli.validate", "optinspect.cli.catalogue", "optinspect.cli.state", "optinspect.cli.dryrun",
         "optinspect.cli.tui"] + sorted(m for m in GRAPH_ALL if m.startswith("optinspect.config."))


def test_light_modules_import_no_torch():
    """The report types, renderers, the CLI's modules and config/ load without torch, numpy or safetensors: only
    the engines that need them import them (and then only when a command runs)."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in LIGHT) +
            "print(sorted(m for m in ('torch', 'numpy', 'safetensors', 'textual') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
