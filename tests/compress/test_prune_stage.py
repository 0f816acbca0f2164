"""The prune stage's recipe keys through `run_prune`: budgets (max_params, max_gflops, max_latency_ms on
latency_runtime), steps with Taylor importance (calibration_batches), scope, recover, ignore, ratio as a
sweepable key. Untrained tiny models (train epochs 0): what is checked is structure, not accuracy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_fixtures import write_recipe  # noqa: E402

from compress.context import Context  # noqa: E402
from compress.core.atomic import read_json  # noqa: E402
from compress.core.errors import KdtoolError  # noqa: E402
from compress.core.runfolder import PRUNED, RunFolder  # noqa: E402
from recipes.load import load_recipe  # noqa: E402

STUDENT = {"arch": "resnet10t", "kwargs": {"channels": [8, 16, 32, 64]}, "train": {"epochs": 0}}


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> tuple[Path, Path]:
    """A recipe whose teacher and student are built but not trained, distilled into a run folder."""
    from compress.distill.stage import run_distill

    tmp = tmp_path_factory.mktemp("prune_stage")
    recipe = write_recipe(tmp, {"student": STUDENT, "distill": {"train": {"epochs": 0, "init": "scratch"}},
                                "prune": {"ratio": 0.5, "recover": "none"}})
    run_distill(context(recipe, tmp / "runs", []), "kd")
    return recipe, tmp / "runs"


def context(recipe: Path, out: Path, sets: list[str]) -> Context:
    r, _, _ = load_recipe(str(recipe), sets)
    return Context(r, RunFolder.for_recipe(out, r.name))


def prune(run_root, *sets: str) -> tuple[Context, dict]:
    from compress.prune.stage import run_prune

    ctx = context(*run_root, list(sets))
    return ctx, run_prune(ctx, force=True)


def test_ratio_is_a_key_a_sweep_can_search(run_root):
    """`--set prune.ratio=...` is a new stage input: a sweep's trials get their own pruned students."""
    a, b = (context(*run_root, [f"prune.ratio={v}"]).stage_hash(PRUNED) for v in (0.3, 0.5))
    assert a != b
    _, meta = prune(run_root, "prune.ratio=0.3")
    assert meta["pruning"]["ratio"] == 0.3 and meta["pruning"]["channels_removed"] == pytest.approx(0.3, abs=0.06)


def test_max_gflops_budget_is_met(run_root):
    _, unpruned = prune(run_root, "prune.ratio=0.0")
    budget = 0.5 * unpruned["gflops"]
    _, meta = prune(run_root, f"prune.max_gflops={budget}")
    assert meta["gflops"] <= budget and meta["pruning"]["ratio"] is None
    assert meta["pruning"]["max_gflops"] == pytest.approx(budget)


def test_max_params_budget_over_two_steps_with_taylor_importance(run_root):
    ctx, meta = prune(run_root, "prune.max_params=40000", "prune.steps=2", "prune.importance=taylor",
                      "prune.calibration_batches=1", "prune.scope=global")
    assert meta["params"] <= 40000
    folder = ctx.run.stage(PRUNED)
    first, last = (read_json(folder / f"step{k}" / "done.json")["params"] for k in (1, 2))
    assert first > last == meta["params"]  # the first step went half way, the second met the budget
    assert meta["pruning"]["steps"] == 2 and meta["pruning"]["scope"] == "global"


def test_an_unreachable_latency_budget_is_refused(run_root):
    with pytest.raises(KdtoolError, match=r"prune.max_latency_ms: budget 1e-06 cannot be reached"):
        prune(run_root, "prune.max_latency_ms=0.000001", "prune.latency_runtime=torch")


def test_latency_is_measured_on_onnxruntime():
    from compress.prune.budget import latency_ms

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    x = torch.randn(1, 1, 8, 8)
    model(x)
    assert 0 < latency_ms(model, x, "onnxruntime", 1) < 1000


def test_ignore_and_recover_reach_the_stage(run_root):
    ctx, meta = prune(run_root, "prune.ignore=[conv1]", "prune.recover=none")
    def stem(stage: str) -> list[int]:  # resnet10t's deep stem: three convolutions
        return [m.out_channels for m in ctx.load(stage).module.conv1 if isinstance(m, torch.nn.Conv2d)]

    assert stem(PRUNED) == stem("student_kd") == [24, 32, 64]
    assert ctx.load(PRUNED).module.layer1[0].conv1.out_channels == 4  # the rest is pruned by half
    assert meta["pruning"]["ignore"] == ["conv1"] and meta["pruning"]["recover"] == "none"


