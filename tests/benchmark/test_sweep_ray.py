"""`--backend ray` without a cluster: trial numbers and folders, the resources a trial asks for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from benchmark.sweep.ray_backend import _record, trial_folder, trial_number
from benchmark.sweep.space import parse_space
from benchmark.sweep.study import SweepSpec
from recipes.load import RECIPES_DIR

DIR = "_trainable_3f2a9c1d_{}_distill.temperature=4.0000_2026-12-05_06-12-31"


@pytest.fixture
def spec(tmp_path):
    raw = yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())
    params = parse_space({"distill.temperature": [2.0, 4.0]}, raw)
    return SweepSpec(raw_recipe=raw, name="quickstart", params=params, sweep_dir=tmp_path, study_name="s",
                     storage_url="", target="android", objectives=("retention", "p50_ms"), constraints=())


def test_trial_number_is_rays_count_from_zero():
    assert [trial_number(DIR.format(n)) for n in (1, 2, 12)] == [0, 1, 11]
    assert trial_number("_trainable_00000123_7_x=1_2026-01-01_00-00-00") == 6  # an all-digit id
    with pytest.raises(ValueError):
        trial_number("not-a-ray-folder")


def test_records_name_the_trial_the_trainable_ran(spec, tmp_path):
    ok = SimpleNamespace(path=str(tmp_path / DIR.format(3)), config={"distill.temperature": 4.0}, error=None,
                         metrics={"retention": 0.97, "p50_ms": 1.2, "artifact": "a.onnx", "number": 2,
                                  "folder": str(trial_folder(spec, 2))})
    record = _record(spec, ok, None, index=0)
    assert record["number"] == 2 and record["folder"].endswith("trials/ray-0002") and record["state"] == "complete"
    failed = SimpleNamespace(path=str(tmp_path / DIR.format(5)), config={"distill.temperature": 2.0},
                             error=RuntimeError("trial 4 failed: non-finite loss"), metrics={})
    record = _record(spec, failed, None, index=1)
    assert record["number"] == 4 and record["folder"] == str(trial_folder(spec, 4)) and record["state"] == "failed"


@pytest.mark.parametrize(("device", "local_cuda", "cluster_gpus", "gpu"),
                         [(None, True, 0, 1), (None, False, 2, 1), (None, False, 0, 0), ("cpu", True, 2, 0),
                          ("cuda", False, 0, 1)])
def test_a_trial_asks_for_a_gpu_when_it_trains_on_cuda(spec, monkeypatch, device, local_cuda, cluster_gpus, gpu):
    import torch

    from benchmark.sweep.ray_backend import trial_resources

    monkeypatch.setattr(torch.cuda, "is_available", lambda: local_cuda)
    ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, **({"GPU": cluster_gpus} if cluster_gpus else {})})
    spec.extra = {"threads": 2, "device": device}
    assert trial_resources(spec, ray) == {"cpu": 2, "gpu": gpu}


def test_ray_searches_with_the_sweeps_sampler(spec, monkeypatch, tmp_path):
    """The same TPE settings as a local sweep (seeded, its startup trials), without the constraints function."""
    pytest.importorskip("ray.tune")
    from ray import tune

    from benchmark.sweep.ray_backend import run_ray

    seen = {}

    class Tuner:
        def __init__(self, trainable, tune_config, run_config):
            seen["search"] = tune_config.search_alg

        def fit(self):
            return []

    monkeypatch.setattr(tune, "Tuner", Tuner)
    spec.trials, spec.constraints = 12, ()
    (tmp_path / "teacher.safetensors").write_bytes(b"")
    assert run_ray(spec, tmp_path / "teacher.safetensors", None, {"cpu": 1, "gpu": 0}, None) == []
    sampler = seen["search"]._sampler
    assert sampler._n_startup_trials == 4 and sampler._constraints_func is None
