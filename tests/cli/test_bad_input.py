"""Bad input through the CLI: exit code 2, one line naming the culprit and the fix, no
traceback without --debug, and nothing written."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from cli_fixtures import cli, error_lines, files_under, merge, write_recipe

from compress.core.tasks import Task
from compress.data.synthetic import write_audiofolder, write_csv_manifest, write_imagefolder

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_bad_input(result, *needles: str, out: Path | None = None, hint: bool = True) -> str:
    """Exit 2, exactly one `kdtool: error:` line holding every needle (and a hint), no traceback, nothing
    written. Recipe errors carry their fix in the message ("should be greater than 0", "did you mean")."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "(hint: " in line or not hint, line
    assert "Traceback" not in result.stderr
    if out is not None:
        assert not out.exists(), f"bad input left {files_under(out) or 'empty folders'} in {out}"
    return line


def distill(recipe: Path, out: Path, *extra: str):
    return cli("distill", recipe, "--out", out, "--stage", "baseline", *extra)


# ---------------------------------------------------------------- the recipe

RECIPE_CASES = {
    "unknown key": ({"distill": {"temprature": 3}}, ["distill.temprature", "unknown key",
                                                      "did you mean 'distill.temperature'"]),
    "wrong type": ({"data": {"batch_size": "big"}}, ["data.batch_size", "valid integer", "'big'"]),
    "T = 0": ({"distill": {"temperature": 0}}, ["distill.temperature", "greater than 0", "got 0"]),
    "T < 0": ({"distill": {"temperature": -2}}, ["distill.temperature", "greater than 0", "got -2"]),
    "alpha > 1": ({"distill": {"alpha": 1.5}}, ["distill.alpha", "less than or equal to 1", "got 1.5"]),
    "alpha < 0": ({"distill": {"alpha": -0.1}}, ["distill.alpha", "greater than or equal to 0", "got -0.1"]),
    "bad task": ({"task": {"kind": "classification"}}, ["task.kind", "'classification'"]),
}


@pytest.mark.parametrize("case", list(RECIPE_CASES))
def test_bad_recipe(tmp_path, case):
    update, needles = RECIPE_CASES[case]
    recipe = write_recipe(tmp_path, update)
    assert_bad_input(distill(recipe, tmp_path / "runs"), str(recipe), *needles, out=tmp_path / "runs",
                     hint=False)


def test_bad_set_override_is_named(tmp_path):
    recipe = write_recipe(tmp_path)
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--set", "distill.alpha=2")
    assert_bad_input(result, "distill.alpha", "got 2", out=tmp_path / "runs", hint=False)


def test_debug_shows_the_traceback(tmp_path):
    recipe = write_recipe(tmp_path, {"distill": {"alpha": 2}})
    result = distill(recipe, tmp_path / "runs", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and len(error_lines(result.stderr)) == 1


# ---------------------------------------------------------------- the data


def test_empty_dataset_folder(tmp_path):
    (tmp_path / "images").mkdir()
    recipe = write_recipe(tmp_path, {"task": {"kind": "binary", "num_classes": 2},
                                     "data": {"source": "imagefolder", "root": str(tmp_path / "images")}})
    assert_bad_input(distill(recipe, tmp_path / "runs"), f"data.root {tmp_path / 'images'} is empty",
                     out=tmp_path / "runs")


def test_empty_class_folder(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "images" / c).mkdir(parents=True)
    write_imagefolder(tmp_path / "other", Task("binary", 2), num_samples=4, image_size=8)
    os.replace(tmp_path / "other" / "class_00" / "00000.png", tmp_path / "images" / "cat" / "a.png")
    recipe = write_recipe(tmp_path, {"task": {"kind": "binary", "num_classes": 2},
                                     "data": {"source": "imagefolder", "root": str(tmp_path / "images")}})
    assert_bad_input(distill(recipe, tmp_path / "runs"),
                     f"class folder {tmp_path / 'images' / 'dog'} is empty", out=tmp_path / "runs")


IMAGES = {"task": {"kind": "binary", "num_classes": 2},
          "data": {"source": "imagefolder", "channels": 3, "limit": None, "max_bad_fraction": 0.1},
          "student": {"train": {"epochs": 1}}}


def _corrupt(folder: Path, n: int) -> list[Path]:
    """Overwrite n images with bytes no decoder reads (a truncated PNG and random bytes)."""
    victims = sorted(folder.rglob("*.png"))[:: 7][:n]
    for i, p in enumerate(victims):
        p.write_bytes(p.read_bytes()[:40] if i % 2 == 0 else os.urandom(200))
    return victims


def test_undecodable_images_are_skipped_and_counted(tmp_path, caplog):
    root = write_imagefolder(tmp_path / "images", Task("binary", 2), num_samples=40, image_size=16)
    victims = _corrupt(root, 2)
    recipe = write_recipe(tmp_path, merge(IMAGES, {"data": {"root": str(root)}}))
    with caplog.at_level(logging.WARNING):
        result = distill(recipe, tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    assert "data: skipped 2 of 40 files that could not be read" in caplog.text
    assert all(str(v) in caplog.text for v in victims)
    assert (tmp_path / "runs" / "tiny" / "student_baseline" / "meta.json").exists()


def test_undecodable_images_above_threshold_abort(tmp_path):
    root = write_imagefolder(tmp_path / "images", Task("binary", 2), num_samples=40, image_size=16)
    victims = _corrupt(root, 6)
    recipe = write_recipe(tmp_path, merge(IMAGES, {"data": {"root": str(root)}}))
    line = assert_bad_input(distill(recipe, tmp_path / "runs"), "data: 6 of 40 files",
                            "15.0% > data.max_bad_fraction 0.1", out=tmp_path / "runs")
    assert any(f"first: {v} (" in line for v in victims), line


def test_undecodable_audio_above_threshold_abort(tmp_path):
    root = write_audiofolder(tmp_path / "audio", Task("binary", 2), num_samples=12, sample_rate=8000,
                             clip_seconds=0.25)
    wavs = sorted(root.rglob("*.wav"))
    wavs[0].write_bytes(wavs[0].read_bytes()[:200])  # truncated data chunk
    wavs[5].write_bytes(b"RIFF\x00\x00\x00\x00JUNK" + os.urandom(64))  # not a WAVE file
    recipe = write_recipe(tmp_path, {"task": {"kind": "binary", "num_classes": 2},
                                     "data": {"source": "audiofolder", "root": str(root), "sample_rate": 8000,
                                              "clip_seconds": 0.25, "limit": None, "max_bad_fraction": 0.1},
                                     "teacher": {"arch": "tiny_conv"}, "student": {"arch": "tiny_conv"}})
    line = assert_bad_input(distill(recipe, tmp_path / "runs"), "data: 2 of 12 files", "could not be read",
                            "data.max_bad_fraction", out=tmp_path / "runs")
    assert "truncated" in line or "not a RIFF/WAVE" in line


@pytest.mark.parametrize("label, needles", [
    ("nan", ["label 'nan' is NaN or infinite"]),
    ("inf", ["label 'inf' is NaN or infinite"]),
    ("7", ["label '7' is outside 0..1"]),
    ("-1", ["label '-1' is outside 0..1"]),
    ("cat", ["label 'cat' is not a number"]),
])
def test_bad_labels_in_a_manifest(tmp_path, label, needles):
    manifest = write_csv_manifest(tmp_path / "data" / "train.csv", Task("binary", 2), num_samples=8,
                                  image_size=8)
    lines = manifest.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0] + "," + label
    manifest.write_text("\n".join(lines) + "\n")
    recipe = write_recipe(tmp_path, merge(IMAGES, {"data": {"source": "csv", "root": str(manifest)}}))
    assert_bad_input(distill(recipe, tmp_path / "runs"), f"{manifest} row 4 (line 5), column label", *needles,
                     out=tmp_path / "runs")


# ---------------------------------------------------------------- the models


def _torchscript(path: Path, **kwargs) -> Path:
    import timm

    model = timm.create_model("test_resnet", in_chans=1, **kwargs).eval()
    torch.jit.trace(model, torch.rand(1, 1, 16, 16)).save(str(path))
    return path


@pytest.mark.parametrize("kind, kwargs, shape", [
    ("5 classes", {"num_classes": 5}, "(2, 5)"),
    ("feature map", {"num_classes": 0, "global_pool": ""}, "(2, 96, 1, 1)"),
])
def test_teacher_whose_outputs_do_not_fit_the_task(tmp_path, kind, kwargs, shape):
    teacher = _torchscript(tmp_path / "teacher.ts", **kwargs)
    recipe = write_recipe(tmp_path, {"teacher": {"source": "torchscript", "checkpoint": str(teacher),
                                                 "train": None}})
    assert_bad_input(cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "kd"),
                     f"teacher (test_resnet) outputs {shape} but the multiclass task needs (N, 10)",
                     "task.num_classes", out=tmp_path / "runs")


def test_input_shape_the_teacher_cannot_take(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": {"arch": "test_vit", "input_size": 24}})
    assert_bad_input(distill(recipe, tmp_path / "runs"), "teacher.arch test_vit cannot take input of shape "
                     "(2, 1, 24, 24)", "patch size", "teacher.input_size", out=tmp_path / "runs")


def test_input_shape_the_student_cannot_take(tmp_path):
    recipe = write_recipe(tmp_path, {"student": {"arch": "test_convnext", "input_size": 8}})
    out = tmp_path / "runs"
    assert_bad_input(distill(recipe, out),
                     "student.arch test_convnext cannot take input of shape (2, 1, 8, 8)",
                     "student.input_size")
    assert not (out / "tiny" / "student_baseline").exists()
    assert files_under(out / "tiny" / "teacher"), "the finished teacher stage is kept"


# ---------------------------------------------------------------- the output folder


def test_out_below_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    recipe = write_recipe(tmp_path)
    assert_bad_input(distill(recipe, tmp_path / "notes.txt" / "runs"), "--out", "notes.txt is a file")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_out_not_writable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        recipe = write_recipe(tmp_path)
        assert_bad_input(distill(recipe, locked / "runs"), f"--out {locked / 'runs'} is not writable")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_out_on_a_read_only_mount_is_refused_before_training(tmp_path, monkeypatch):
    """As root, permissions do not bite; a read-only mount does. Simulated: the probe file gets EROFS."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    recipe = write_recipe(tmp_path)
    assert_bad_input(distill(recipe, tmp_path / "ro" / "runs"),
                     f"--out {tmp_path / 'ro' / 'runs'} is not writable", "Read-only file system",
                     out=tmp_path / "ro")
