"""One trial: a whole kdtool run (distill → quantize → export → benchmark) in its own process and run folder.

The sweep writes `<trial>/recipe.yaml` (the recipe with the trial's values, the shared teacher as
`teacher.checkpoint`) and `<trial>/trial.json`, then runs `python -m benchmark.sweep.trial <trial>`.
The process writes `<trial>/result.json`: `complete` with the target's point, `pruned` or `failed`
with the reason. Its own process: a crash, an out-of-memory kill or a native abort costs one trial,
not the sweep, and a killed sweep takes its trials with it (PR_SET_PDEATHSIG on Linux).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from compress.core.atomic import read_json, write_json

STORAGE_ENV = "KDTOOL_SWEEP_STORAGE"
"""The study's URL reaches the trial process through the environment, never its command line (a password
in `ps` is readable by every user)."""


PARENT_ENV = "KDTOOL_SWEEP_PARENT"


class Pruned(Exception):
    """Raised by the epoch callback: the trial stops training, its state is `pruned`."""


def run_trial_process(trial_dir: Path, storage_url: str | None) -> dict[str, Any]:
    """Run one trial in a child process; its result (a crash becomes `failed` with the exit status).

    Args:
        trial_dir: the trial's run folder holding `recipe.yaml` and `trial.json`.
        storage_url: the study's URL (for per-epoch pruning), passed in the environment.
    """
    env = {**os.environ, "KDTOOL_QUIET": "1", PARENT_ENV: str(os.getpid())}
    if storage_url:
        env[STORAGE_ENV] = storage_url
    root = str(Path(__file__).resolve().parents[2])  # the kdtool checkout this sweep runs from
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    (trial_dir / "result.json").unlink(missing_ok=True)
    with open(trial_dir / "trial.log", "ab") as log:
        proc = subprocess.run([sys.executable, "-m", "benchmark.sweep.trial", str(trial_dir)], stdout=log,
                              stderr=subprocess.STDOUT, env=env, check=False)
    if (trial_dir / "result.json").exists():
        return read_json(trial_dir / "result.json")
    code = proc.returncode
    if code in (130, -signal.SIGINT, -signal.SIGTERM):
        return {"state": "interrupted", "reason": "interrupted"}
    why = (f"killed by signal {-code} ({signal.Signals(-code).name}; out of memory?)" if code < 0
           else f"the trial process exited with code {code}")
    return {"state": "failed", "reason": f"{why}; see {trial_dir / 'trial.log'}"}


def _die_with_parent() -> None:
    """In the trial process: receive SIGKILL when the sweep process dies (Linux), so a killed sweep leaves
    no orphan trial writing into its folder. Set here, not in `preexec_fn` (unsafe with the worker threads);
    a sweep that died before this line is caught by the parent check."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    parent = os.environ.get(PARENT_ENV)
    if parent and os.getppid() != int(parent):
        os._exit(130)


def target_point(report: Any, target: str) -> dict[str, Any] | None:
    """The artifact kdtool would ship for `target` and its numbers, or None when none was verified.

    The card's pick (the fastest verified artifact keeping `benchmark.min_retention`); when none keeps
    it, the fastest verified one (its retention below the floor: the front shows the cost).
    """
    from benchmark.report.card import recommend

    name = report.recommendation.get(target)
    if name is None:
        name = recommend(report.rows, [target], 0.0, report.primary_metric)[0].get(target)
    if name is None:
        return None
    row = report.row(name)
    lat = row.latency_at(1)
    metric = row.metrics.get(report.primary_metric) if report.primary_metric else None
    return {"artifact": row.name, "retention": row.retention, "p50_ms": lat.p50 if lat else None,
            "size_mb": row.size_mb, "metric": metric}


