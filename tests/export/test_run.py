"""Target presets, one failing format not stopping the others, atomic folders."""

from __future__ import annotations

import pytest
from export_fixtures import context, tiny_convnet

from compress.core.errors import KdtoolError
from export.targets import plan


def test_presets_and_format_override():
    android = [(j.format, j.precision) for j in plan(["android"])]
    assert android == [("executorch", "fp32"), ("executorch", "int8"), ("onnx", "fp32"), ("litert", "fp32"),
                       ("litert", "int8")]
    assert [(j.format, j.precision, j.variant) for j in plan(["ios"])] == [("coreml", "fp16", None),
                                                                             ("executorch", "fp16", "coreml")]
    assert {j.format for j in plan(["server"], int8=False)} == {"onnx", "tensorrt", "torchscript", "openvino"}
    assert [j.folder for j in plan(["android"], formats=["onnx", "torchscript"])] == [
        "android/onnx/fp32", "android/torchscript/fp32"]
    assert len(plan(["all"])) == 13 and plan(None, ["coreml"])[0].folder == "custom/coreml/fp16"


def test_unknown_names_are_errors():
    with pytest.raises(KdtoolError, match="known"):
        plan(["watch"])
    with pytest.raises(KdtoolError, match="did you mean 'onnx'"):
        plan(None, ["onx"])


def test_one_failing_format_does_not_stop_the_others(tmp_path, example, monkeypatch):
    import export.formats.torchscript.exporter
    from export.run import export_model

    def broken(self, *a, **k):
        raise RuntimeError("aten::weird_op has no lowering")

    monkeypatch.setattr(export.formats.torchscript.exporter.TorchScriptExporter, "export", broken)
    ts, onnx = export_model(tiny_convnet(), example, tmp_path, formats=["torchscript", "onnx"], spec=context())
    assert ts.status == "failed" and "weird_op" in ts.reason
    assert not (tmp_path / "custom" / "torchscript" / "fp32").exists()  # nothing half-written left behind
    assert onnx.status == "ok" and onnx.parity.status == "passed"
    assert sorted(p.name for p in onnx.path.parent.iterdir()) == ["manifest.json", "student_kd.fp32.onnx"]
