"""TensorRT: skipped with the reason where there is no tensorrt/CUDA; the ONNX it would consume is checked."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import context, tiny_convnet

from compress.core.errors import ExportError
from export.formats.tensorrt.exporter import TensorRTExporter, unavailable_reason


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

    from export.formats import get_runtime
    from export.formats.onnx.exporter import OnnxExporter

    model = tiny_convnet()
    art = OnnxExporter().export(model, example, tmp_path, context(precision="fp16"))
    proto = onnx.load(str(art.path))
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    float_types = {i.data_type for i in proto.graph.initializer} & floats
    assert float_types == {onnx.TensorProto.FLOAT16}  # weights are fp16; only the I/O casts stay fp32
    out = get_runtime("onnxruntime").load(art.path, 1).run(example.numpy())
    ref = model(example).detach()
    assert float((torch.from_numpy(out) - ref).abs().max()) < 2e-2 * float(ref.abs().max())


def test_int8_refuses_uint8_activations_before_looking_for_a_gpu(tmp_path, example, real_inputs):
    """TensorRT's Q/DQ import is symmetric int8: a U8S8 model is named, with the recipe key that fixes it."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from export.formats.onnx.exporter import OnnxExporter
    from export.formats.tensorrt.exporter import unsigned_activations

    fp32 = OnnxExporter().export(tiny_convnet(), example, tmp_path, context(name="tiny"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": real_inputs[:4].numpy()}])

        def get_next(self):
            return next(self.batches, None)

    made = {}
    for activations in (QuantType.QUInt8, QuantType.QInt8):
        made[activations] = tmp_path / f"tiny.{activations.name}.onnx"
        quantize_static(str(fp32.path), str(made[activations]), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=activations, weight_type=QuantType.QInt8)
    assert unsigned_activations(made[QuantType.QUInt8]) and not unsigned_activations(made[QuantType.QInt8])
    ctx = context(name="tiny", precision="int8")
    ctx.quantized_onnx = made[QuantType.QUInt8]
    with pytest.raises(ExportError, match="uint8 .asymmetric. activations") as err:
        TensorRTExporter().export(tiny_convnet(), example, tmp_path / "out", ctx)
    assert "quantize.onnx_activations: int8" in err.value.hint
