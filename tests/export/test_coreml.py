"""CoreML export: an ML Program package converted and validated by its spec; prediction only on macOS."""

from __future__ import annotations

import json
import platform

import pytest

pytest.importorskip("coremltools")


def test_coreml_fp16_package_is_valid(exported):
    import coremltools as ct

    from export.formats.coreml.exporter import read_metadata

    (art,) = exported("coreml")
    assert art.status == "ok", art.reason
    assert art.path.name == "student_kd.fp16.mlpackage" and art.path.is_dir() and art.size_mb > 0.3
    spec = ct.utils.load_spec(str(art.path))
    assert spec.WhichOneof("Type") == "mlProgram" and art.info["ml_program_ops"] > 50
    assert [i.name for i in spec.description.input] == ["input"]
    assert set(art.info["outputs"]) == {"logits", "classLabel"} and art.info["classifier"]
    assert spec.description.predictedFeatureName == "classLabel"
    assert json.loads(read_metadata(art.path)["kdtool.labels"])[9] == "9"
    if platform.system() != "Darwin":
        assert art.parity.status == "not verified on this OS" and "macOS" in art.parity.reason
        manifest = json.loads((art.path.parent / "manifest.json").read_text())
        assert manifest["parity"]["status"] == "not verified on this OS"


def test_group_norm_falls_back_to_fixed_batch(tmp_path):
    """coremltools' group_norm translation cannot take a symbolic batch: the package gets a fixed one."""
    import torch

    from export.formats.coreml.exporter import CoreMLExporter
    from export.registry import ExportContext

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Flatten()).eval()
    art = CoreMLExporter().export(model, torch.randn(2, 3, 8, 8), tmp_path, ExportContext(precision="fp16"))
    assert art.status == "ok" and art.info["dynamic_batch"] is False
    assert "'group_norm'" in art.info["dynamic_batch_reason"] and "Cannot add const" in art.info["dynamic_batch_reason"]
    assert art.info["ml_program_ops"] > 3
