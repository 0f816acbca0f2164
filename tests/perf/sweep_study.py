"""`kdtool sweep` on the quickstart: trials per hour with 1 and 2 workers, and whether it beats the recipe.

    python -m tests.perf.sweep_study                          # 24 trials, 1 worker then 2, android
    python -m tests.perf.sweep_study --trials 6 --workers 1   # a reduced run

The space: student width (`student.kwargs.channels`), `distill.temperature`, `distill.alpha`, the KD
loss (`distill.soft_loss`: the task's default kl, or dkd) and the int8 mode (`quantize.modes`); the
shipped quickstart's own values lie inside it, so the quickstart as written is trial 0 of each sweep.
Each worker count runs its own study (`--study quickstart-sweep-wK`) from scratch in `--out`, timed
by wall clock; trials per hour = trials / wall time (the teacher, trained once per sweep, included).
Each worker trains and times on cores // K threads (the student, KD, QAT and benchmark `threads`), so
both sweeps use the cores once. `--reuse` reads back a sweep finished before in the same `--out`.

Writes `docs/benchmarks/results/sweep-<cpu kind>.csv` (`tests.perf.results.write`: the machine and
versions in its header): one row per worker count with the ratio to 1 worker, the recipe's point, the
trials that dominate it (more retention at no more latency, or less latency at no less retention; one
latency measurement each, so a dominance by less than the trials' spread is noise) and the load
average before and after; and the front plot of each sweep beside it (`sweep-<cpu kind>-wK.png`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACE = """\
student.kwargs.channels: [[2, 4, 8, 16], [4, 8, 16, 32], [8, 16, 32, 64]]
distill.temperature: {low: 1.0, high: 8.0, log: true}
distill.alpha: {low: 0.1, high: 0.9}
distill.soft_loss: [null, dkd]
quantize.modes: [[dynamic, static, qat], [static], [qat]]
"""
ROOT = Path(__file__).resolve().parents[2]


def thread_overrides(workers: int, overrides: list[str]) -> list[str]:
    """Training and timing threads of cores // workers each, so every worker count uses the cores once
    (unless the command line sets them)."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    keys = ("student.train.threads", "distill.train.threads", "quantize.qat.threads", "benchmark.threads")
    return [f"{k}={threads}" for k in keys if not any(o.startswith(f"{k}=") for o in overrides)]


def run_sweep(out: Path, trials: int, workers: int, overrides: list[str],
              reuse: bool) -> tuple[float, dict, list[float] | None]:
    """One sweep in a fresh study: (wall seconds, sweep.json, load average before and after). With
    `reuse`, a sweep this script finished before in `out` is read back with its wall time and load."""
    from benchmark.sweep.results import load_sweep

    out.mkdir(parents=True, exist_ok=True)
    space = out / "space.yaml"
    space.write_text(SPACE)
    study = f"quickstart-sweep-w{workers}"
    timing = out / study / "study_wall.json"
    if reuse and timing.exists():
        saved = json.loads(timing.read_text())
        return saved["wall_s"], load_sweep(out / study), saved.get("load")
    cmd = [sys.executable, str(ROOT / "kdtool.py"), "sweep", "quickstart", "--space", str(space), "--trials",
           str(trials), "--workers", str(workers), "--target", "android", "--study", study, "--out", str(out),
           *[a for o in [*overrides, *thread_overrides(workers, overrides)] for a in ("--set", o)]]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    timing.write_text(json.dumps({"wall_s": wall, "command": cmd, "load": load}))
    return wall, load_sweep(out / study), load


def summary(workers: int, wall: float, data: dict, base_rate: float | None) -> dict:
    """One CSV row: counts, trials per hour, the recipe's point and who dominates it."""
    from benchmark.sweep.study import short_params

    trials = data["trials"]
    by = {t["number"]: t for t in trials}
    own = by.get(data["recipe_point"]) if data["recipe_point"] is not None else None
    better = [by[n] for n in data["dominates_recipe"]]
    best = max(better, key=lambda t: (t["retention"], -t["p50_ms"]), default=None)
    rate = 3600.0 * len(trials) / wall
    return {"workers": workers, "trials": len(trials), **{s: sum(t["state"] == s for t in trials)
                                                          for s in ("complete", "pruned", "failed")},
            "wall_s": round(wall, 1), "trials_per_hour": round(rate, 2),
            "ratio_vs_1_worker": round(rate / base_rate, 3) if base_rate else 1.0 if workers == 1 else None,
            "front": " ".join(map(str, data["front"])),
            "recipe_trial": own["number"] if own else None,
            "recipe_retention": round(own["retention"], 4) if own else None,
            "recipe_p50_ms": round(own["p50_ms"], 4) if own else None,
            "recipe_artifact": own["artifact"] if own else None,
            "dominating_trials": " ".join(str(t["number"]) for t in better) or "none",
            "best_dominating": (f"trial {best['number']}: retention {best['retention']:.4f}, p50 {best['p50_ms']:.3f} "
                                f"ms, {best['artifact']}, {short_params(best['params'])}") if best else ""}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, 1 first")
    parser.add_argument("--out", type=Path, default=None, help="sweeps folder (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override")
    parser.add_argument("--reuse", action="store_true",
                        help="read back a sweep this script finished before in --out (with its wall time)")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-study-"))
    from benchmark.sweep.html import pareto_png
    from tests.perf.results import RESULTS, cpu_kind, write

    rows, base = [], None
    for workers in (int(w) for w in args.workers.split(",")):
        wall, data, load = run_sweep(out, args.trials, workers, args.overrides, args.reuse)
        row = summary(workers, wall, data, base)
        base = base or row["trials_per_hour"]
        rows.append({**row, "load_before": load[0] if load else None, "load_after": load[1] if load else None})
        png = pareto_png(data)
        if png:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / f"sweep-{cpu_kind()}-w{workers}.png").write_bytes(png)
        print(row, flush=True)
    write("sweep", list(rows[0]), [list(r.values()) for r in rows],
          note="trials_per_hour = trials / wall time of the whole command (teacher included); a dominance by "
               "less than the latency spread of one measurement is noise; a sweep read back with --reuse keeps the "
               "wall time and load average recorded when it ran (blank: not recorded)")

if __name__ == "__main__":
    main()
