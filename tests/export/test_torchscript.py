"""TorchScript: parity, metadata in extra files, broken files fail to load, trace pitfalls fail parity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.core.errors import ExportError


def test_torchscript_exports_with_metadata(exported):
    from export.formats.torchscript.exporter import read_metadata

    (art,) = exported("torchscript")
    assert art.status == "ok" and art.runtime == "torchscript", art.reason
    assert art.parity.status == "passed" and art.parity.max_abs < 1e-5 and art.parity.agreement == 1.0
    assert read_metadata(art.path)["kdtool.name"] == "student_kd"
    assert art.size_mb > 0.5


def test_truncated_torchscript_fails_to_load(exported, tmp_path):
    from export.formats import get_runtime

    (art,) = exported("torchscript")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(art.path.read_bytes()[:5000])
    with pytest.raises(ExportError, match="does not load as TorchScript"):
        get_runtime("torchscript").load(broken, 1)


class SignBranch(nn.Module):
    """Data-dependent control flow: `torch.jit.trace` freezes the branch of the example."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean((1, 2, 3)).unsqueeze(1).repeat(1, 4)
        return y * 2 if bool(x.sum() > 0) else y * 3 - 1


def test_traced_branch_fails_parity_and_is_marked_failed(tmp_path):
    from export_fixtures import context

    from export.run import export_model

    example = torch.ones(2, 1, 8, 8)  # positive: the trace keeps the `* 2` branch
    (art,) = export_model(SignBranch(), example, tmp_path, formats=["torchscript"],
                          spec=context(labels=None), inputs=-torch.ones(4, 1, 8, 8))
    assert art.status == "failed" and art.parity.status == "failed"
    assert art.parity.max_abs >= 1.0 and "max_abs" in art.reason
    assert (art.path.parent / "manifest.json").exists()
