"""Additive per-target export (issue 19.1): each artifact has its own inputs hash; exporting one target
never touches another's artifacts; `--force` remakes only what was asked for; benchmark sees them all.

The CLI tests narrow each target to one quick format (`--format onnx` / `torchscript`) on the tiny
digits recipe; `test_android_ios_android_force_keeps_other_bytes` (slow) does the same with the real
android and ios presets (ExecuTorch, CoreML). The per-artifact decisions and hashes have fast unit tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_fixtures import cli, error_lines, write_recipe

from compress.core.atomic import sha256_file
from export.targets import Job

NO_FORMATS = {"name": "additive", "export": {"targets": ["server"], "formats": None, "int8": False}}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny recipe distilled once (no export yet): (recipe, runs folder)."""
    tmp = tmp_path_factory.mktemp("additive")
    recipe = write_recipe(tmp, NO_FORMATS)
    result = cli("distill", recipe, "--out", tmp / "runs")
    assert result.exit_code == 0, result.stderr
    return recipe, tmp / "runs"


@pytest.fixture
def run(distilled, tmp_path) -> tuple[Path, Path]:
    """A private copy of the distilled run, so each test starts with no export."""
    recipe, runs = distilled
    shutil.copytree(runs, tmp_path / "runs")
    return recipe, tmp_path / "runs"


def _hashes(export: Path) -> dict[str, str]:
    """sha256 of every file under the export folder except its index (meta.json)."""
    return {str(p.relative_to(export)): sha256_file(p) for p in sorted(export.rglob("*"))
            if p.is_file() and p != export / "meta.json"}


def _export(recipe: Path, runs: Path, *args: str):
    return cli("export", recipe, "--out", runs, *args)


def test_one_target_then_another_then_force_keeps_the_other_bytes(run):
    recipe, runs = run
    export = runs / "additive" / "export"
    first = _export(recipe, runs, "--target", "android", "--format", "onnx")
    assert first.exit_code == 0, first.stderr
    android = _hashes(export)
    assert "android/onnx/fp32/student_kd.fp32.onnx" in android
    second = _export(recipe, runs, "--target", "ios", "--format", "torchscript")
    assert second.exit_code == 0, second.stderr
    both = _hashes(export)
    assert {k: v for k, v in both.items() if k.startswith("android/")} == android  # android untouched
    ios = {k: v for k, v in both.items() if k.startswith("ios/")}
    assert "ios/torchscript/fp32/student_kd.torchscript.pt" in ios
    before = (export / "android/onnx/fp32/manifest.json").stat().st_mtime_ns
    forced = _export(recipe, runs, "--target", "android", "--format", "onnx", "--force")
    assert forced.exit_code == 0, forced.stderr
    after = _hashes(export)
    assert {k: v for k, v in after.items() if k.startswith("ios/")} == ios  # --force android kept ios
    assert (export / "android/onnx/fp32/manifest.json").stat().st_mtime_ns != before  # android was remade
    index = json.loads((export / "meta.json").read_text())["artifacts"]
    assert sorted(e["job"] for e in index) == ["android/onnx/fp32", "ios/torchscript/fp32"]
    assert all(e["status"] == "ok" and len(e["inputs_hash"]) == 64 for e in index)


@pytest.mark.slow  # two exports (and a benchmark) of the tiny run: ~10 s unloaded, more on a busy CPU
def test_an_unchanged_artifact_is_reused_without_force(run):
    recipe, runs = run
    export = runs / "additive" / "export"
    assert _export(recipe, runs, "--target", "ios", "--format", "torchscript").exit_code == 0
    before = (export / "ios/torchscript/fp32/manifest.json").stat().st_mtime_ns
    again = _export(recipe, runs, "--target", "ios", "--format", "torchscript")
    assert again.exit_code == 0, again.stderr
    assert "export: reused 1 artifact(s)" in again.stdout + again.stderr
    assert (export / "ios/torchscript/fp32/manifest.json").stat().st_mtime_ns == before


@pytest.mark.slow  # two exports (and a benchmark) of the tiny run: ~10 s unloaded, more on a busy CPU
def test_a_stale_artifact_needs_force_and_only_it_is_named(run):
    recipe, runs = run
    assert _export(recipe, runs, "--target", "ios", "--format", "torchscript").exit_code == 0
    assert _export(recipe, runs, "--target", "android", "--format", "onnx").exit_code == 0
    stale = _export(recipe, runs, "--target", "ios", "--format", "torchscript", "--set", "export.opset=17")
    assert stale.exit_code == 2
    line = error_lines(stale.stderr)[0]
    assert "ios/torchscript/fp32 were made from a different recipe" in line and "android" not in line
    assert "--force" in line


def test_an_unknown_target_is_named(run):
    """Named as such, not hidden behind "made from a different recipe" when an export exists."""
    recipe, runs = run
    assert _export(recipe, runs, "--target", "ios", "--format", "torchscript").exit_code == 0
    result = _export(recipe, runs, "--target", "androi")
    assert result.exit_code == 2
    line = error_lines(result.stderr)[0]
    assert "'androi'" in line and "unknown target" in line


