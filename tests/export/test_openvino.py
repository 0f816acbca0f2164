"""OpenVINO IR (`.xml` + `.bin`): fp32 and NNCF int8 (with accuracy control) exported, compiled on
the CPU, parity-checked, metadata in rt_info; `kdtool predict` runs it; truncated files, a missing
extra and an op without a conversion rule are reported."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from cli_fixtures import cli, error_lines
from export_fixtures import context
from runtime_fixtures import TASK, decoded, export_preset, samples, trained_convnet, truncated_copy, write_png

from export.extras import missing_extra

pytestmark = pytest.mark.skipif(missing_extra("openvino", ("openvino", "nncf"), "OpenVINO") is not None,
                                reason='pip install "kdtool[openvino]"')


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The server preset narrowed to openvino (fp32 and int8, dynamic batch), exported once."""
    return export_preset("openvino", "server", tmp_path_factory.mktemp("openvino"))


def test_fp32_and_int8_pass_parity_with_a_dynamic_batch(made):
    _, artifacts = made
    assert sorted(artifacts) == ["fp32", "int8"]
    for a in artifacts.values():
        assert a.status == "ok", a.reason
        assert a.parity.status == "passed" and a.parity.batches == [1, 4]
        weights = a.path.with_suffix(".bin")
        assert a.path.suffix == ".xml" and weights.is_file() and a.files == [a.path, weights]
        assert a.size_mb == pytest.approx((a.path.stat().st_size + weights.stat().st_size) / 1e6, rel=0.01)
    assert artifacts["fp32"].parity.max_rel < 1e-4  # f32 pinned: no bf16 on AMX / AVX-512 BF16 hosts
    int8 = artifacts["int8"].info
    assert int8["quantized"]["compute_ops"] == 3 and int8["quantized"]["int8_compute_ops"] >= 1  # some may revert
    assert int8["int8"]["method"] == "nncf.quantize_with_accuracy_control"
    assert int8["int8"]["calibration_samples"] == 48 and int8["int8"]["validation_samples"] == 32
    assert int8["int8"]["metric_int8"] >= 0.99 * int8["int8"]["metric_fp32"]


def test_metadata_is_in_rt_info(made):
    from export.formats.openvino.exporter import read_metadata

    _, artifacts = made
    meta = read_metadata(artifacts["int8"].path)
    assert meta["kdtool.name"] == "student_kd" and meta["kdtool.precision"] == "int8"
    assert meta["kdtool.labels"] == '["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]'


def test_compiled_model_matches_the_model_at_any_batch(made):
    from export.formats import get_runtime

    model, artifacts = made
    session = get_runtime("openvino").load(artifacts["fp32"].path, threads=2)
    for x in (samples()["inputs"][:1], samples()["inputs"][:5]):
        np.testing.assert_allclose(session.run(x.numpy()), model(x).detach().numpy(), atol=1e-4)


def test_plain_nncf_quantize_when_the_floor_is_off(tmp_path):
    from export.run import Quantized, export_model

    s = samples()
    artifacts = export_model(trained_convnet(), s["inputs"][:2], tmp_path, formats=["openvino"], targets=["server"],
                             quantized=Quantized(calibration=s["calibration"]), inputs=s["inputs"],
                             spec=context(task_spec=TASK, parity_targets=s["labels"]))
    int8 = next(a for a in artifacts if a.precision == "int8")
    assert int8.status == "ok" and int8.info["int8"]["method"] == "nncf.quantize"
    assert int8.info["quantized"]["op_share"] == 1.0 and int8.parity.status == "passed"
    assert int8.info["quantized"]["float_layers"] in ("f32", "bf16")  # the plugin's choice on this CPU