class EpochPruner:
    """Decides after each distillation epoch whether a trial stops.

    Single objective: Optuna's pruner (median or Hyperband) through `Trial.report`/`should_prune`. The
    value reported is the validation metric signed to agree with the study's direction (a `p50_ms` or
    `size_mb` study minimizes, but its trials are still judged by accuracy: higher stays better).
    Several objectives: Optuna 5.0 refuses `Trial.report` there, so the median rule is applied here:
    stop when the validation metric at an epoch is worse than the median of the completed trials at that
    epoch (after `startup` completed trials, from epoch `warmup` + 1 on). Each epoch's metric is kept as
    the trial's `epoch_values` user attribute, which is what later trials compare with.
    """

    def __init__(self, spec: dict[str, Any], storage_url: str) -> None:
        import optuna

        self.spec = spec
        pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=spec["startup"],
                                                        n_warmup_steps=spec["warmup"]),
                  "hyperband": optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec["epochs"])
                  }.get(spec["pruner"], optuna.pruners.NopPruner())
        from benchmark.sweep.storage import open_storage

        self.study = optuna.load_study(study_name=spec["study"], storage=open_storage(storage_url), pruner=pruner)
        self.trial = optuna.trial.Trial(self.study, spec["trial_id"])
        self.values: list[float] = []
        self.sign = report_sign(self.study.directions[0].name.lower(), spec["lower_is_better"])

    def __call__(self, stage: str, record: dict[str, Any]) -> None:
        if stage != "student_kd":
            return
        value = record.get(f"val_{self.spec['metric']}")
        if value is None:
            return
        epoch = len(self.values)
        self.values.append(float(value))
        self.trial.set_user_attr("epoch_values", self.values)
        if self.spec["pruner"] == "none":
            return
        if len(self.study.directions) == 1:
            self.trial.report(self.sign * float(value), epoch)
            if self.trial.should_prune():
                raise Pruned(f"pruned at epoch {epoch + 1} by Optuna's {self.spec['pruner']} pruner "
                             f"(val {self.spec['metric']} {value:.4f})")
            return
        self._median_rule(epoch, float(value))

    def _median_rule(self, epoch: int, value: float) -> None:
        import statistics

        from optuna.trial import TrialState

        if epoch < self.spec["warmup"]:
            return
        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        at_epoch = [t.user_attrs["epoch_values"][epoch] for t in done
                    if len(t.user_attrs.get("epoch_values", [])) > epoch]
        if len(at_epoch) < self.spec["startup"]:
            return
        median = statistics.median(at_epoch)
        worse = value > median if self.spec["lower_is_better"] else value < median
        if worse:
            raise Pruned(f"pruned at epoch {epoch + 1}: val {self.spec['metric']} {value:.4f} worse than the "
                         f"median {median:.4f} of {len(at_epoch)} completed trials at that epoch")


def report_sign(direction: str, lower_is_better: bool) -> float:
    """The sign that makes a validation metric agree with a single-objective study's direction: +1 when the
    study maximizes and higher metric is better (or it minimizes and lower is better), else -1."""
    return 1.0 if (direction == "maximize") != lower_is_better else -1.0


def run_trial(trial_dir: Path) -> dict[str, Any]:
    """Run the trial in this process: the stages `kdtool run` runs (`benchmark.pipeline.run_pipeline`), then
    its target point (the child's body)."""
    from benchmark.pipeline import run_pipeline
    from benchmark.report.card import load_report
    from compress.context import Context
    from compress.core.atomic import sha256_json
    from compress.core.runfolder import RunFolder
    from recipes.load import load_recipe

    spec = read_json(trial_dir / "trial.json")
    recipe, _, raw = load_recipe(trial_dir / "recipe.yaml")
    ctx = Context(recipe, RunFolder(trial_dir), recipe_sha=sha256_json(raw))
    if spec.get("teacher_cache_dir"):
        ctx.teacher_cache_dir = Path(spec["teacher_cache_dir"])
    url = os.environ.get(STORAGE_ENV)
    if url and spec.get("trial_id") is not None:
        ctx.on_epoch = EpochPruner(spec, url)
    failure = run_pipeline(ctx).export_failure
    export_failure = failure.message if failure is not None else None
    report = load_report(ctx.run.report / "report.json")
    point = target_point(report, spec["target"])
    if point is None:
        unscored = next((r.retention_reason for r in report.rows if r.stage == "export" and r.status == "ok"
                         and r.retention is None and r.retention_reason), None)
        if unscored and not export_failure:
            return {"state": "failed", "reason": f"retention not computed: {unscored}"}
        why = export_failure or f"no verified {spec['target']} artifact (see {ctx.run.report / 'report.md'})"
        return {"state": "failed", "reason": f"export/parity: {why}"}
    if point["retention"] is None:
        return {"state": "failed", "reason": f"{point['artifact']}: retention not computed (teacher at or below "
                                             "chance?)", "point": point}
    return {"state": "complete", "point": point, "note": export_failure}


def main(argv: list[str]) -> int:
    """`python -m benchmark.sweep.trial TRIAL_DIR`: run it, write `result.json`; exit 130 when interrupted."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR)
    _die_with_parent()
    trial_dir = Path(argv[1])
    try:
        result = run_trial(trial_dir)
    except KeyboardInterrupt:
        return 130
    except Pruned as e:
        result = {"state": "pruned", "reason": str(e)}
    except BaseException as e:  # noqa: BLE001  (every failure is the trial's result, with its reason)
        traceback.print_exc()
        result = {"state": "failed", "reason": failure_reason(e)}
    write_json(trial_dir / "result.json", result)
    return 0


def failure_reason(e: BaseException) -> str:
    """One line saying why a trial failed: its kind (non-finite loss, out of memory, export/parity) when known,
    then the error as a report row gives it (`benchmark.measure.failure_reason`)."""
    from benchmark.measure import failure_reason as row_reason
    from compress.core.errors import ExportError, NonFiniteLossError

    kind = ("non-finite loss: " if isinstance(e, NonFiniteLossError) else
            "out of memory: " if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" else
            "export/parity: " if isinstance(e, ExportError) else "")
    return kind + row_reason(e)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
