"""Bad data caught below the CLI: the data layer skips and counts unreadable files, the task refuses labels
out of range (the CLI path of both is tests/cli/test_bad_input.py)."""

from __future__ import annotations

import logging

import pytest
import torch
from cli_fixtures import write_recipe

from compress.core.tasks import Task
from compress.data.synthetic import write_audiofolder

pytestmark = pytest.mark.usefixtures("one_thread")


def test_undecodable_audio_below_threshold_is_counted(tmp_path, caplog):
    """Skipping is the data layer's job; checked here without training (the CLI path is the image test)."""
    from compress.data.loader import build_datasets
    from recipes.load import load_recipe

    root = write_audiofolder(tmp_path / "audio", Task("binary", 2), num_samples=24, sample_rate=8000,
                             clip_seconds=0.25)
    bad = sorted(root.rglob("*.wav"))[3]
    bad.write_bytes(bad.read_bytes()[:100])
    recipe = write_recipe(tmp_path, {"task": {"kind": "binary", "num_classes": 2},
                                     "data": {"source": "audiofolder", "root": str(root), "sample_rate": 8000,
                                              "clip_seconds": 0.25, "limit": None, "max_bad_fraction": 0.1},
                                     "teacher": {"arch": "tiny_conv"}, "student": {"arch": "tiny_conv"}})
    r, _, _ = load_recipe(recipe)
    with caplog.at_level(logging.WARNING):
        train, val = build_datasets(r.data, Task.from_config(r.task))
    assert len(train) + len(val) == 23
    assert f"skipped 1 of 24 files that could not be read: {bad}" in caplog.text


def test_out_of_range_class_labels_in_memory_are_refused():
    """Labels that reach the loader already decoded (any source) are checked too."""
    from compress.core.errors import KdtoolError

    task = Task("multiclass", 10)
    with pytest.raises(KdtoolError, match="class label 12 outside 0..9"):
        task.check_targets(torch.tensor([1, 2, 12]), "data (x.csv) training labels")
    with pytest.raises(KdtoolError, match="labels contain NaN"):
        Task("regression", 1).check_targets(torch.tensor([[0.5], [float("nan")]]), "data (y.csv) labels")
