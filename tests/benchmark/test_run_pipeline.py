"""`run_pipeline`, the stage sequence `kdtool run` and each sweep trial share, with the stages stubbed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import benchmark.stage
import compress.distill.stage
import compress.prune.stage
import compress.quant.stage
import export.stage
from benchmark.pipeline import run_pipeline
from compress.core.errors import ExportError


@pytest.fixture
def calls(monkeypatch):
    seen: list[tuple[str, dict]] = []

    def stub(name, result=None, error=None):
        def stage(ctx, *args, **kwargs):
            seen.append((name, kwargs))
            if error is not None:
                raise error
            return result
        return stage

    monkeypatch.setattr(compress.distill.stage, "run_distill",
                        stub("distill", [SimpleNamespace(name="student_kd", seconds=1.5)]))
    monkeypatch.setattr(compress.prune.stage, "run_prune", stub("prune"))
    monkeypatch.setattr(compress.quant.stage, "run_quantize", stub("quantize"))
    monkeypatch.setattr(export.stage, "run_export", stub("export", error=ExportError("android: parity 0.3")))
    monkeypatch.setattr(benchmark.stage, "run_benchmark", stub("benchmark"))
    return seen


@pytest.mark.parametrize("prune", [None, {"ratio": 0.5}])
def test_stages_in_order_prune_when_the_recipe_has_it(calls, prune):
    ctx = SimpleNamespace(recipe=SimpleNamespace(prune=prune))
    result = run_pipeline(ctx, force=True, resume=True, wide=True)
    names = ["distill", "prune", "quantize", "export", "benchmark"]
    assert [c[0] for c in calls] == [n for n in names if prune or n != "prune"]
    assert dict(calls)["distill"] == {"force": True, "resume": True}
    assert dict(calls)["benchmark"] == {"force": True, "wide": True}
    assert result.export_failure.message == "android: parity 0.3"  # the benchmark still ran after it
    assert list(result.timings)[0] == "student_kd" and result.timings["student_kd"] == 1.5
    assert "total" in result.timings and ("prune" in result.timings) == bool(prune)
