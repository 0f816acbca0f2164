"""A failed artifact is never shippable by mistake (issue 19.5): its file is moved aside to `*.failed.*`
and its manifest says why; nothing under the normal name is left."""

from __future__ import annotations

import json
from pathlib import Path

from export_fixtures import context, tiny_convnet

from export.artifact import Parity
from export.run import export_model, failed_name


def test_failed_names_keep_the_extension():
    assert failed_name(Path("a/student_kd.int8.pte")).name == "student_kd.int8.failed.pte"
    assert failed_name(Path("student_kd.fp32.onnx")).name == "student_kd.fp32.failed.onnx"
    assert failed_name(Path("student_kd.fp16.mlpackage")).name == "student_kd.fp16.failed.mlpackage"
    assert failed_name(Path("student_kd.torchscript.pt")).name == "student_kd.torchscript.failed.pt"


def test_a_parity_failure_is_moved_aside_with_its_reason(tmp_path, example, monkeypatch):
    import export.run

    def too_far(*args, **kwargs):
        return Parity(status="failed", max_abs=0.139, atol=0.0446, reason="max_abs 0.139 > atol 0.0446")

    monkeypatch.setattr(export.run, "verify_artifact", too_far)
    (ts,) = export_model(tiny_convnet(), example, tmp_path, formats=["torchscript"], spec=context())
    folder = tmp_path / "custom" / "torchscript" / "fp32"
    assert ts.status == "failed" and ts.reason == "parity failed: max_abs 0.139 > atol 0.0446"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "student_kd.torchscript.failed.pt"]
    assert ts.path == folder / "student_kd.torchscript.failed.pt"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "max_abs 0.139 > atol 0.0446" in manifest["reason"]
    assert manifest["file"] == "student_kd.torchscript.failed.pt"
