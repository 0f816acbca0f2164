"""ExecuTorch export: XNNPACK fp32 and PT2E int8 in ExecuTorch's runtime; delegation and quantized share."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import context, tiny_convnet

from compress.core.errors import ExportError

pytest.importorskip("executorch")


def test_executorch_fp32_delegates_to_xnnpack_and_matches(exported):
    from export.formats.executorch.exporter import read_metadata

    (art,) = exported("executorch")
    assert art.status == "ok", art.reason
    assert art.path.suffix == ".pte" and art.info["backend"] == "XnnpackBackend"
    assert art.parity.status == "passed" and art.parity.max_abs < 1e-5 and art.parity.batches == [1, 4]
    d = art.info["delegation"]
    assert d["share"] > 0.85 and d["delegated_ops"] + sum(d["not_delegated"].values()) == d["total_ops"]
    assert read_metadata(art.path)["kdtool.labels"].startswith('["0"')


def _pt2e(model, example, calibration):
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = torch.export.export(model, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(program.module(), quantizer)
    for i in range(0, len(calibration), 4):
        prepared(calibration[i:i + 4])
    return convert_pt2e(prepared)


def test_executorch_int8_from_pt2e_model(tmp_path, example, real_inputs):
    from export.run import Quantized, export_model

    model = tiny_convnet()
    quantized = _pt2e(model, example, real_inputs)
    fp32, int8, _onnx = export_model(model, example, tmp_path, targets=["android"], formats=["executorch", "onnx"],
                                     inputs=real_inputs,
                                     quantized=Quantized(pt2e=quantized), spec=context(name="tiny"))
    assert int8.name == "tiny.executorch.int8" and int8.status == "ok", int8.reason
    q = int8.info["quantized"]
    assert q["op_share"] >= 0.5 and q["int8_weight_share"] > 0.9
    assert int8.info["delegation"]["share"] > 0.8
    assert int8.parity.status == "passed" and int8.parity.agreement >= 0.9
    assert int8.size_mb < fp32.size_mb


def test_int8_without_quantized_model_is_skipped(tmp_path, example):
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, targets=["android"], formats=["executorch"],
                          spec=context())[1:]
    assert art.status == "skipped" and "kdtool quantize" in art.reason and not art.path.exists()


def test_truncated_program_fails_to_load(exported, tmp_path):
    from export.formats import get_runtime

    (art,) = exported("executorch")
    broken = tmp_path / "broken.pte"
    broken.write_bytes(art.path.read_bytes()[:50_000])
    with pytest.raises(ExportError, match="ExecuTorch cannot load"):
        get_runtime("executorch").load(broken, 1)


def test_loading_at_the_same_thread_count_leaves_the_threadpool_of_loaded_programs_alone(exported, monkeypatch):
    import executorch.extension.pybindings.portable_lib as portable_lib

    from export.formats import get_runtime

    (art,) = exported("executorch")
    runtime = get_runtime("executorch")
    first = runtime.load(art.path, 2)
    assert portable_lib._threadpool_get_thread_count() == 2
    x = torch.randn(1, *first.method.metadata.input_tensor_meta(0).sizes()[1:]).numpy()
    before = first.run(x)
    resets = []
    real_reset = portable_lib._unsafe_reset_threadpool
    monkeypatch.setattr(portable_lib, "_unsafe_reset_threadpool", lambda n: (resets.append(n), real_reset(n)))
    second = runtime.load(art.path, 2)  # a benchmark holding several programs: the pool is not replaced
    assert resets == [] and (first.run(x) == before).all() and (second.run(x) == before).all()
    runtime.load(art.path, 1)  # another size still resizes it
    assert resets == [1] and portable_lib._threadpool_get_thread_count() == 1


def test_coreml_delegate_is_lowered_but_not_verified_here(tmp_path, example):
    pytest.importorskip("coremltools")
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, targets=["ios"], formats=["executorch"],
                          spec=context())
    assert art.name == "student_kd.executorch-coreml.fp16" and art.status == "ok", art.reason
    assert art.info["delegation"]["share"] == 1.0 and art.info["backend"] == "CoreMLBackend"
    assert art.parity.status == "not verified on this OS" and "Apple" in art.parity.reason


def test_coreml_delegate_falls_back_to_fixed_batch_for_group_norm(tmp_path):
    """The CoreML delegate cannot lower group_norm with a symbolic batch: the .pte gets a fixed one."""
    pytest.importorskip("coremltools")
    from export.formats.executorch.exporter import ExecuTorchExporter
    from export.registry import ExportContext

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Flatten()).eval()
    art = ExecuTorchExporter().export(model, torch.randn(2, 3, 8, 8), tmp_path,
                                      ExportContext(precision="fp16", variant="coreml"))
    assert art.status == "ok" and art.info["backend"] == "CoreMLBackend"
    assert "lowering failed with a dynamic batch" in art.info["dynamic_batch_reason"]
    assert art.info["max_batch"] == 2  # the example's batch


def test_dynamic_batch_runs_up_to_planned_bound(exported, student):
    """Conv+BN: XNNPACK's BN fusion used to narrow the planned batch to 15 (set_inputs error 0x10 at 16)."""
    from export.formats import get_runtime
    from export.formats.executorch.exporter import EXECUTORCH_MAX_BATCH

    (art,) = exported("executorch")
    assert art.info["dynamic_batch"] and art.info["max_batch"] == EXECUTORCH_MAX_BATCH == 32
    session = get_runtime("executorch").load(art.path, 1)
    x = torch.randn(32, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = student(x)
    for batch in (16, 32):
        out = torch.from_numpy(session.run(x[:batch].numpy()))
        assert (out - ref[:batch]).abs().max() < 1e-5


class SplitNet(torch.nn.Module):
    """A conv whose channels are split (`Tensor[]` output), as MobileViTv2's attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 6, 3, stride=4, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(x).split([2, 4], dim=1)
        return torch.cat([a.mean((2, 3)), b.amax((2, 3))], dim=1)


def test_split_output_keeps_dynamic_batch(tmp_path, example):
    """ExecuTorch's IR verifier would pin the batch of a split to the example's; the exporter avoids it."""
    from export.run import export_model

    torch.manual_seed(0)
    (art,) = export_model(SplitNet().eval(), example, tmp_path, formats=["executorch"], spec=context(labels=None))
    assert art.status == "ok", art.reason
    assert art.info["dynamic_batch"] and art.info["max_batch"] == 32 and "skipped" in art.info["ir_validity_check"]
    assert art.parity.status == "passed" and art.parity.batches == [1, 4]


def test_failing_dynamic_program_falls_back_to_fixed_batch(tmp_path, example, monkeypatch):
    import export.formats.executorch.exporter as et
    from export.run import export_model

    def fail(*_args):
        raise et._DynamicBatchFailed("dynamic-batch program failed at batch 32: error 0x10")

    monkeypatch.setattr(et, "_smoke_test", fail)
    (art,) = export_model(tiny_convnet(), example, tmp_path, formats=["executorch"], spec=context())
    assert art.status == "ok" and not art.info["dynamic_batch"] and art.info["max_batch"] == 2
    assert "0x10" in art.info["dynamic_batch_reason"]
    assert art.parity.status == "passed" and art.parity.batches == [2]


class CeilPoolNet(torch.nn.Module):
    """ResNet-D style shortcut: AvgPool2d(ceil_mode=True), which XNNPACK refuses, on even (exact) and odd sizes."""

    def __init__(self, odd: bool):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.odd = torch.nn.MaxPool2d(3, 2, ceil_mode=True) if odd else torch.nn.Identity()
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.odd(self.pool(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("odd", [False, True], ids=["exact", "rounds-up"])
def test_ceil_mode_pools_are_delegated_where_rounding_changes_nothing(tmp_path, example, odd):
    """32 px pooled by 2 is 16 rounded up or down: ceil_mode is dropped and XNNPACK takes the pool.
    16 px max-pooled by 3, stride 2, rounds up to 8 windows, not 7: it keeps ceil_mode, off XNNPACK."""
    from export.run import export_model

    torch.manual_seed(0)
    model = CeilPoolNet(odd).eval()
    (art,) = export_model(model, example, tmp_path, formats=["executorch"], spec=context(labels=None))
    assert art.status == "ok", art.reason
    assert art.parity.status == "passed" and art.parity.max_abs < 1e-5
    pools = {op for op in art.info["delegation"]["not_delegated"] if "pool" in op}
    assert art.info["floor_pools"] == 1  # the avg pool (32 -> 16), never the 16 -> 8 max pool
    assert pools == ({"aten_max_pool2d_with_indices_default"} if odd else set()), art.info["delegation"]
