"""`kdtool distill --ablate N`: the table's numbers are the per-seed results, paired by seed."""

from __future__ import annotations

import json
import statistics

from reliability_fixtures import cli, write_recipe


def test_ablation_reports_means_spread_and_paired_gains(tmp_path):
    recipe = write_recipe(tmp_path, {"student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    result = cli("distill", recipe, "--out", out, "--ablate", "2")
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "tiny" / "ablation" / "ablation.json").read_text())
    base, kd = summary["baseline"]["values"], summary["kd"]["values"]
    assert len(base) == len(kd) == 2 and all(0.0 <= v <= 1.0 for v in base + kd)
    assert summary["baseline"]["mean"] == statistics.fmean(base)
    assert summary["kd"]["std"] == statistics.stdev(kd)
    assert summary["paired_gain"]["values"] == [k - b for k, b in zip(kd, base, strict=True)]
    assert summary["gain"] == statistics.fmean(kd) - statistics.fmean(base)
    assert summary["kd_wins"] == sum(k > b for k, b in zip(kd, base, strict=True))
    assert summary["significant"] == (summary["gain"] > max(summary["baseline"]["std"], summary["kd"]["std"]))
    assert "paired per seed" in result.stdout + result.stderr
