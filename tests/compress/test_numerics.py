"""Numerical faults and determinism: a NaN in a batch stops the run with exit code 3 and a
loadable last good checkpoint, or is skipped (and logged) when the recipe allows; `--deterministic`
runs are bit-identical; data workers get distinct, reproducible seeds."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import cli, error_lines, write_recipe
from safetensors.torch import load_file
from torch.utils.data import Dataset

import compress.distill.trainer as trainer
from compress.data.loader import make_loader

NAN_RECIPE = {"student": {"train": {"epochs": 3}}}  # 120 samples / 32 = 4 steps per epoch


@pytest.fixture(autouse=True)
def _one_thread_and_default_flags():
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old_threads)
    torch.use_deterministic_algorithms(old_det)


def inject_nan(monkeypatch, at_calls: set[int]):
    """Poison one sample of the batches the trainer augments at the given (1-based) calls; returns the
    real augmentation (to heal the data with)."""
    real = trainer.augment_batch
    calls = [0]

    def poisoned(raw, cfg, gen, *args, **kwargs):
        out, params = real(raw, cfg, gen, *args, **kwargs)
        calls[0] += 1
        if calls[0] in at_calls:
            out = out.clone()
            out[0, 0, 0, 0] = float("nan")
        return out, params

    monkeypatch.setattr(trainer, "augment_batch", poisoned)
    return real


def _finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t.float()).all()) for t in load_file(path).values())


def test_nan_in_a_batch_stops_with_exit_3_and_a_loadable_last_good_checkpoint(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path, NAN_RECIPE)
    out = tmp_path / "runs"
    real = inject_nan(monkeypatch, {6})  # epoch 2, step 2 (the teacher is not trained: epochs 0)
    result = cli("distill", recipe, "--out", out, "--stage", "baseline")
    assert result.exit_code == 3, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    folder = out / "tiny" / "student_baseline"
    assert "student_baseline: non-finite loss at epoch 2 step 2 (hard=nan, total=nan)" in lines[0]
    assert f"last good checkpoint kept in {folder}" in lines[0] and "nan_policy: skip" in lines[0]
    state = json.loads((folder / "last.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 0), "the last good state is the end of epoch 1"
    assert _finite(folder / "last.safetensors") and _finite(folder / "best.safetensors")
    assert not (folder / "meta.json").exists(), "a stopped stage is not marked done"

    monkeypatch.setattr(trainer, "augment_batch", real)  # the data is fixed; the run goes on
    resumed = cli("distill", recipe, "--out", out, "--stage", "baseline", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    history = json.loads((folder / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(np.isfinite(h["loss_total"]) for h in history)


def test_nan_is_skipped_and_logged_when_the_recipe_allows(tmp_path, monkeypatch, caplog):
    skip = {"epochs": 3, "nan_policy": "skip", "max_bad_steps": 2}
    recipe = write_recipe(tmp_path, {"student": {"train": skip}})
    out = tmp_path / "runs"
    inject_nan(monkeypatch, {6, 11})
    with caplog.at_level(logging.WARNING):
        result = cli("distill", recipe, "--out", out, "--stage", "baseline")
    assert result.exit_code == 0, result.stderr
    skipped = [r.getMessage() for r in caplog.records if "non-finite loss" in r.getMessage()]
    assert len(skipped) == 2, caplog.text
    assert "skipped student_baseline: non-finite loss at epoch 2 step 2" in skipped[0]
    assert "(1/2)" in skipped[0]
    assert "epoch 3 step 3" in skipped[1] and "(2/2)" in skipped[1]
    folder = out / "tiny" / "student_baseline"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [h.get("skipped_steps") for h in metrics["history"]] == [0, 1, 2]
    assert all(np.isfinite(v) for v in metrics["metrics"].values()), metrics["metrics"]
    assert _finite(folder / "best.safetensors") and _finite(folder / "last.safetensors"), \
        "a skipped NaN batch must not poison the weights or the BatchNorm statistics"


def test_too_many_bad_steps_stop_with_exit_3(tmp_path, monkeypatch):
    skip = {"epochs": 3, "nan_policy": "skip", "max_bad_steps": 1}
    recipe = write_recipe(tmp_path, {"student": {"train": skip}})
    inject_nan(monkeypatch, {2, 3})
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")
    assert result.exit_code == 3
    assert "non-finite loss at epoch 1 step 3" in error_lines(result.stderr)[0]


# ---------------------------------------------------------------- determinism


def _run_fingerprint(folder: Path) -> tuple[dict[str, bytes], list[dict]]:
    """Every tensor of every checkpoint as raw bytes (bitwise), and the per-epoch records minus timings."""
    weights = {f"{p.relative_to(folder)}:{k}": t.reshape(-1).view(torch.uint8).numpy().tobytes()
               for p in sorted(folder.rglob("*.safetensors")) for k, t in sorted(load_file(p).items())}
    history = json.loads((folder / "student_baseline" / "metrics.json").read_text())["history"]
    return weights, [{k: v for k, v in h.items() if k != "train_seconds"} for h in history]


def test_deterministic_runs_are_bit_identical(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": {"train": {"epochs": 1}},
                                     "data": {"augment": {"hflip": True, "crop_pad": 1}}})
    runs = []
    for name in ("a", "b"):
        result = cli("distill", recipe, "--out", tmp_path / name, "--stage", "baseline", "--deterministic")
        assert result.exit_code == 0, result.stderr
        assert torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(False)
        runs.append(_run_fingerprint(tmp_path / name / "tiny"))
    (weights_a, history_a), (weights_b, history_b) = runs
    assert len({k.split(":")[0] for k in weights_a}) == 4, "best and last of teacher and student"
    assert weights_a == weights_b, "weights differ between two --deterministic runs"
    assert history_a == history_b


def test_data_workers_do_not_change_the_result(tmp_path):
    """Augmentation is drawn in the main process per (seed, epoch, step): 0 or 2 workers, same weights."""
    results = []
    for workers in (0, 2):
        recipe = write_recipe(tmp_path, {"data": {"num_workers": workers, "augment": {"crop_pad": 1}},
                                         "student": {"train": {"epochs": 1}}}, name=f"w{workers}.yaml")
        result = cli("distill", recipe, "--out", tmp_path / f"w{workers}", "--stage", "baseline")
        assert result.exit_code == 0, result.stderr
        results.append(_run_fingerprint(tmp_path / f"w{workers}" / "tiny"))
    assert results[0] == results[1]


class RandomDraws(Dataset):
    """Each item reports the worker that made it and one draw from each RNG a transform might use."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([info.id if info else -1, torch.randint(0, 2**30, ()).item(),
                             np.random.randint(0, 2**30), random.randint(0, 2**30)])


def _draws(epoch: int) -> dict[int, list[list[int]]]:
    by_worker: dict[int, list[list[int]]] = {}
    for batch in make_loader(RandomDraws(), 4, shuffle=False, seed=7, epoch=epoch, num_workers=2):
        for row in batch.tolist():
            by_worker.setdefault(row[0], []).append(row[1:])
    return by_worker


def test_data_workers_get_distinct_reproducible_seeds():
    first, again, next_epoch = _draws(0), _draws(0), _draws(1)
    assert sorted(first) == [0, 1]
    for rng in range(3):  # torch, numpy, python: the two workers never draw the same stream
        assert [r[rng] for r in first[0]] != [r[rng] for r in first[1]], f"RNG {rng} shared by workers"
    assert first == again, "same (seed, epoch): same draws"
    assert first != next_epoch, "a new epoch draws anew"
