"""Does distillation pay? The quickstart's KD ablation, with all labels and with 10 % of them.

    python -m tests.perf.kd_ablation                  # 3 seeds x 2 folds per row, about 25 minutes on 2 cores
    python -m tests.perf.kd_ablation --seeds 2

Runs `kdtool distill recipes/quickstart.yaml --ablate SEEDS --folds FOLDS`, once as it is and once with
`--set data.labeled_fraction=0.1` (10 % of each fold's training labels kept, the rest a transfer set
the KD student learns from the teacher's soft outputs alone), and writes every seed's baseline and
KD accuracy, the teacher's, and the mean and std per row to the results file of this CPU kind.
`tests/compress/test_ablation_readme.py` (slow) checks the claims on any machine and these numbers
on a machine of the same kind.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.perf import results

REPO = Path(__file__).resolve().parents[2]
MODES = {"all": (), "10 %": ("--set", "data.labeled_fraction=0.1")}
"""Label share of each row -> the extra CLI arguments."""
COLUMNS = ("labels", "seed", "teacher", "baseline", "kd", "gain")


def ablate(extra: tuple[str, ...], seeds: int, folds: int, out: Path) -> dict:
    """Run one `kdtool distill --ablate` into `out` and return its ablation.json."""
    command = [sys.executable, str(REPO / "kdtool.py"), "distill", str(REPO / "recipes" / "quickstart.yaml"), *extra,
               "--ablate", str(seeds), "--folds", str(folds), "--out", str(out)]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads((out / "quickstart" / "ablation" / "ablation.json").read_text())


def rows(labels: str, summary: dict) -> list[tuple]:
    """One row per seed, then the mean and the std of the seeds, as in the results file (4 decimals)."""
    base, kd = summary["baseline"], summary["kd"]
    teacher = f"{summary['teacher']:.4f}"
    out = [(labels, seed, teacher, f"{b:.4f}", f"{k:.4f}", f"{k - b:+.4f}")
           for seed, (b, k) in enumerate(zip(base["values"], kd["values"], strict=True))]
    out.append((labels, "mean", teacher, f"{base['mean']:.4f}", f"{kd['mean']:.4f}", f"{summary['gain']:+.4f}"))
    out.append((labels, "std", "", f"{base['std']:.4f}", f"{kd['std']:.4f}", f"{summary['paired_gain']['std']:.4f}"))
    return out


def main(argv: list[str] | None = None) -> None:
    """Run both rows and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--folds", type=int, default=2)
    args = parser.parse_args(argv)
    records = []
    with tempfile.TemporaryDirectory(prefix="kd-ablation-") as tmp:
        for labels, extra in MODES.items():
            records += rows(labels, ablate(extra, args.seeds, args.folds, Path(tmp) / labels.replace(" %", "pct")))
    results.write("kd_ablation", COLUMNS, records,
                  note=f"accuracy, {args.folds}-fold cross-validation over the 1,797 digits, {args.seeds} seeds, "
                       f"2 training threads; gain: KD - baseline (std row: of the paired per-seed gain)")


if __name__ == "__main__":
    main()