@pytest.mark.parametrize("part", [".xml", ".bin"])
def test_predict_runs_the_ir_and_a_truncated_part_is_exit_2(made, tmp_path, part):
    model, artifacts = made
    png = write_png(tmp_path / "in", index=3)
    result = cli("predict", artifacts["fp32"].path, png, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["label"] == str(int(model(decoded(artifacts["fp32"].path, png)).argmax()))
    xml = artifacts["fp32"].path
    broken = truncated_copy(xml.parent, tmp_path / "broken", xml.with_suffix(part).name)
    result = cli("predict", broken.with_suffix(".xml"), png)  # its manifest's sha256 no longer matches
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and broken.name in lines[0] and "--no-verify" in lines[0]
    result = cli("predict", broken.with_suffix(".xml"), png, "--no-verify")  # the runtime's own refusal
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "OpenVINO cannot load" in lines[0] and broken.name in lines[0]


def test_missing_extra_is_skipped_with_the_install_hint(monkeypatch, tmp_path):
    from export.formats import get_runtime
    from export.run import Quantized, export_model

    monkeypatch.setitem(sys.modules, "nncf", None)  # int8 needs NNCF; fp32 is still made
    s = samples()
    artifacts = export_model(trained_convnet(steps=1), s["inputs"][:2], tmp_path, formats=["openvino"],
                             targets=["server"], quantized=Quantized(calibration=s["calibration"]), verify=False)
    status = {a.precision: (a.status, a.reason) for a in artifacts}
    assert status["fp32"] == ("ok", None)
    assert status["int8"][0] == "skipped" and 'pip install "kdtool[openvino]"' in status["int8"][1]
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert 'pip install "kdtool[openvino]"' in get_runtime("openvino").available()


class Cumulative(torch.nn.Module):
    """A conv net ending in `cumprod`, which OpenVINO's PyTorch frontend has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumprod(self.conv(x).mean((2, 3)), dim=1)


def test_a_model_the_converter_cannot_take_fails_that_row_only(tmp_path):
    from export.run import export_model

    artifacts = export_model(Cumulative().eval(), samples()["inputs"][:2], tmp_path,
                             formats=["openvino", "torchscript"], inputs=samples()["inputs"], spec=context())
    by_format = {a.format: a for a in artifacts}
    assert by_format["torchscript"].status == "ok"
    assert by_format["openvino"].status == "failed"
    assert by_format["openvino"].reason.startswith(
        "openvino.convert_model failed for student_kd: No conversion rule found for operations: aten.cumprod")


def test_server_preset_has_the_openvino_rows():
    from export.targets import TARGET_FORMATS, plan

    server = {(j.format, j.precision) for j in plan(["server"])}
    assert {("openvino", "fp32"), ("openvino", "int8")} <= server
    assert "openvino" in TARGET_FORMATS["server"] and "openvino" not in TARGET_FORMATS["android"]


def test_fp32_compiles_in_f32_and_int8_at_the_plugins_default():
    """An fp32 artifact (and NNCF's fp32 baseline) runs in f32, never bf16 (AMX CPUs pick bf16 by
    default); an int8 artifact runs as the plugin runs it, as a deployed server does."""
    import openvino as ov

    from export.formats.openvino.runtime import compile_cpu, cpu_config, float_precision

    model = ov.convert_model(torch.nn.Linear(4, 2).eval(), example_input=torch.randn(1, 4))
    assert float_precision(compile_cpu(model, 1)) == "f32"  # no rt_info: fp32
    assert cpu_config(1, "fp32")["INFERENCE_PRECISION_HINT"] == "f32"
    assert "INFERENCE_PRECISION_HINT" not in cpu_config(1, "int8")
    plugin_default = float_precision(ov.Core().compile_model(model, "CPU"))
    assert float_precision(compile_cpu(model, 1, "int8")) == plugin_default


def test_the_runtime_reads_the_precision_from_the_artifact(tmp_path):
    import openvino as ov

    from export.formats.openvino.runtime import PRECISION_KEY, artifact_precision, compile_cpu, float_precision

    model = ov.convert_model(torch.nn.Linear(4, 2).eval(), example_input=torch.randn(1, 4))
    assert artifact_precision(model) == "fp32"
    model.set_rt_info("int8", PRECISION_KEY)
    ov.save_model(model, str(tmp_path / "m.xml"))
    assert artifact_precision(ov.Core().read_model(str(tmp_path / "m.xml"))) == "int8"
    default = float_precision(ov.Core().compile_model(str(tmp_path / "m.xml"), "CPU"))
    assert float_precision(compile_cpu(tmp_path / "m.xml", 1)) == default


@pytest.mark.parametrize(("fp32", "int8", "sign", "flagged"), [
    (0.90, 0.885, 1.0, False), (0.90, 0.88, 1.0, True), (0.90, 0.882, 1.0, False),
    (0.50, 0.51, -1.0, False), (0.50, 0.60, -1.0, True), (0.90, float("nan"), 1.0, True),
])
def test_an_int8_metric_below_the_floor_is_flagged(fp32, int8, sign, flagged):
    from export.formats.openvino.quantizer import below_floor

    note = below_floor("accuracy", fp32, int8, 0.98, sign)
    assert (note is not None) == flagged
