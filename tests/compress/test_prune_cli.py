"""`kdtool prune` through the CLI on a tiny recipe: the stage, bad input (exit 2, one line, nothing
written), and the pruned student as a first-class model (reload, predict, quantize, export with parity)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_fixtures import cli, error_lines, write_recipe  # noqa: E402

PRUNE = {"ratio": 0.5, "recover": "kd", "train": {"epochs": 1, "lr": 0.005, "scheduler": "constant"}}


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny recipe with a prune section, distilled (teacher untrained: it only has to run)."""
    tmp = tmp_path_factory.mktemp("prune_cli")
    recipe = write_recipe(tmp, {"student": {"train": {"epochs": 1}}, "prune": PRUNE,
                                "quantize": {"modes": ["dynamic"], "backends": {"dynamic": ["onnx"]}},
                                "export": {"formats": ["onnx"], "int8": True, "parity_samples": 8}})
    result = cli("distill", recipe, "--out", tmp / "runs")
    assert result.exit_code == 0, result.stderr[-3000:]
    return recipe, tmp / "runs"


@pytest.mark.parametrize(("setting", "message"), [
    ("prune.ratio=1.0", "prune.ratio"),
    ("prune.ratio=-0.1", "prune.ratio"),
    ("prune.ignore=[blocks.9]", "prune.ignore: 'blocks.9' matches no module of the student"),
    ("prune.max_params=10", "prune.max_params: budget 10 cannot be reached"),
])
def test_bad_prune_input_is_one_line_exit_2_and_writes_nothing(distilled, setting, message):
    recipe, runs = distilled
    result = cli("prune", recipe, "--out", runs, "--set", setting)
    assert result.exit_code == 2, result.output[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not (runs / "tiny" / "student_pruned").exists()


@pytest.fixture(scope="module")
def pruned(distilled) -> tuple[Path, Path]:
    recipe, runs = distilled
    result = cli("prune", recipe, "--out", runs)
    assert result.exit_code == 0, result.stderr[-3000:]
    return recipe, runs / "tiny"


def test_prune_stage_reaches_the_ratio_verifies_and_is_reused(pruned):
    recipe, run = pruned
    meta = json.loads((run / "student_pruned" / "meta.json").read_text())
    kd = json.loads((run / "student_kd" / "meta.json").read_text())
    assert meta["complete"] and meta["parity"]["status"] == "passed" and meta["parity"]["max_abs"] == 0.0
    p = meta["pruning"]
    assert p["ratio"] == 0.5 and p["importance"] == "l2" and p["recover"] == "kd"
    assert p["channels_removed"] == pytest.approx(0.5, abs=0.06)
    assert meta["params"] == kd["params"] - round(p["params_removed"] * kd["params"])
    assert 0.5 < p["params_removed"] < 0.85  # ~1 - 0.5² of the prunable weights
    assert (run / "student_pruned" / "step1" / "last.safetensors").exists()  # recovery trained through fit()
    again = cli("prune", recipe, "--out", run.parent)
    assert again.exit_code == 0 and "reused" in again.stderr


def test_pruned_student_loads_without_the_pruning_code_and_predicts(pruned):
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from export.predict import load_predictor
    from recipes.load import load_recipe

    recipe, run = pruned
    r, _, _ = load_recipe(str(recipe))
    built = Context(r, RunFolder(run)).load("student_pruned")
    assert sum(p.numel() for p in built.module.parameters()) == json.loads(
        (run / "student_pruned" / "meta.json").read_text())["params"]
    assert "torch_pruning" not in {type(m).__module__.split(".")[0] for m in built.module.modules()}
    predictor = load_predictor(run / "student_pruned", recipe=str(recipe))
    x = built.preprocess(torch.rand(3, 1, 16, 16))
    assert torch.equal(torch.as_tensor(predictor.session.run(x.numpy())), built.module(x).detach())


@pytest.mark.slow  # ~40 s on 2 busy cores: ONNX export, ORT quantization, parity
def test_quantize_and_export_take_the_pruned_student_with_parity(pruned):
    recipe, run = pruned
    assert cli("quantize", recipe, "--out", run.parent).exit_code == 0
    assert (run / "quantized" / "dynamic" / "onnx" / "meta.json").exists()
    result = cli("export", recipe, "--out", run.parent)
    assert result.exit_code == 0, result.stderr[-3000:]
    artifacts = json.loads((run / "export" / "meta.json").read_text())["artifacts"]
    assert {a["name"] for a in artifacts} == {"student_pruned.onnx.fp32", "student_pruned.onnx.int8"}
    assert all(a["status"] == "ok" and a["parity"]["status"] == "passed" for a in artifacts), artifacts
