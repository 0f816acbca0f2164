"""A sweep's Pareto front, its files, its 80-column card and `--promote`, on hand-made trial records."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml
from rich.console import Console

from benchmark.pareto import dominates, pareto_front
from benchmark.sweep.card import print_sweep_card
from benchmark.sweep.html import write_html
from benchmark.sweep.promote import promote
from benchmark.sweep.results import write_results
from compress.core.errors import KdtoolError
from recipes.load import RECIPES_DIR, load_recipe

MAX_MIN = ["maximize", "minimize"]


def test_pareto_front_matches_a_hand_checked_set():
    # (retention, p50 ms): by hand, A B D F are non-dominated; C is beaten by B (more retention, faster),
    # E by D (same retention, faster), G by A (more retention, same latency)
    points = {"A": (0.99, 3.0), "B": (0.97, 1.0), "C": (0.96, 1.5), "D": (0.95, 0.5), "E": (0.95, 0.8),
              "F": (0.90, 0.2), "G": (0.98, 3.0)}
    names = list(points)
    front = {names[i] for i in pareto_front([points[n] for n in names], MAX_MIN)}
    assert front == {"A", "B", "D", "F"}
    # three objectives: a bigger file keeps an otherwise dominated point on the front
    three = [(0.97, 1.0, 5.0), (0.96, 1.5, 1.0), (0.96, 1.5, 2.0)]
    assert pareto_front(three, ["maximize", "minimize", "minimize"]) == [0, 1]
    assert dominates((0.97, 1.0), (0.96, 1.0), MAX_MIN) and not dominates((0.97, 1.0), (0.97, 1.0), MAX_MIN)
    assert pareto_front([(0.9, 1.0), (0.9, 1.0)], MAX_MIN) == [0, 1]  # ties both stay


def _record(number, state, retention=None, p50=None, mb=None, reason=None, recipe=False, feasible=True,
            params=None):
    return {"number": number, "state": state, "params": params or {"distill.temperature": 2.0 + number},
            "retention": retention, "p50_ms": p50, "size_mb": mb, "metric": retention, "feasible":
            feasible if state == "complete" else None,
            "artifact": "student_kd.onnx.fp32" if state == "complete" else None, "reason": reason,
            "folder": f"trials/{number:04d}", "recipe_point": recipe, "retry_of": None}


@pytest.fixture
def sweep(tmp_path):
    records = [_record(0, "complete", 0.96, 1.2, 0.2, recipe=True), _record(1, "complete", 0.98, 1.0, 0.2),
               _record(2, "complete", 0.90, 0.3, 0.07), _record(3, "pruned", reason="pruned at epoch 2: val "
                                                                                      "accuracy 0.5 < median 0.8"),
               _record(4, "failed", reason="non-finite loss: student_kd: non-finite loss at epoch 1 step 3"),
               _record(5, "complete", 0.99, 0.2, 0.05, feasible=False)]
    header = {"study": "quickstart-sweep", "recipe": "quickstart", "target": "android",
              "objectives": ["retention", "p50_ms"], "directions": MAX_MIN, "constraints": ["size_mb>=0.06"],
              "space": [{"path": "distill.temperature", "choices": [], "low": 1.0, "high": 8.0, "log": False,
                         "step": None, "integer": False, "encoded": False}]}
    return tmp_path, write_results(tmp_path, header, records, {"note": "3 complete trial(s)"})


def test_results_files_front_and_dominance(sweep):
    folder, data = sweep
    assert data["front"] == [1, 2]  # 5 is better on both but breaks the constraint: off the front
    assert data["recipe_point"] == 0 and data["dominates_recipe"] == [1]
    saved = json.loads((folder / "sweep.json").read_text())
    assert saved["schema"] == "kdtool.sweep/1" and saved["front"] == [1, 2]
    rows = list(csv.DictReader(io.StringIO((folder / "trials.csv").read_text())))
    assert [r["state"] for r in rows] == ["complete", "complete", "complete", "pruned", "failed", "complete"]
    assert rows[4]["reason"].startswith("non-finite loss") and rows[1]["retention"] == "0.98"
    page = write_html(data, folder / "sweep.html").read_text()
    assert "data:image/png;base64," in page and "trial(s) 1 dominate the recipe as written" in page


def test_card_fits_80_columns(sweep):
    _, data = sweep
    console = Console(width=80, record=True, force_terminal=False)
    print_sweep_card(data, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "non-finite loss" in text and "pruned" in text and "dominated by trial(s) 1" in text


def test_promote_writes_a_loadable_recipe(sweep, tmp_path):
    _, data = sweep
    base = yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())
    dest = promote(data, base, 1, tmp_path / "best.yaml")
    recipe, _, _ = load_recipe(str(dest))
    assert recipe.distill.temperature == 3.0 and recipe.name == "quickstart-trial1"
    assert dest.read_text().startswith(f"# kdtool run {dest}")
    with pytest.raises(KdtoolError, match="exists"):
        promote(data, base, 1, dest)
    with pytest.raises(KdtoolError, match="is failed"):
        promote(data, base, 4, tmp_path / "x.yaml")
    with pytest.raises(KdtoolError, match="no such trial"):
        promote(data, base, 99, tmp_path / "x.yaml")
