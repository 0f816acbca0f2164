"""ExecuTorch export: XNNPACK fp32 and PT2E int8 in ExecuTorch's runtime; delegation and quantized share."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import context, tiny_convnet

from compress.errors import ExportError

pytest.importorskip("executorch")


def test_executorch_fp32_delegates_to_xnnpack_and_matches(exported):
    from export.executorch import read_metadata

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
    fp32, int8, _onnx = export_model(model, example, tmp_path, targets=["android"], inputs=real_inputs,
                                     quantized=Quantized(pt2e=quantized), ctx=context(name="tiny"))
    assert int8.name == "tiny.executorch.int8" and int8.status == "ok", int8.reason
    q = int8.info["quantized"]
    assert q["op_share"] >= 0.5 and q["int8_weight_share"] > 0.9
    assert int8.info["delegation"]["share"] > 0.8
    assert int8.parity.status == "passed" and int8.parity.agreement >= 0.9
    assert int8.size_mb < fp32.size_mb


def test_int8_without_quantized_model_is_skipped(tmp_path, example):
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, targets=["android"], formats=["executorch"],
                          ctx=context())[1:]
    assert art.status == "skipped" and "kdtool quantize" in art.reason and not art.path.exists()


def test_truncated_program_fails_to_load(exported, tmp_path):
    from benchmark.runtimes.base import get_runtime

    (art,) = exported("executorch")
    broken = tmp_path / "broken.pte"
    broken.write_bytes(art.path.read_bytes()[:50_000])
    with pytest.raises(ExportError, match="ExecuTorch cannot load"):
        get_runtime("executorch").load(broken, 1)


def test_coreml_delegate_is_lowered_but_not_verified_here(tmp_path, example):
    pytest.importorskip("coremltools")
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, targets=["ios"], formats=["executorch"],
                          ctx=context())
    assert art.name == "student_kd.executorch-coreml.fp16" and art.status == "ok", art.reason
    assert art.info["delegation"]["share"] == 1.0 and art.info["backend"] == "CoreMLBackend"
    assert art.parity.status == "not verified on this OS" and "Apple" in art.parity.reason
