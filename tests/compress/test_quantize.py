"""Quantization modes on a tiny digits classifier whose weights sit in Linear layers (int8 pays in size)."""

from __future__ import annotations

import json

import pytest
import torch
from kd_fixtures import digit_loaders, train_on_labels
from torch import nn

import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
from compress.core.errors import ExportError, KdtoolError
from compress.core.tasks import Task
from compress.models.build import Preprocess
from compress.quant.quantize import (
    QUANT_MODES,
    Int8DynamicConfig,
    Int8QATConfig,
    Int8StaticConfig,
    evaluate_quantized,
    load_quantized,
    make_config,
    quantize,
)

TASK = Task("multiclass", 10)
PRE = Preprocess(kind="image", input_size=16, channels=1, mean=(0.5,), std=(0.5,))


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 16 * 16, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def digits():
    return digit_loaders()


@pytest.fixture(scope="module")
def student(digits):
    """A trained fp32 student (~95% on digits in 3 epochs)."""
    torch.manual_seed(0)
    return train_on_labels(tiny_net(), digits[0], epochs=3, lr=3e-3, preprocess=PRE, task=TASK)


def example(digits):
    return PRE(next(iter(digits[1]))[0][:4])


def check_common(qm, student, digits, min_compression=3.0):
    result = evaluate_quantized(qm, student, digits[1], PRE, TASK)
    assert result["fp32_metrics"]["accuracy"] > 0.9
    assert result["agreement"] > 0.95, result
    assert result["cosine"] > 0.99, result
    assert result["retention"] > 0.97, result
    assert qm.meta["int8"]["int8_tensors"] >= 2
    assert qm.meta["compression"] >= min_compression, qm.meta
    assert not any("latency" in k or "speed" in k for k in qm.meta)
    saved = json.loads((qm.path.parent / "meta.json").read_text())
    assert saved["mode"] == qm.mode and saved["backend"] == qm.backend and saved["versions"]["torchao"]
    assert json.loads((qm.path.parent / "metrics.json").read_text())["agreement"] == result["agreement"]
    return result


def test_registry_names_the_recipe_modes():
    assert list(QUANT_MODES) == ["dynamic", "qat", "static"]
    assert make_config("static", calibration_samples=32).calibration_samples == 32
    with pytest.raises(KdtoolError, match="unknown setting 'calib'"):
        make_config("static", calib=3)
    with pytest.raises(KdtoolError, match="unknown quantization mode 'statc'.*did you mean 'static'"):
        make_config("statc")


def test_dynamic_torchao_quantizes_linear_weights(student, digits, tmp_path):
    qm = quantize(student, Int8DynamicConfig(backend="torch"), example=example(digits), out=tmp_path)
    result = check_common(qm, student, digits)
    assert qm.path.name == "model.pt2" and qm.meta["int8"]["quantized_share"] > 0.99
    assert type(qm.module[4].weight).__name__ == "Int8Tensor"
    assert result["size_mb"] < result["fp32_size_mb"] / 3


def test_static_pt2e_calibrates_and_reloads(student, digits, tmp_path):
    qm = quantize(student, Int8StaticConfig(calibration_samples=96), calibration=digits[0], preprocess=PRE,
                  out=tmp_path)
    check_common(qm, student, digits)
    assert qm.meta["calibration_samples"] == 96
    assert qm.meta["int8"]["int8_tensors"] == 3  # conv + 2 linear
    x = example(digits)
    again = load_quantized(tmp_path)
    torch.testing.assert_close(again.module(x), qm(x))


def test_dynamic_executorch_leaves_convolutions_float(student, digits, tmp_path):
    qm = quantize(student, Int8DynamicConfig(backend="executorch"), example=example(digits), out=tmp_path)
    check_common(qm, student, digits)
    assert qm.meta["int8"]["int8_tensors"] == 2 and qm.meta["int8"]["float_weight_elements"] == 8 * 9


