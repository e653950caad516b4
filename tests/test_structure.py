"""The package's shape: modules import one another in one direction only."""

from __future__ import annotations

import ast
from pathlib import Path

import ikd

PACKAGE = Path(ikd.__file__).parent


def import_graph() -> dict[str, set[str]]:
    """Module -> the ikd modules it imports at module level or inside functions (`from ikd import
    x` counts as importing the submodule x; the package top itself is left out)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("ikd", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "ikd":
                imported |= {f"ikd.{alias.name}" for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ikd."):
                imported.add(node.module)
        graph[name] = imported
    for name, imported in graph.items():  # `from ikd.data.x import` -> the module or package that exists
        graph[name] = {m if m in graph else m.rsplit(".", 1)[0] for m in imported} - {"ikd", name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            if (cycle := visit(imported, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    return next((c for m in sorted(graph) if (c := visit(m, [])) is not None), None)


def test_no_import_cycles():
    graph = import_graph()
    assert "ikd.campaign" in graph and "ikd.campaign" in graph["ikd.cli"] | {"ikd.campaign"}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_low_modules_do_not_import_the_campaign():
    graph = import_graph()
    low = [
        "ikd.lineage",
        "ikd.checkpoint",
        "ikd.runtime",
        "ikd.model",
        "ikd.arch",
        "ikd.shrink",
        "ikd.train",
        "ikd.training_pass",
        "ikd.executor",
        "ikd.rules",
        "ikd.strategy",
    ]

    def reaches(module: str, seen: set[str]) -> set[str]:
        for imported in graph.get(module, ()):
            if imported not in seen:
                seen.add(imported)
                reaches(imported, seen)
        return seen

    for module in low:
        assert "ikd.campaign" not in reaches(module, set()), module
