"""The KD ablation's claims hold on any machine; its exact numbers reproduce on a CPU of the same kind.

A fresh 2-seed × 2-fold ablation of the quickstart (all labels, and 10 % of them) must show, on any
machine, what docs/benchmarks/kd_ablation.md claims: with 10 % of the labels KD is better on every
seed and its gain is larger than the seed-to-seed spread. Exact numbers are not portable: CPU float
sums differ between CPU kinds (AVX2, AVX-512, VNNI, AMX kernels), so a fold's teacher and students
train to other weights (the results files of two kinds differ by up to 0.016). They are compared
only with `docs/benchmarks/results/kd_ablation-<cpu kind>.csv` made on this machine's kind (seeds 0
and 1 of its 3-seed run, which a 2-seed run reproduces bit for bit: every seed and fold is seeded on
its own and training pins its threads); without one, that comparison is skipped with the reason.

Runs two ablations, about 14 minutes on a busy 2-core machine:
`python -m pytest -m slow tests/compress/test_ablation_readme.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_fixtures import REPO, cli

from tests.perf import results

ROUNDING = 6e-5
"""The results file keeps 4 decimals: on the same CPU kind the numbers agree to that rounding."""
MODES = {"all": (), "10 %": ("--set", "data.labeled_fraction=0.1")}


def _reference(labels: str) -> dict | None:
    """This CPU kind's recorded numbers for one row (teacher, per-seed baseline and KD), or None."""
    path = results.path_for("kd_ablation", results.cpu_kind())
    if not path.exists():
        return None
    _, columns, rows = results.read(path)
    seeds = [dict(zip(columns, r, strict=True)) for r in rows if r[0] == labels and r[1].isdigit()]
    if not seeds:
        return None
    return {"teacher": float(seeds[0]["teacher"]), "baseline": [float(s["baseline"]) for s in seeds],
            "kd": [float(s["kd"]) for s in seeds]}


@pytest.mark.slow
@pytest.mark.parametrize("labels", list(MODES))
def test_kd_ablation_claims_and_numbers(tmp_path, labels):
    out = tmp_path / "runs"
    result = cli("distill", REPO / "recipes" / "quickstart.yaml", *MODES[labels], "--ablate", "2", "--folds", "2",
                 "--out", out)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(Path(out / "quickstart" / "ablation" / "ablation.json").read_text())
    assert summary["provenance"]["determinism"]["threads"] == 2
    base, kd = summary["baseline"]["values"], summary["kd"]["values"]
    assert len(base) == len(kd) == 2
    if labels == "10 %":  # the claim: where labels are scarce, KD pays on every seed, beyond the spread
        assert all(k > b for b, k in zip(base, kd, strict=True)), f"KD not better on every seed: {base} vs {kd}"
        assert summary["significant"], f"gain {summary['gain']:+.4f} not above the spread {summary['spread']:.4f}"
    reference = _reference(labels)
    if reference is None:
        pytest.skip(f"claims hold; no kd_ablation results of this CPU kind ({results.cpu_kind()}) to compare the "
                    f"exact numbers with: run python -m tests.perf.kd_ablation on it")
    assert summary["teacher"] == pytest.approx(reference["teacher"], abs=ROUNDING)
    assert base == pytest.approx(reference["baseline"][:2], abs=ROUNDING)
    assert kd == pytest.approx(reference["kd"][:2], abs=ROUNDING)
