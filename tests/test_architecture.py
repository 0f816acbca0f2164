"""The layering of docs/design.md holds: no module-level import cycle anywhere in kdtool's packages.

`lint-imports` (run by CI, contracts in pyproject.toml) checks the layers and sibling cycles; this
test checks the stricter property, no strongly connected component between modules, and that a
verb reaches its stage in one hop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp", reason="grimp comes with import-linter (the [dev] extra)")

REPO = Path(__file__).resolve().parents[1]


def _cycles(adj: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(adj[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    graph = grimp.build_graph("compress", "export", "benchmark", "recipes")
    adj = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(adj) == []


def test_each_verb_reaches_its_stage_in_one_hop():
    """`kdtool <verb>` imports its stage from `<package>/stage.py` directly."""
    tree = ast.parse((REPO / "kdtool.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    for module, fn in (("compress.distill.stage", "run_distill"), ("compress.quant.stage", "run_quantize"),
                       ("export.stage", "run_export"), ("benchmark.stage", "run_benchmark")):
        assert (module, fn) in imported
    assert not (REPO / "recipes" / "runner.py").exists() and not (REPO / "recipes" / "stages_post.py").exists()
