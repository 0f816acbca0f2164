"""Every shipped use-case recipe runs end to end (`kdtool run`) on small generated data on disk.

Each test writes data of the recipe's shape and type with the `compress.data.synthetic` writers
(PNG image folders, a CSV manifest of PNGs, WAV folders), then runs the shipped recipe through
the CLI with `--set` overrides that only shrink it: few samples, tiny inputs, one epoch, small
architectures of the same family where the real ones are too slow on 2 CPU cores. The checks:
every stage wrote its outputs, report.json carries the recipe's metrics, and every exported
artifact passed its parity check.

Each test is a whole `kdtool run` (30-90 s on 2 cores), so the module runs in the slow suite
(`pytest -m slow`); the fast suite's end-to-end run is tests/e2e/test_pipeline.py's one shared run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from cli_fixtures import run_recipe

from compress.core.tasks import Task
from compress.data.synthetic import write_audiofolder, write_csv_manifest, write_imagefolder
from recipes.load import RECIPES_DIR
from recipes.schema import TaskConfig

pytestmark = pytest.mark.slow

SMALL = ["data.limit=48", "data.batch_size=16", "data.num_workers=0", "student.train.epochs=1",
         "distill.train.epochs=1", "quantize.calibration_samples=16", "export.parity_samples=8",
         "benchmark.min_runs=5", "benchmark.min_time_s=0.05", "benchmark.warmup=1", "benchmark.threads=1"]
"""Overrides every smoke run shares: only sizes and budgets change, never the recipe's method."""
QUICK_EXPORT = ["export.formats=[onnx]", "export.int8=false", "quantize.modes=[dynamic]"]
"""Default-run export: ONNX only (ExecuTorch/CoreML lowering takes 30-70 s per artifact on 2 cores);
the `slow` variants export the recipe's real targets."""


def _task(**cfg) -> Task:
    return Task.from_config(TaskConfig(**cfg))


def _run(recipe: str, out: Path, sets: list[str], int8_parity_may_fail: bool = False) -> tuple[dict, float]:
    """`kdtool run RECIPE --out OUT --set ...`; returns (report.json, seconds).

    `int8_parity_may_fail`: exit 4 is accepted when every failed artifact is an int8 one that was made
    and failed its parity check (a one-epoch model on 48 samples has almost no output spread)."""
    result, seconds = run_recipe(RECIPES_DIR / f"{recipe}.yaml", out, [*SMALL, *sets])
    failures = [ln for ln in result.stderr.splitlines() if ln.startswith("kdtool: error:")]
    # "N artifact(s) failed: <name>: <reason>; <name>: <reason>" (a reason may hold "; " itself)
    entries = [e for ln in failures for e in re.findall(r"([\w-]+(?:\.[\w-]+)*\.(?:fp32|fp16|int8)): (\w+ \w+)", ln)]
    parity_only = bool(entries) and all(name.endswith(".int8") and what == "parity failed" for name, what in entries)
    allowed = (0, 4) if int8_parity_may_fail and (result.exit_code == 0 or parity_only) else (0,)
    assert result.exit_code in allowed, f"{result.stdout}\n{result.stderr}\n{result.exception!r}"
    run = out / recipe
    for stage in ("teacher", "student_baseline", "student_kd", "export"):
        assert (run / stage / "meta.json").is_file(), f"stage {stage} did not finish"
    assert list((run / "quantized").glob("*/*/meta.json")), "no quantized model"
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["schema"] == "kdtool.report/1" and report["recipe"]["name"] == recipe
    return report, seconds


def _row(report: dict, name: str) -> dict:
    rows = {r["name"]: r for r in report["rows"]}
    assert name in rows, f"no row {name}: {sorted(rows)}"
    return rows[name]


def _exports(report: dict, int8_parity_may_fail: bool = False) -> list[dict]:
    """Exported artifacts: each ran and matched PyTorch (CoreML cannot run off macOS: not verified)."""
    rows = [r for r in report["rows"] if r["stage"] == "export"]
    assert rows, "no exported artifact in the report"
    for r in rows:
        if r["status"] == "skipped":  # only what this machine lacks; never a stage the recipe promised
            assert "first" not in (r["reason"] or ""), f"{r['name']}: {r['reason']}"
            continue
        if int8_parity_may_fail and r["precision"] == "int8" and r["status"] == "failed":
            assert r["reason"].startswith("parity failed") and ".failed." in r["path"], r  # made, checked, set aside
            continue
        assert r["status"] == "ok", f"{r['name']}: {r['reason']}"
        assert r["parity"]["status"] in ("passed", "not verified on this OS"), (r["name"], r["parity"])
    assert any(r["parity"]["status"] == "passed" for r in rows if r["status"] == "ok")
    return rows


