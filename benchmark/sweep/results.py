"""A sweep's results: one record per trial, `trials.csv`, `sweep.json` (schema `kdtool.sweep/1`), the front.

A record is the trial's parameters, its target point (artifact, retention, p50 ms, MB, metric), its
state (complete, pruned, failed, running, waiting) and the reason when it did not complete. Whether
the study came from Optuna's storage or from Ray Tune, the files are the same.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from benchmark.pareto import dominates, pareto_front
from compress.core.atomic import read_json, write_json, write_text

SCHEMA = "kdtool.sweep/1"
NUMBERS = ("retention", "p50_ms", "size_mb", "metric")
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def records_from_study(study: Any) -> list[dict[str, Any]]:
    """One record per trial of an Optuna study (surplus and re-queued interrupted ones left out)."""
    from benchmark.sweep.study import counted

    out = []
    for t in counted(study):
        point = t.user_attrs.get("point") or {}
        state = STATES.get(t.state.name, t.state.name.lower())
        feasible = all(v <= 0 for v in t.user_attrs.get("constraints", [0.0]))
        out.append({"number": t.number, "state": state, "params": dict(t.params),
                    **{k: point.get(k) for k in NUMBERS}, "artifact": point.get("artifact"),
                    "feasible": feasible if state == "complete" else None, "reason": t.user_attrs.get("reason"),
                    "folder": t.user_attrs.get("folder"), "recipe_point": bool(t.user_attrs.get("recipe_point")),
                    "retry_of": t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial"))})
    return out


def summarize(records: list[dict[str, Any]], objectives: list[str], directions: list[str]) -> dict[str, Any]:
    """The front (complete, feasible trials), the recipe's own point and the trials that dominate it."""
    done = [r for r in records if r["state"] == "complete" and r["feasible"]
            and all(r[o] is not None for o in objectives)]
    points = [[r[o] for o in objectives] for r in done]
    front = [done[i]["number"] for i in pareto_front(points, directions)]
    own = next((r for r in records if r["recipe_point"] and r["state"] == "complete"), None)
    better = []
    if own is not None and all(own[o] is not None for o in objectives):
        ref = [own[o] for o in objectives]
        better = [r["number"] for r, p in zip(done, points, strict=True) if dominates(p, ref, directions)]
    return {"front": front, "recipe_point": own["number"] if own else None, "dominates_recipe": better}


def write_results(sweep_dir: Path, header: dict[str, Any], records: list[dict[str, Any]],
                  importances: dict[str, Any]) -> dict[str, Any]:
    """Write `trials.csv` and `sweep.json` atomically; returns the sweep.json object."""
    summary = summarize(records, header["objectives"], header["directions"])
    data = {"schema": SCHEMA, **header, **summary, "importances": importances, "trials": records}
    write_json(Path(sweep_dir) / "sweep.json", data)
    write_text(Path(sweep_dir) / "trials.csv", to_csv(records))
    return data


def to_csv(records: list[dict[str, Any]]) -> str:
    """One row per trial: number, state, the numbers, artifact, each parameter, reason."""
    keys = sorted({k for r in records for k in r["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "state", *NUMBERS, "artifact", "feasible", *keys, "reason", "folder"])
    for r in records:
        writer.writerow([r["number"], r["state"], *(r[k] for k in NUMBERS), r["artifact"], r["feasible"],
                         *(r["params"].get(k) for k in keys), r["reason"], r["folder"]])
    return buf.getvalue()


def importances(study: Any, objectives: list[str]) -> dict[str, Any]:
    """Parameter importances per objective (optuna.importance), or the reason they cannot be computed."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {"note": f"{len(complete)} complete trial(s): importances need at least 3"}
    out: dict[str, Any] = {}
    for i, name in enumerate(objectives):
        try:
            out[name] = optuna.importance.get_param_importances(
                study, target=lambda t, i=i: t.values[i], evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError, ZeroDivisionError) as e:  # e.g. every trial has the same values
            out[name] = {}
            out.setdefault("note", f"{name}: {e}")
    return out


def load_sweep(path: Path) -> dict[str, Any]:
    """A sweep.json (or the sweep folder holding it)."""
    path = Path(path)
    return read_json(path / "sweep.json" if path.is_dir() else path)
