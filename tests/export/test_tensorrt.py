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

    (art,) = export_model(tiny_convnet(), example, tmp_path, formats=["tensorrt"], spec=context())
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


def test_int8_refuses_asymmetric_int8_activations(tmp_path, example, real_inputs):
    """int8 activations with nonzero zero points (ORT's default) fail TensorRT's import: named before any GPU."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from export.formats.onnx.exporter import OnnxExporter
    from export.formats.tensorrt.exporter import int8_problem, nonzero_zero_points

    fp32 = OnnxExporter().export(tiny_convnet(), example, tmp_path, context(name="tiny"))
    asymmetric = tmp_path / "tiny.s8s8-asymmetric.onnx"
    reader = type("Reader", (CalibrationDataReader,), {
        "batches": iter([{"input": real_inputs[:4].numpy()}]), "get_next": lambda self: next(self.batches, None)})()
    quantize_static(str(fp32.path), str(asymmetric), reader, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    assert nonzero_zero_points(asymmetric) and "asymmetric int8 ranges" in int8_problem(asymmetric)
    ctx = context(name="tiny", precision="int8")
    ctx.quantized_onnx = asymmetric
    with pytest.raises(ExportError, match="asymmetric int8 ranges") as err:
        TensorRTExporter().export(tiny_convnet(), example, tmp_path / "out", ctx)
    assert "quantize.onnx_activations: int8" in err.value.hint


def test_network_flags_follow_the_installed_tensorrt():
    """TensorRT 10 asks for STRONGLY_TYPED; TensorRT 11 networks are always strongly typed (the flag may be gone)."""
    from types import SimpleNamespace

    from export.formats.tensorrt.exporter import network_flags

    trt10 = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=1))
    assert network_flags(trt10) == 1 << 1
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())) == 0


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_matches_torch(tmp_path, example, real_inputs, precision):
    """fp16 from the fp16 ONNX, int8 from kdtool's symmetric Q/DQ ONNX: built, loaded, parity passed."""
    pytest.importorskip("tensorrt")
    from compress.quant.configs import Int8StaticConfig
    from compress.quant.quantize import quantize
    from export.verify import verify_artifact

    model = tiny_convnet()
    ctx = context(name="tiny", precision=precision)
    if precision == "int8":
        config = Int8StaticConfig(backend="onnx", calibration_samples=8, onnx_activations="int8")
        ctx.quantized_onnx = quantize(model, config, calibration=[real_inputs], out=tmp_path / "q").path
    artifact = TensorRTExporter().export(model, example, tmp_path, ctx)
    assert artifact.path.suffix == ".engine" and artifact.info["strongly_typed"]
    parity = verify_artifact(artifact, model, example, inputs=real_inputs, task="multiclass")
    assert parity.status == "passed", parity