def test_dynamic_executorch_leaves_standalone_convolutions_float(digits, tmp_path):
    """A bare 1x1 conv (no BN/ReLU after it, as in MobileViTv2's attention) is left float by dynamic int8:
    XNNPACK's dynamic conv kernels fail at run time on some of them (see `xnnpack_quantizer`)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(16, 10)).eval()
    qm = quantize(model, Int8DynamicConfig(backend="executorch"), example=example(digits), out=tmp_path)
    assert qm.meta["int8"]["int8_tensors"] == 1  # the linear layer only
    assert qm.meta["int8"]["float_weight_elements"] == 4 * 1  # the conv's weights stay float
    x = example(digits)
    assert (qm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


@pytest.mark.parametrize("config", [Int8DynamicConfig(backend="onnx"),
                                    Int8StaticConfig(backend="onnx", calibration_samples=64),
                                    Int8StaticConfig(backend="onnx", calibration_samples=64, onnx_activations="int8")],
                         ids=["dynamic", "static-u8s8", "static-s8s8"])
def test_onnx_runtime_quantization(student, digits, tmp_path, config):
    pytest.importorskip("onnxruntime")
    qm = quantize(student, config, calibration=digits[0], preprocess=PRE, out=tmp_path)
    assert qm.path.name == "model.int8.onnx" and (tmp_path / "model.fp32.onnx").is_file()
    check_common(qm, student, digits)
    assert qm(example(digits)).shape == (4, 10)
    import numpy as np
    import onnx

    from compress.core.onnxrt import ort_session

    for name in ("model.int8.onnx", "model.fp32.onnx"):  # both with short tensor ids: sizes compare alike
        proto = onnx.load(str(tmp_path / name))
        assert max(len(o) for node in proto.graph.node for o in node.output) <= 6, name
        weights = {t.name for t in proto.graph.initializer if len(t.dims) >= 2}  # parameter names kept
        assert any(w.startswith("4.weight") for w in weights), weights
    int8 = onnx.load(str(qm.path))
    assert not [t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.INT32]  # float biases
    if config.mode == "static":  # activation zero points: uint8 (U8S8, default) or int8 (S8S8, TensorRT)
        types = {t.name: t.data_type for t in int8.graph.initializer}
        zero_points = {types[n.input[2]] for n in int8.graph.node if n.op_type == "QuantizeLinear"}
        assert zero_points == {onnx.TensorProto.UINT8 if config.onnx_activations == "uint8" else onnx.TensorProto.INT8}
        assert config.onnx_activations in qm.meta["activations"]
    if getattr(config, "onnx_activations", None) == "int8":  # what TensorRT builds int8 from: symmetric Q/DQ
        from export.formats.tensorrt.exporter import int8_problem, nonzero_zero_points

        assert nonzero_zero_points(qm.path) == [] and int8_problem(qm.path) is None
        made_by = {out: node.op_type for node in int8.graph.node for out in node.output}
        for node in (n for n in int8.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")):
            assert made_by.get(node.input[0]) == made_by.get(node.input[1]) == "DequantizeLinear", node.name
    x = example(digits)
    fp32 = ort_session(tmp_path / "model.fp32.onnx").run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(fp32, student(x).detach().numpy(), atol=1e-4)


def test_qat_distills_one_epoch_and_converts(student, digits, tmp_path):
    teacher = student  # a frozen copy of itself is enough to exercise the KD path
    calls = []

    def kd_loss(s, t, y):
        calls.append(t is not None)
        return TASK.hard_loss(s, y) + torch.nn.functional.kl_div(s.log_softmax(-1), t.softmax(-1),
                                                                 reduction="batchmean")

    qm = quantize(student, Int8QATConfig(epochs=1, lr=1e-4), calibration=digits[0], preprocess=PRE,
                  teacher=teacher, teacher_preprocess=PRE, task=TASK, loss_fn=kd_loss, out=tmp_path)
    assert calls and all(calls)
    check_common(qm, student, digits)
    assert "distilled from the teacher" in qm.meta["notes"]


def test_coreml_int8_weights_make_an_mlpackage(student, digits, tmp_path):
    pytest.importorskip("coremltools")
    try:
        qm = quantize(student, Int8StaticConfig(backend="coreml"), example=example(digits), out=tmp_path)
    except ExportError as e:
        pytest.skip(f"coremltools cannot convert on this platform: {e}")
    assert (tmp_path / "model.mlpackage" / "Manifest.json").is_file()
    assert qm.meta["int8"]["compressed_weights"] >= 2 and qm.meta["compression"] >= 3
    result = evaluate_quantized(qm, student, digits[1], PRE, TASK)
    assert result["status"] == "not verified on this OS" and result["metrics"] is None


def test_coreml_has_no_dynamic_quantization(student, digits):
    with pytest.raises(KdtoolError, match="CoreML has no dynamic activation quantization") as e:
        quantize(student, Int8DynamicConfig(backend="coreml"), example=example(digits))
    assert e.value.exit_code == 2


def test_nothing_quantized_names_the_mode_that_works(digits):
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    with pytest.raises(ExportError, match="no weight was quantized") as e:
        quantize(conv_only, Int8DynamicConfig(backend="torch"), example=example(digits))
    assert e.value.exit_code == 4 and "mode static" in e.value.hint


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return x.flatten(1)
        return -x.flatten(1)


def test_unexportable_model_is_an_export_error(digits):
    with pytest.raises(ExportError, match="torch.export could not capture") as e:
        quantize(DataDependent(), Int8StaticConfig(calibration_samples=8), calibration=digits[0],
                 preprocess=PRE)
    assert e.value.exit_code == 4 and "dynamic with backend torch" in e.value.hint


@pytest.mark.parametrize("method", ["histogram", "minmax"])
def test_onnx_runtime_collects_calibration_activations_a_chunk_at_a_time(student, digits, tmp_path, monkeypatch,
                                                                         method):
    """ONNX Runtime's histogram calibrator holds every activation of every sample it is handed (512
    MobileNetV3-Large images at 224 px: over 24 GB, the process killed): kdtool hands it
    `CHUNK_SAMPLES` at a time, and every sample is still seen once."""
    pytest.importorskip("onnxruntime")
    from onnxruntime.quantization import calibrate

    import export.formats.onnx.int8 as int8

    monkeypatch.setattr(int8, "CHUNK_SAMPLES", 64)
    seen: list[int] = []
    base = calibrate.HistogramCalibrater if method == "histogram" else calibrate.MinMaxCalibrater
    real = base.collect_data

    def counting(self, reader):
        before = reader.next
        real(self, reader)
        seen.append(sum(len(b) for b in reader.batches[before:reader.end]))

    monkeypatch.setattr(base, "collect_data", counting)
    config = Int8StaticConfig(backend="onnx", calibration_samples=256, calibration_method=method)
    qm = quantize(student, config, calibration=digits[0], preprocess=PRE, out=tmp_path)  # 4 batches of 64
    assert seen == [64, 64, 64, 64], seen
    check_common(qm, student, digits)


def test_convert_skips_its_conv_bn_fold_through_torchaos_own_lookups():
    """`compress.quant.pt2e` swaps torchao's conv-BN fold (or its per-kind helpers) while `convert_pt2e`
    and `prepare_qat_pt2e` run: that only works while they find those functions in their modules'
    globals at call time."""
    from torchao.quantization.pt2e import qat_utils, quantize_pt2e

    convert_pt2e = quantize_pt2e.convert_pt2e
    assert "_fold_conv_bn_qat" in convert_pt2e.__code__.co_names
    assert convert_pt2e.__globals__ is vars(quantize_pt2e)
    fold = quantize_pt2e._fold_conv_bn_qat
    assert "_fold_conv_bn_qat_helper" in fold.__code__.co_names and fold.__globals__ is vars(qat_utils)
    fuse = quantize_pt2e._fuse_conv_bn_qat  # what prepare_qat_pt2e calls
    assert "_fuse_conv_bn_qat" in quantize_pt2e.prepare_qat_pt2e.__code__.co_names
    assert "_fuse_conv_bn_qat_helper" in fuse.__code__.co_names and fuse.__globals__ is vars(qat_utils)


def test_conv_bn_patterns_are_annotated_only_where_a_convolution_feeds_a_batch_norm(monkeypatch):
    """Post-training prepare folds every conv-BN pair before annotating, so the quantizer's conv-BN
    annotators (3 pattern traces each) are skipped there; QAT keeps its conv2d-BN pair, and the
    annotators of a convolution (not of a transposed one) run."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    from compress.quant.pt2e import CONV_BN_PATTERNS, xnnpack_quantizer

    ran: list[str] = []
    for name in CONV_BN_PATTERNS:
        monkeypatch.setitem(utils.OP_TO_ANNOTATOR, name, lambda *a, _name=name: ran.append(_name))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    x = torch.randn(2, 1, 8, 8)
    prepare_pt2e(torch.export.export(model.eval(), (x,)).module(), xnnpack_quantizer(True))
    assert ran == []
    prepare_qat_pt2e(torch.export.export(model.train(), (x,)).module(), xnnpack_quantizer(True, is_qat=True))
    assert sorted(ran) == ["conv_bn", "conv_bn_relu"]