@pytest.mark.slow  # two exports (and a benchmark) of the tiny run: ~10 s unloaded, more on a busy CPU
def test_benchmark_sees_every_exported_target(run):
    recipe, runs = run
    assert _export(recipe, runs, "--target", "ios", "--format", "torchscript").exit_code == 0
    assert _export(recipe, runs, "--target", "android", "--format", "onnx").exit_code == 0
    bench = cli("benchmark", recipe, "--out", runs, "--set", "benchmark.min_runs=2", "--set",
                "benchmark.min_time_s=0", "--set", "benchmark.warmup=0", "--set", "benchmark.min_retention=0")
    assert bench.exit_code == 0, bench.stderr
    report = json.loads((runs / "additive" / "report" / "report.json").read_text())
    exported = {r["name"] for r in report["rows"] if r["stage"] == "export"}
    assert exported == {"student_kd.onnx.fp32", "student_kd.torchscript.fp32"}


def test_artifact_hash_is_per_job_and_only_int8_follows_its_quantized_model(tmp_path):
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from export.stage import artifact_hash
    from recipes.load import load_recipe

    r, _, _ = load_recipe(str(write_recipe(tmp_path, NO_FORMATS)), None)
    ctx = Context(r, RunFolder.for_recipe(tmp_path / "runs", r.name))
    onnx, ts = Job("android", "onnx"), Job("ios", "torchscript")
    int8 = Job("android", "executorch", "int8")
    sources = {"executorch": "a", "onnx": "b"}
    assert artifact_hash(ctx, onnx, sources) != artifact_hash(ctx, ts, sources)
    assert artifact_hash(ctx, onnx, sources) == artifact_hash(ctx, Job("server", "onnx"), sources)  # shared file
    assert artifact_hash(ctx, onnx, sources) == artifact_hash(ctx, onnx, {"executorch": "c", "onnx": "d"})
    assert artifact_hash(ctx, int8, sources) != artifact_hash(ctx, int8, {**sources, "executorch": "c"})
    before = artifact_hash(ctx, onnx, sources)
    r.export.targets = ["android", "ios"]  # the target list is not an input of any artifact
    assert artifact_hash(ctx, onnx, sources) == before
    r.export.opset = 17
    assert artifact_hash(ctx, onnx, sources) != before


@pytest.mark.slow
def test_android_ios_android_force_keeps_other_bytes(run):
    """The real presets: android (ExecuTorch fp32/int8, ONNX), ios (CoreML, ExecuTorch-CoreML), android --force."""
    recipe, runs = run
    export = runs / "additive" / "export"
    quant = cli("quantize", recipe, "--out", runs, "--mode", "static", "--set", "quantize.calibration_samples=32")
    assert quant.exit_code == 0, quant.stderr
    sets = ["--set", "export.int8=true"]
    assert _export(recipe, runs, "--target", "android", *sets).exit_code in (0, 4)
    android = {k: v for k, v in _hashes(export).items() if k.startswith("android/")}
    assert any(k.endswith(".pte") for k in android)
    assert _export(recipe, runs, "--target", "ios", *sets).exit_code in (0, 4)
    both = _hashes(export)
    assert {k: v for k, v in both.items() if k.startswith("android/")} == android
    ios = {k: v for k, v in both.items() if k.startswith("ios/")}
    assert any(".mlpackage" in k for k in ios)
    assert _export(recipe, runs, "--target", "android", "--force", *sets).exit_code in (0, 4)
    assert {k: v for k, v in _hashes(export).items() if k.startswith("ios/")} == ios


def test_sort_jobs_reuses_remakes_and_refuses_per_artifact(tmp_path):
    """The per-artifact decision, without exporting: same hash → reuse (also across targets), other hash →
    refused without force, failed → remade, force → only the asked-for jobs remade."""
    from compress.core.errors import KdtoolError
    from export.stage import _sort_jobs

    index = {"android/onnx/fp32": {"status": "ok", "inputs_hash": "h1"},
             "ios/coreml/fp16": {"status": "ok", "inputs_hash": "h2"},
             "android/executorch/int8": {"status": "failed", "inputs_hash": "h3"}}
    onnx_server, coreml = Job("server", "onnx"), Job("ios", "coreml", "fp16")
    et_int8 = Job("android", "executorch", "int8")
    reused, todo = _sort_jobs([onnx_server, coreml, et_int8],
                              {"server/onnx/fp32": "h1", "ios/coreml/fp16": "h2", "android/executorch/int8": "h3"},
                              index, tmp_path, force=False)
    assert reused == {"server/onnx/fp32": "android/onnx/fp32", "ios/coreml/fp16": "ios/coreml/fp16"}
    assert todo == [et_int8]
    with pytest.raises(KdtoolError, match="ios/coreml/fp16 were made from a different recipe"):
        _sort_jobs([coreml], {"ios/coreml/fp16": "new"}, index, tmp_path, force=False)
    reused, todo = _sort_jobs([coreml], {"ios/coreml/fp16": "new"}, index, tmp_path, force=True)
    assert reused == {} and todo == [coreml]