FULL_OR_QUICK = [False, pytest.param(True, marks=pytest.mark.slow)]
"""`full`: the recipe's real export targets (slow); else `QUICK_EXPORT`."""
@pytest.mark.parametrize("full", FULL_OR_QUICK, ids=["onnx", "android_ios"])
def test_deepfake_binary_auc_with_a_module_prefixed_tar_checkpoint(tmp_path, full):
    """Binary AUC; the teacher comes from `{'state_dict': {'module.…': …}}` in a .tar, like FFc23.tar."""
    task = _task(kind="binary", num_classes=2, labels=["real", "fake"])
    write_imagefolder(tmp_path / "deepfake" / "train", task, num_samples=48, image_size=40, seed=1)
    write_imagefolder(tmp_path / "deepfake" / "val", task, num_samples=16, image_size=40, seed=2)
    teacher = __import__("timm").create_model("test_efficientnet", pretrained=False, num_classes=2)
    ckpt = tmp_path / "FFc23.tar"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in teacher.state_dict().items()}}, ckpt)
    report, seconds = _run("deepfake_effb4_mobilevitv2", tmp_path / "runs", [
        f"data.root={tmp_path / 'deepfake' / 'train'}", f"data.val_root={tmp_path / 'deepfake' / 'val'}",
        "data.image_size=40", "teacher.arch=test_efficientnet", f"teacher.checkpoint={ckpt}",
        "teacher.input_size=40", "student.arch=mobilevitv2_050", "student.input_size=32",
        *([] if full else QUICK_EXPORT)], int8_parity_may_fail=full)
    # a 2-epoch student on 48 images has near-flat logits: its int8 parity may fail, and says why;
    # int8 at real size on trained weights is tests/e2e/test_real_size.py
    for name in ("teacher", "student_baseline", "student_kd"):
        assert 0.0 <= _row(report, name)["metrics"]["auc"] <= 1.0
    names = {r["name"] for r in _exports(report, int8_parity_may_fail=full)}
    if full:
        assert any(".executorch." in n for n in names) and any(".coreml." in n for n in names)
    print(f"deepfake smoke: {seconds:.1f} s")


def test_emotion_regression_ccc_mae_per_output(tmp_path):
    """Regression from a CSV manifest of PNGs; feature + attention terms on real layer names."""
    task = _task(kind="regression", num_classes=2, outputs=["valence", "arousal"])
    train = write_csv_manifest(tmp_path / "emotion" / "train" / "train.csv", task, num_samples=48, seed=1)
    val = write_csv_manifest(tmp_path / "emotion" / "val" / "val.csv", task, num_samples=16, seed=2)
    report, seconds = _run("emotion_vit_mobilevit", tmp_path / "runs", [
        f"data.root={train}", f"data.val_root={val}", "data.image_size=32",
        "teacher.arch=test_vit", "teacher.checkpoint=null", "teacher.kwargs={img_size: 32}",
        "teacher.input_size=32", "teacher.train.epochs=1", "student.arch=mobilevit_xxs",
        "student.input_size=64"], int8_parity_may_fail=True)
    kd = _row(report, "student_kd")["metrics"]
    for key in ("ccc", "mae", "ccc_valence", "ccc_arousal", "mae_valence", "mae_arousal"):
        assert key in kd and kd[key] == kd[key], key  # present and not NaN
    # the overall MAE averages the per-output ones (both outputs have every sample)
    assert kd["mae"] == pytest.approx((kd["mae_valence"] + kd["mae_arousal"]) / 2, rel=1e-5)
    formats = {r["format"] for r in _exports(report, int8_parity_may_fail=True)}
    assert {"torchscript", "onnx"} <= formats
    # the recipe promises a dynamic INT8 ONNX: it is exported and parity-checked (never skipped)
    int8 = _row(report, "student_kd.onnx.int8")
    assert int8["status"] == "ok" or int8["reason"].startswith("parity failed"), int8
    print(f"emotion smoke: {seconds:.1f} s")


def _wakeword_data(tmp_path: Path) -> Path:
    task = _task(kind="binary", num_classes=2, labels=["negative", "keyword"])
    return write_audiofolder(tmp_path / "wakeword", task, num_samples=48, sample_rate=8000, clip_seconds=0.5)