def test_an_interrupted_run_resumes_from_its_finished_steps(run_root):
    from compress.core.atomic import write_json
    from compress.prune.stage import run_prune

    sets = ["prune.steps=2", "prune.recover=hard", "prune.train.epochs=1", "prune.ratio=0.4"]
    ctx, done = prune(run_root, *sets)
    folder = ctx.run.stage(PRUNED)
    # as if stopped during step 2's recovery: step 1 finished, step 2 has its shapes and training state only
    (folder / "step2" / "done.json").unlink()
    (folder / "best.safetensors").unlink()
    write_json(folder / "meta.json", {**read_json(folder / "meta.json"), "complete": False})
    with pytest.raises(KdtoolError, match="holds an unfinished run"):
        run_prune(context(*run_root, sets))
    resumed = run_prune(context(*run_root, sets), resume=True)
    assert resumed["complete"] and resumed["params"] == done["params"]
    assert resumed["pruning"]["channels_removed"] == done["pruning"]["channels_removed"]


def test_recovery_reads_a_sweeps_shared_teacher_cache(run_root, tmp_path):
    """With `ctx.teacher_cache_dir` set (a sweep's shared cache), KD recovery builds and reads it there."""
    from compress.prune.stage import run_prune

    sets = ["prune.recover=kd", "prune.train.epochs=1", "distill.cache.enabled=true"]
    ctx = context(*run_root, sets)
    ctx.teacher_cache_dir = tmp_path / "shared"
    run_prune(ctx, force=True)
    assert (tmp_path / "shared" / "cache.json").exists()
    assert not ctx.run.stage("student_kd", "teacher_cache").exists()


def test_a_model_onnx_cannot_take_is_one_line_naming_the_torch_runtime():
    from compress.prune.budget import latency_ms

    class DataDependent(torch.nn.Module):  # a branch on a tensor's value: torch.export cannot trace it
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(KdtoolError, match=r"\(DataDependent\) cannot be exported to ONNX") as e:
        latency_ms(DataDependent(), torch.randn(1, 1, 4, 4), "onnxruntime", 1)
    assert "prune.latency_runtime: torch" in e.value.hint and "\n" not in str(e.value)


def test_timing_on_torch_gives_back_the_callers_thread_count():
    from compress.prune.budget import latency_ms

    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    try:
        torch.set_num_threads(other)
        latency_ms(torch.nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8), "torch", 3 - other)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_steps_never_take_a_layer_below_a_tenth_of_its_unpruned_channels(run_root):
    from compress.prune.pruner import layer_channels

    ctx, _ = prune(run_root, "prune.ratio=0.97", "prune.steps=3", "prune.scope=global")
    original, now = layer_channels(ctx.load("student_kd").module), layer_channels(ctx.load(PRUNED).module)
    assert all(now[p] >= 0.1 * n for p, n in original.items()), {p: (now[p], n) for p, n in original.items()}


@pytest.mark.parametrize(("base", "unused", "used"), [
    ([], "prune.calibration_batches=9", "prune.importance=taylor"),
    (["prune.importance=taylor"], "prune.latency_runtime=torch", "prune.calibration_batches=9"),
    ([], "prune.latency_runtime=torch", "prune.max_latency_ms=5"),
    (["prune.max_latency_ms=5"], "prune.ratio=0.3", "prune.latency_runtime=torch"),
    (["prune.max_params=1000"], "prune.ratio=0.3", "prune.max_params=2000"),
    (["prune.recover=none"], "prune.train.epochs=7", "prune.recover=hard"),
    (["prune.recover=hard", "prune.train.epochs=1"], "prune.calibration_batches=2", "prune.train.epochs=7"),
])
def test_only_keys_the_stage_uses_mark_it_stale(run_root, base, unused, used):
    """A key the stage validates but ignores in this combination leaves its hash alone; one it uses does not."""
    def stage_hash(*sets: str) -> str:
        return context(*run_root, [*base, *sets]).stage_hash(PRUNED)

    assert stage_hash(unused) == stage_hash()
    assert stage_hash(used) != stage_hash()