def _structure(graph: torch.fx.GraphModule) -> list[tuple[str, str]]:
    """The graph's (op, target) sequence: what it computes, without its node names."""
    return [(n.op, str(n.target)) for n in graph.graph.nodes]


@pytest.mark.slow
@pytest.mark.parametrize("qat", [False, True])
def test_pt2e_gives_torchaos_graph_and_outputs(qat):
    """kdtool's quantizer, `prepare_qat` and `convert` against plain `XNNPACKQuantizer`, `prepare_qat_pt2e`
    and `convert_pt2e` (which trace
    every conv-BN pattern, ~15 s): the same graph and bit-identical outputs, on a model with conv-BN
    pairs (with and without a conv bias) and a batch norm on its input (left in the graph after
    post-training prepare, as a log-mel front end's is), post-training and after QAT."""
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    from compress.quant.pt2e import convert, prepare_qat, xnnpack_quantizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    x = torch.randn(4, 1, 8, 8)

    def quantized(quantizer, prepare_fn, convert_fn) -> torch.fx.GraphModule:
        graph = torch.export.export(copy.deepcopy(model).train(qat), (x,)).module()
        prepared = prepare_fn(graph, quantizer)
        prepared(x)
        if qat:
            move_exported_model_to_eval(prepared)
        else:
            assert any("batch_norm" in str(n.target) for n in prepared.graph.nodes)  # torchao's fold will run
        return convert_fn(prepared)

    ours = quantized(xnnpack_quantizer(True, is_qat=qat), prepare_qat if qat else prepare_pt2e,
                     lambda p: convert(p, qat=qat))
    theirs = quantized(XNNPACKQuantizer().set_global(get_symmetric_quantization_config(True, is_qat=qat)),
                       prepare_qat_pt2e if qat else prepare_pt2e, convert_pt2e)
    assert _structure(ours) == _structure(theirs)
    assert torch.equal(ours(x), theirs(x))
