"""TensorRT: skipped with the reason where there is no tensorrt/CUDA; the ONNX it would consume is checked."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import context, tiny_convnet

from compress.errors import ExportError
from export.tensorrt import TensorRTExporter, unavailable_reason


@pytest.mark.skipif(unavailable_reason() is None, reason="TensorRT is usable here")
def test_tensorrt_is_skipped_with_reason(tmp_path, example):
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, formats=["tensorrt"], ctx=context())
    assert art.status == "skipped" and "NVIDIA GPU" in art.reason and 'kdtool[tensorrt]' in art.reason
    with pytest.raises(ExportError, match="NVIDIA GPU"):
        TensorRTExporter().export(tiny_convnet(), example, tmp_path, context())


def test_fp16_onnx_for_tensorrt_is_typed_fp16(tmp_path, example):
    pytest.importorskip("onnxruntime")
    import onnx

    from benchmark.runtimes.base import get_runtime
    from export.onnx import OnnxExporter

    model = tiny_convnet()
    art = OnnxExporter().export(model, example, tmp_path, context(precision="fp16"))
    proto = onnx.load(str(art.path))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    float_types = {i.data_type for i in proto.graph.initializer} & floats
    assert float_types == {onnx.TensorProto.FLOAT16}  # weights are fp16; only the I/O casts stay fp32
    out = get_runtime("onnxruntime").load(art.path, 1).run(example.numpy())
    ref = model(example).detach()
    assert float((torch.from_numpy(out) - ref).abs().max()) < 2e-2 * float(ref.abs().max())
