"""Every registered runtime: availability with a reason, load + run of a real artifact, broken files fail."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import ExportError
from export.formats import get_runtime
from export.registry import ExportContext
from export.runtime import RUNTIMES

ALL = ["torch", "torchscript", "onnxruntime", "executorch", "coreml", "tensorrt", "aoti"]


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def _artifact(runtime: str, folder) -> object:
    """Write a real artifact for `runtime` with kdtool's exporter (or torch.export.save for 'torch')."""
    torch.manual_seed(0)
    model, example = Tiny().eval(), torch.randn(2, 1, 16, 16)
    ctx = ExportContext(name="tiny", max_batch=16)
    if runtime == "torch":
        path = folder / "tiny.pt2"
        torch.export.save(torch.export.export(model, (example,)), str(path))
        return model, path
    import export.formats  # noqa: F401
    from export.registry import EXPORTERS

    fmt = {"onnxruntime": "onnx"}.get(runtime, runtime)
    return model, EXPORTERS.get(fmt)().export(model, example, folder, ctx).path


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """`artifact(runtime)` → (model, path): each runtime's artifact exported once for the module's tests."""
    made: dict[str, tuple[nn.Module, object]] = {}

    def get(runtime: str) -> tuple[nn.Module, object]:
        if runtime not in made:
            made[runtime] = _artifact(runtime, tmp_path_factory.mktemp(runtime))
        return made[runtime]

    return get


def test_all_runtimes_register():
    get_runtime("torch")
    assert set(RUNTIMES) >= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_available_is_none_or_a_reason(name):
    runtime = get_runtime(name)
    reason = runtime.available()
    assert reason is None or (isinstance(reason, str) and len(reason) > 10)
    assert isinstance(runtime.versions(), dict)


@pytest.mark.skipif(platform.system() == "Darwin", reason="CoreML runs on macOS")
def test_coreml_says_it_needs_macos(tmp_path):
    runtime = get_runtime("coreml")
    assert runtime.available() == "CoreML prediction needs macOS"
    with pytest.raises(ExportError, match="macOS"):
        runtime.load(tmp_path / "m.mlpackage", 1)


def test_tensorrt_reason_names_gpu_and_extra():
    reason = get_runtime("tensorrt").available()
    if reason is not None:
        assert "NVIDIA GPU" in reason and "kdtool[tensorrt]" in reason


@pytest.mark.parametrize("name", ["torch", "torchscript", "onnxruntime", "executorch"])
def test_load_and_run_matches_eager(name, artifact):
    if get_runtime(name).available():
        pytest.skip(get_runtime(name).available())
    model, path = artifact(name)
    session = get_runtime(name).load(path, threads=1)
    x = torch.randn(2, 1, 16, 16)
    out = session.run(x.numpy())
    assert out.shape == (2, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, model(x).detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["torch", "torchscript", "onnxruntime", "executorch"])
def test_truncated_artifact_is_an_export_error(name, tmp_path, artifact):
    if get_runtime(name).available():
        pytest.skip(get_runtime(name).available())
    _, path = artifact(name)
    broken = tmp_path / f"broken{path.suffix}"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.raises(ExportError) as e:
        get_runtime(name).load(broken, 1)
    assert e.value.exit_code == 4 and "broken" in str(e.value)


def test_onnxruntime_reports_node_placement(artifact):
    pytest.importorskip("onnxruntime")
    from export.formats.onnx.runtime import node_placement

    _, path = artifact("onnxruntime")
    placement = node_placement(path, np.zeros((1, 1, 16, 16), np.float32))
    assert list(placement) == ["CPUExecutionProvider"] and placement["CPUExecutionProvider"].get("Conv") == 1


def test_torch_session_runs_a_module():
    from export.formats.pytorch.runtime import TorchSession

    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(3, 1, 16, 16)
    np.testing.assert_allclose(TorchSession(model).run(x.numpy()), model(x).detach().numpy(), atol=1e-6)
