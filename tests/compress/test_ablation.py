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


def test_sigterm_stops_the_whole_ablation(tmp_path, monkeypatch):
    """A SIGTERM inside one seed's training ends the ablation with 143 instead of starting the next seed."""
    import compress.ablation
    from compress.trainer import FitResult

    calls = []

    def interrupted_fit(*args, label="", **kwargs):
        calls.append(label)
        return FitResult(float("nan"), 0, [], 0.0, interrupted=True)

    recipe = write_recipe(tmp_path, {"student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 1}}})
    cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")  # the teacher, trained for real
    monkeypatch.setattr(compress.ablation, "fit", interrupted_fit)
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--ablate", "3")
    assert result.exit_code == 143, result.stderr
    assert calls == ["baseline seed 0"]
    assert "ablation was interrupted (SIGTERM) during baseline seed 0" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "ablation" / "ablation.json").exists()
