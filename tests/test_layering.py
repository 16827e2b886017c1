"""The layering of README.md ("Layout"), checked on the source: no import cycles among the
project's modules (imports inside functions count too), arrows that go one way only, and
models/ and the online recall usable without pyspark."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "jobs", "models")
STEPS = {"ingest", "profiles", "index", "triples", "train", "tag_model", "export", "publish", "evaluate"}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules that ``name`` imports anywhere in its source."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name and target.split(".")[0] in PACKAGES:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(GRAPH):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_planted_cycle():
    GRAPH["schemas.catalog"].add("schemas.config")  # config already imports catalog
    try:
        assert _cycle() is not None
    finally:
        GRAPH["schemas.catalog"].discard("schemas.config")


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("schemas", "models"):
        return parts[0]
    if len(parts) == 1:
        return "jobs"
    if parts[1] in ("common", "transforms", "online", "tools"):
        return parts[1]
    if parts[1] in STEPS:
        return "step"
    return parts[1]  # chain, cli, conf


# Which layers each layer may import (its own included): README.md, "Layout".
ALLOWED = {
    "schemas": {"schemas"},
    "models": {"models", "schemas"},
    "transforms": {"transforms", "schemas"},
    "online": {"online", "schemas"},
    "common": {"common", "transforms", "schemas"},
    "step": {"common", "transforms", "online", "models", "schemas"},
    "chain": {"step", "common", "schemas"},
    "tools": {"tools", "chain", "step", "common", "transforms", "online", "models", "schemas"},
    "cli": {"chain", "step", "tools", "common", "online", "schemas"},
    "jobs": set(),
    "conf": set(),
}


def test_arrows_go_one_way():
    wrong = [f"{m} ({layer(m)}) imports {t} ({layer(t)})" for m, targets in sorted(GRAPH.items())
             for t in sorted(targets) if layer(t) not in ALLOWED[layer(m)]]
    assert not wrong, "\n".join(wrong)


def test_steps_do_not_import_each_other_and_spark_submit_needs_no_cli():
    for step in STEPS:
        others = {t for t in GRAPH[f"jobs.{step}"] if layer(t) == "step"}
        assert not others, f"jobs.{step} imports {others}"
        assert "jobs.cli" not in GRAPH[f"jobs.{step}"]


@pytest.mark.parametrize("modules", [
    [m for m in MODULES if m.startswith("models")],
    ["jobs.online.keys", "jobs.online.recall", "schemas.catalog", "schemas.config", "schemas.features",
     "jobs.train"],
])
def test_models_and_online_recall_import_without_pyspark(modules):
    probe = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyspark', 'py4j')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", f"{modules} loaded pyspark"
