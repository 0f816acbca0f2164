"""LiteRT (`.tflite`): fp32 and int8 exported, loaded in the interpreter, parity-checked, metadata
inside the file; `kdtool predict` runs it; a truncated file or a missing extra is reported."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from cli_fixtures import cli, error_lines
from export_fixtures import context
from runtime_fixtures import decoded, export_preset, samples, trained_convnet, truncated_copy, write_png

from export.extras import missing_extra

pytestmark = pytest.mark.skipif(missing_extra("litert", ("litert_torch", "ai_edge_litert"), "LiteRT") is not None,
                                reason='pip install "kdtool[litert]"')  # found without importing it


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The android preset narrowed to litert (fp32 and int8, batch 1), exported once."""
    return export_preset("litert", "android", tmp_path_factory.mktemp("litert"))


def test_fp32_and_int8_pass_parity_at_batch_1(made):
    _, artifacts = made
    assert sorted(artifacts) == ["fp32", "int8"]
    for a in artifacts.values():
        assert a.status == "ok", a.reason
        assert a.parity.status == "passed" and a.parity.agreement >= 0.9
        assert a.path.suffix == ".tflite" and a.size_mb > 0 and a.target == "android"
        assert a.info["dynamic_batch"] is False and a.info["batch"] == 1
    assert artifacts["fp32"].parity.max_rel < 1e-4
    fp32, int8 = artifacts["fp32"].info, artifacts["int8"].info
    assert fp32["quantized"]["op_share"] == 0.0 and fp32["io"] == {"input": "float32", "output": "float32"}
    assert int8["quantized"] == {"compute_ops": 3, "int8_compute_ops": 3, "op_share": 1.0}
    assert int8["io"] == {"input": "int8", "output": "int8"} and int8["calibration_samples"] == 48
    assert artifacts["int8"].size_mb < artifacts["fp32"].size_mb


def test_metadata_is_inside_the_file(made):
    from export.formats.litert.exporter import read_metadata

    _, artifacts = made
    meta = read_metadata(artifacts["int8"].path)
    assert meta["kdtool.name"] == "student_kd" and meta["kdtool.precision"] == "int8"
    assert meta["kdtool.labels"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'
    assert meta["kdtool.quantization"] == "static"


def test_interpreter_matches_the_model(made):
    from export.formats import get_runtime

    model, artifacts = made
    session = get_runtime("litert").load(artifacts["fp32"].path, threads=2)
    x = samples()["inputs"][3:4]
    np.testing.assert_allclose(session.run(x.numpy()), model(x).detach().numpy(), atol=1e-4)
    with pytest.raises(Exception, match=r"takes inputs of shape \(1, 1, 32, 32\)"):
        session.run(np.zeros((2, 1, 32, 32), np.float32))


def test_predict_runs_the_tflite_and_a_truncated_one_is_exit_2(made, tmp_path):
    model, artifacts = made
    png = write_png(tmp_path / "in", index=5)
    result = cli("predict", artifacts["fp32"].path, png, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] == str(int(model(decoded(artifacts["fp32"].path, png)).argmax()))
    broken = truncated_copy(artifacts["int8"].path.parent, tmp_path / "broken", artifacts["int8"].path.name)
    result = cli("predict", broken, png)  # its manifest's sha256 no longer matches: refused before loading
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(broken) in lines[0] and "--no-verify" in lines[0]
    result = cli("predict", broken, png, "--no-verify")  # the runtime's own refusal, one line
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and str(broken) in lines[0] and "LiteRT cannot load" in lines[0]


def test_missing_extra_is_skipped_with_the_install_hint(monkeypatch, tmp_path):
    from export.formats import get_runtime
    from export.run import export_model

    monkeypatch.setitem(sys.modules, "litert_torch", None)
    artifacts = export_model(trained_convnet(steps=1), samples()["inputs"][:2], tmp_path, formats=["litert"])
    assert [a.status for a in artifacts] == ["skipped"]
    assert 'pip install "kdtool[litert]"' in artifacts[0].reason and "litert_torch" in artifacts[0].reason
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    assert 'pip install "kdtool[litert]"' in get_runtime("litert").available()


class Cumulative(torch.nn.Module):
    """A conv net ending in `cumprod`, which litert-torch has no lowering for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.conv(x).mean((2, 3)), dim=1)


def test_a_model_the_converter_cannot_take_fails_that_row_only(tmp_path):
    from export.run import export_model

    artifacts = export_model(Cumulative().eval(), samples()["inputs"][:2], tmp_path, formats=["litert", "torchscript"],
                             inputs=samples()["inputs"], spec=context())
    by_format = {a.format: a for a in artifacts}
    assert by_format["torchscript"].status == "ok"
    assert by_format["litert"].status == "failed"
    assert "litert-torch cannot convert student_kd: Lowering not found: aten.cumprod" in by_format["litert"].reason


def test_android_preset_has_the_litert_rows_and_can_pick_them():
    from benchmark.report.card import ReportRow, recommend
    from export.artifact import Parity
    from export.targets import plan

    android = {(j.format, j.precision) for j in plan(["android"])}
    assert {("litert", "fp32"), ("litert", "int8")} <= android
    assert not any(j.format == "litert" for j in plan(["server"]))

    def row(name: str, fmt: str, p50: float) -> ReportRow:
        return ReportRow(name=name, stage="export", format=fmt, precision="int8", runtime=fmt, origin="student_kd",
                         size_mb=0.1, latency_ms={"p50": p50, "p90": p50, "p99": p50, "mean": p50, "std": 0.0,
                                                  "batch": 1, "threads": 2},
                         metrics={"accuracy": 0.97}, retention=0.99, parity=Parity(status="passed"))

    rows = [row("student_kd.executorch.int8", "executorch", 0.2), row("student_kd.litert.int8", "litert", 0.1)]
    picks, _ = recommend(rows, ["android"], 0.97, "accuracy")
    assert picks == {"android": "student_kd.litert.int8"}


def test_a_graph_the_interpreter_cannot_prepare_is_not_called_truncated(monkeypatch, tmp_path):
    """A file that parses but has a node no kernel can prepare (litert-torch 0.10 writes one for
    MobileViTv2's broadcast multiply) names the converter, not a truncated file."""
    import ai_edge_litert.interpreter as interpreter_module

    from compress.core.errors import ExportError
    from export.formats import get_runtime

    class Unpreparable:
        def __init__(self, model_path, num_threads):
            self.path = model_path

        def allocate_tensors(self):
            raise RuntimeError("tflite/kernels/broadcast_to.cc Output shape must be broadcastable from input shape."
                               "Node number 105 (BROADCAST_TO) failed to prepare.")

    monkeypatch.setattr(interpreter_module, "Interpreter", Unpreparable)
    with pytest.raises(ExportError) as caught:
        get_runtime("litert").load(tmp_path / "model.int8.tflite", 1)
    line = caught.value.line()
    assert "LiteRT cannot run model.int8.tflite" in line and "BROADCAST_TO" in line
    assert "truncated" not in line and "use executorch or onnx" in line
