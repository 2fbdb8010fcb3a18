"""The layers of docs/ARCHITECTURE.md hold: imports point down only, and nothing imports in a circle.

Every import counts, including those inside functions and under `TYPE_CHECKING`: a layer
crossed lazily is still crossed.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

PACKAGES = ("topics", "mesh", "replay", "agents")

# Top to bottom: a module may import its own layer and the layers below it, never one above.
# Layers on one line are siblings that must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("agents",),
    ("mesh.cli", "mesh.testing"),  # the testing kit: a plugin for users' tests, beside the CLI
    ("mesh.console",),
    ("replay",),
    ("mesh.runtime",),
    ("mesh.llm", "mesh.coordination"),
    ("mesh.projections",),
    ("mesh.bus",),
    ("mesh.telemetry",),
    ("mesh.errors",),
    ("topics",),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every module of ours that ``module`` imports, at any depth of its code."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] in PACKAGES)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        targets = imported(tree, module, path.name == "__init__.py")
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def layer_of(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in layer):
            return index
    return None


def sibling(module: str) -> str | None:
    for layer in LAYERS:
        for name in layer:
            if module == name or module.startswith(name + "."):
                return name
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class TestLayers:
    def test_every_module_has_a_layer(self) -> None:
        """Each module of mesh, replay, topics and agents belongs to a layer (the `mesh` facade aside)."""
        unplaced = [m for m in import_graph() if layer_of(m) is None and m not in ("mesh", "mesh.__main__")]
        assert unplaced == []

    def test_imports_point_down(self) -> None:
        """No module imports a layer above its own, or a sibling of its layer."""
        crossings = []
        for module, targets in import_graph().items():
            here = layer_of(module)
            if here is None:
                continue
            for target in targets:
                there = layer_of(target)
                if there is None:
                    if target == "mesh" and module.startswith("mesh."):  # the facade is for users only
                        crossings.append(f"{module} -> {target}")
                    continue
                if there < here or (there == here and sibling(module) != sibling(target)):
                    crossings.append(f"{module} -> {target}")
        assert sorted(crossings) == []

    def test_topics_imports_nothing_of_ours(self) -> None:
        """The wire contract stands alone: any client can take `topics` without the runtime."""
        graph = import_graph()
        assert {m: t for m, t in graph.items() if m.startswith("topics") and any(not x.startswith("topics") for x in t)} == {}

    def test_only_the_cli_imports_replay(self) -> None:
        """Inside `mesh`, replay is reached from the front ends only: the command line and the web console."""
        graph = import_graph()
        importers = {m for m, targets in graph.items() if m.startswith("mesh") and any(t.startswith("replay") for t in targets)}
        assert {m for m in importers if not m.startswith(("mesh.cli", "mesh.console"))} == set()

    def test_nothing_imports_the_testing_kit(self) -> None:
        """`mesh.testing` (which needs pytest) is imported by tests only, never by what ships."""
        graph = import_graph()
        importers = {m for m, targets in graph.items() if not m.startswith("mesh.testing")
                     and any(t.startswith("mesh.testing") for t in targets)}  # fmt: skip
        assert importers == set()

    def test_no_import_cycles(self) -> None:
        """No module reaches itself through its imports."""
        assert cycles(import_graph()) == []

    def test_the_checker_sees_a_crossing_and_a_cycle(self) -> None:
        """The two checks catch what they are for (a layer crossed upwards; a two-module cycle)."""
        assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
        tree = ast.parse("def f():\n    from mesh.cli.main import main\n")
        assert list(imported(tree, "mesh.bus.client", False)) == ["mesh.cli.main", "mesh.cli.main.main"]
        assert layer_of("mesh.cli.main") < layer_of("mesh.bus.client")  # type: ignore[operator]


class TestStartUp:
    def test_the_cli_and_an_agent_start_without_the_model_sdk(self) -> None:
        """The `openai` SDK and its HTTP library take most of a second to import: a command or an
        agent that makes no model call never imports them (`LlmClient` makes its SDK client at
        the first call)."""
        probe = (
            "import sys\n"
            "import mesh, mesh.cli.main, mesh.runtime.runner, mesh.console.server, replay.context\n"
            "from mesh.llm.client import LlmClient\n"
            "LlmClient.from_env()\n"
            "print(sorted(name for name in ('openai', 'httpx2') if name in sys.modules))\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120, check=True)  # fmt: skip
        assert done.stdout.strip().splitlines()[-1] == "[]"
