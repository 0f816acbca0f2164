"""A stage's weights depend on its recipe alone: not on the stage order, earlier work, or the machine's thread count."""

from __future__ import annotations

import json

import torch
from cli_fixtures import cli, write_recipe

from compress.core import determinism

RECIPE = {"teacher": {"train": {"epochs": 1}}, "student": {"train": {"epochs": 1}},
          "distill": {"train": {"epochs": 1, "init": "scratch"}}}


def _hashes(out) -> dict[str, str]:
    run = out / "tiny"
    return {s: json.loads((run / s / "meta.json").read_text())["outputs_sha256"]
            for s in ("teacher", "student_baseline", "student_kd")}


def test_stages_give_identical_weights_in_any_order_after_other_work(tmp_path):
    """Run A: a 1-thread process, stages in order. Run B: 3 threads, RNG used before, KD before the baseline."""
    recipe = write_recipe(tmp_path, RECIPE)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = cli("distill", recipe, "--out", tmp_path / "a")
        assert a.exit_code == 0, a.stderr
        torch.set_num_threads(3)  # another machine's default
        torch.rand(1000)  # and other work drew from the global generator first
        for stage in ("kd", "baseline"):
            b = cli("distill", recipe, "--out", tmp_path / "b", "--stage", stage)
            assert b.exit_code == 0, b.stderr
        assert torch.get_num_threads() == determinism.DEFAULT_TRAINING_THREADS  # training pinned it
    finally:
        torch.set_num_threads(old)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    meta = json.loads((tmp_path / "a" / "tiny" / "student_kd" / "meta.json").read_text())
    assert meta["provenance"]["determinism"]["threads"] == 2
    assert meta["provenance"]["commit"] and meta["provenance"]["versions"]["torch"] == torch.__version__


def test_the_thread_count_changes_trained_weights(tmp_path):
    """Why training pins `train.threads`: with 1 and 2 threads the same recipe gives other weights."""
    threads_1 = write_recipe(tmp_path, {**RECIPE, "student": {"train": {"epochs": 1, "threads": 1}}}, "one.yaml")
    threads_2 = write_recipe(tmp_path, RECIPE, "two.yaml")
    hashes = []
    for recipe, out in ((threads_1, "one"), (threads_2, "two")):
        result = cli("distill", recipe, "--out", tmp_path / out, "--stage", "baseline")
        assert result.exit_code == 0, result.stderr
        hashes.append(_hashes_of(tmp_path / out, "student_baseline"))
    assert hashes[0] != hashes[1]


def _hashes_of(out, stage: str) -> str:
    return json.loads((out / "tiny" / stage / "meta.json").read_text())["outputs_sha256"]