AUDIO = ["data.sample_rate=8000", "data.clip_seconds=0.5", "teacher.train.epochs=1",
         "teacher.kwargs={dim: 32, depth: 1, heads: 2, conv_dim: 32}"]


@pytest.mark.parametrize("full", FULL_OR_QUICK, ids=["onnx", "android"])
def test_wakeword_mobilenetv3_audio_in_f1(tmp_path, full):
    """Raw audio in, log-mel inside the student: the Android artifacts take waveforms and match PyTorch."""
    root = _wakeword_data(tmp_path)
    report, seconds = _run("wakeword_wav2vec2_mobilenetv3", tmp_path / "runs",
                           [f"data.root={root}", *AUDIO, "student.arch=mobilenetv3_small_050",
                            *([] if full else QUICK_EXPORT)])
    assert 0.0 <= _row(report, "student_kd")["metrics"]["f1"] <= 1.0
    names = {r["name"] for r in _exports(report)}
    assert any(".executorch." in n for n in names) if full else names == {"student_kd.onnx.fp32"}
    manifests = list((tmp_path / "runs" / "wakeword_wav2vec2_mobilenetv3" / "export").rglob("manifest.json"))
    assert manifests
    for m in manifests:
        shape = json.loads(m.read_text())["inputs"][0]["shape"]
        assert list(shape)[-1] == 4000, (m, shape)  # 0.5 s at 8 kHz: audio, not a spectrogram
    print(f"wake word smoke: {seconds:.1f} s")


@pytest.mark.slow
def test_wakeword_tiny_conv(tmp_path):
    root = _wakeword_data(tmp_path)
    # int8 artifacts of a one-epoch model calibrated on 16 clips miss the int8 parity bound: fp32 only here
    report, seconds = _run("wakeword_tiny_conv", tmp_path / "runs", [f"data.root={root}", *AUDIO, "export.int8=false"])
    assert 0.0 <= _row(report, "student_kd")["metrics"]["f1"] <= 1.0
    _exports(report)
    print(f"tiny_conv smoke: {seconds:.1f} s")


@pytest.mark.slow
def test_cifar100_wrn_pair(tmp_path):
    """The CRD pair with the real WRN-40-2/WRN-16-2 (4 classes instead of 100), teacher trained here."""
    task = _task(kind="multiclass", num_classes=4)
    write_imagefolder(tmp_path / "cifar" / "train", task, num_samples=48, image_size=32, seed=1)
    write_imagefolder(tmp_path / "cifar" / "test", task, num_samples=16, image_size=32, seed=2)
    report, seconds = _run("cifar100_wrn40_2_wrn16_2", tmp_path / "runs", [
        f"data.root={tmp_path / 'cifar' / 'train'}", f"data.val_root={tmp_path / 'cifar' / 'test'}",
        "task.num_classes=4", "teacher.checkpoint=null", "teacher.train.epochs=1",
        "benchmark.batch_sizes=[1]", "export.int8=false"])
    assert 0.0 <= _row(report, "student_kd")["metrics"]["accuracy"] <= 1.0
    _exports(report)
    print(f"cifar smoke: {seconds:.1f} s")


@pytest.mark.slow
def test_imagenet_resnet_pair(tmp_path):
    """ResNet-34 → ResNet-18 (4 classes, 32 px), the teacher from a torchvision-style state dict file."""
    task = _task(kind="multiclass", num_classes=4)
    write_imagefolder(tmp_path / "imagenet" / "train", task, num_samples=48, image_size=32, seed=1)
    write_imagefolder(tmp_path / "imagenet" / "val", task, num_samples=16, image_size=32, seed=2)
    teacher = __import__("timm").create_model("resnet34", pretrained=False, num_classes=4)
    ckpt = tmp_path / "resnet34.pth"
    torch.save(teacher.state_dict(), ckpt)
    report, seconds = _run("imagenet_resnet34_resnet18", tmp_path / "runs", [
        f"data.root={tmp_path / 'imagenet' / 'train'}", f"data.val_root={tmp_path / 'imagenet' / 'val'}",
        "task.num_classes=4", "data.image_size=32", f"teacher.checkpoint={ckpt}", "benchmark.batch_sizes=[1]",
        "student.train.amp='off'", "distill.train.amp='off'"])  # quoted: YAML reads a bare off as false
    assert 0.0 <= _row(report, "student_kd")["metrics"]["accuracy"] <= 1.0
    _exports(report)
    print(f"imagenet smoke: {seconds:.1f} s")
