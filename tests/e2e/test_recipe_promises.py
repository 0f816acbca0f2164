"""The shipped recipes' promises hold (issue 19.6): every shipped recipe has an end-to-end smoke run
(`tests/e2e/test_recipe_smoke.py`, the slow ones with their real export targets), and the quickstart runs
end to end at smoke size with every artifact it plans either made or skipped for a reason of this machine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import test_recipe_smoke as smoke

from recipes.load import list_recipes


def _recipes_run_by_smoke_tests() -> set[str]:
    """Recipe names passed to `_run(...)` in the smoke tests (read from the source, not imported)."""
    tree = ast.parse(Path(smoke.__file__).read_text())
    return {node.args[0].value for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "_run" and node.args and isinstance(node.args[0], ast.Constant)}


def test_every_shipped_recipe_has_a_smoke_run():
    covered = _recipes_run_by_smoke_tests() | {"quickstart"}  # the quickstart's is below
    assert set(list_recipes()) <= covered, sorted(set(list_recipes()) - covered)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    report, seconds = smoke._run("quickstart", tmp_path / "runs", ["teacher.train.epochs=1", "quantize.qat.epochs=1"])
    kd = smoke._row(report, "student_kd")["metrics"]
    assert 0.0 <= kd["accuracy"] <= 1.0
    smoke._exports(report)
    print(f"quickstart smoke: {seconds:.1f} s")
