"""Accuracy-aware static INT8 on digits: a layer made int8-sensitive on purpose is found and kept in float."""

from __future__ import annotations

import json

import pytest
import torch
from kd_fixtures import digit_loaders, train_on_labels
from torch import nn

import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
from compress.core.tasks import Task
from compress.models.build import Preprocess
from compress.quant.accuracy import int8_compute_share, quantize_with_floor, sensitivity_units
from compress.quant.configs import Int8StaticConfig, QuantInputs

TASK = Task("multiclass", 10)
PRE = Preprocess(kind="image", input_size=16, channels=1, mean=(0.5,), std=(0.5,))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10))


@pytest.fixture(scope="module")
def digits():
    return digit_loaders()


@pytest.fixture(scope="module")
def sensitive_student(digits):
    """A trained MLP whose first layer int8 rounding ruins, with the fp32 function unchanged.

    Every row of layer `1` gets a weight of 300x its largest one on input pixel 0: the digits' corner
    pixel is always 0, i.e. -1 after normalisation, so the bias absorbs it exactly in fp32. A
    per-channel int8 scale set by that outlier rounds the row's real weights to zero.
    """
    torch.manual_seed(0)
    model = train_on_labels(mlp(), digits[0], epochs=4, lr=3e-3, preprocess=PRE, task=TASK)
    corner = PRE(next(iter(digits[0]))[0])[:, 0, 0, 0]
    assert torch.all(corner == corner[0]), "the corner pixel must be constant for the sabotage to be exact"
    layer = model[1]
    with torch.no_grad():
        big = 300 * layer.weight.abs().max(dim=1).values
        layer.weight[:, 0] += big
        layer.bias -= big * corner[0]
    return model


def inputs(digits, out=None) -> QuantInputs:
    return QuantInputs(example=PRE(next(iter(digits[1]))[0][:4]), calibration=digits[0], preprocess=PRE, out=out)


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_floor_is_recovered_by_keeping_the_sensitive_layer_in_float(sensitive_student, digits, tmp_path, backend):
    config = Int8StaticConfig(backend=backend, calibration_samples=128, min_retention=0.99)
    qm, evaluation = quantize_with_floor(sensitive_student, config, inputs(digits, tmp_path), digits[1], TASK)
    report = qm.meta["accuracy_aware"]
    assert report["sensitivity"][0]["module"] == "1", report
    assert report["float_modules"] == ["1"], report
    assert evaluation["fp32_metrics"]["accuracy"] > 0.9  # the sabotage kept the fp32 function
    assert report["retention_before"] < 0.9 <= 0.99 <= report["retention_after"], report
    assert evaluation["retention"] == report["retention_after"]
    assert report["status"] == "met"
    assert 0.0 < report["int8_compute_share"] < 1.0
    saved = json.loads((tmp_path / "meta.json").read_text())
    assert saved["accuracy_aware"]["float_modules"] == ["1"]
    assert saved["config"]["float_modules"] == ["1"]
    assert qm.meta["int8"]["int8_tensors"] >= 2  # the other layers are still int8


def test_model_above_the_floor_is_left_whole(digits, tmp_path):
    """Through the stage's glue: the recipe's floor reaches the config, the report lands in meta.json."""
    from compress.quant.api import quantize
    from compress.quant.stage import _call_settings
    from recipes.schema import QuantizeConfig

    torch.manual_seed(0)
    model = train_on_labels(mlp(), digits[0], epochs=2, lr=3e-3, preprocess=PRE, task=TASK)
    recipe = QuantizeConfig(min_retention=0.9, calibration_samples=128)
    qm = quantize(model, digits[0], "static", "executorch", val_loader=digits[1], task=TASK, out_dir=tmp_path,
                  preprocess=PRE, **_call_settings(recipe, "static", "executorch"))
    assert json.loads((tmp_path / "meta.json").read_text())["accuracy_aware"]["min_retention"] == 0.9
    report = qm.meta["accuracy_aware"]
    assert report["status"] == "met" and report["float_modules"] == [] and report["sensitivity"] == []
    assert report["int8_compute_share"] == 1.0


def test_unreachable_floor_names_the_costliest_layers(sensitive_student, digits, tmp_path):
    """Layer `5` is made sensitive too (an outlier weight on a unit `3` never fires): with 3 units at
    most 1 may go float, so no set reaches the floor and both sabotaged layers are named."""
    import copy

    model = copy.deepcopy(sensitive_student)
    with torch.no_grad():
        model[3].weight[0] = 0.0
        model[3].bias[0] = -1.0  # unit 0 of layer 3 is always 0 after the ReLU
        model[5].weight[:, 0] = 300 * model[5].weight.abs().max()
    config = Int8StaticConfig(backend="onnx", calibration_samples=128, min_retention=0.99)  # ORT: the faster trials
    qm, evaluation = quantize_with_floor(model, config, inputs(digits, tmp_path), digits[1], TASK)
    report = qm.meta["accuracy_aware"]
    assert report["status"].startswith("not met: "), report
    assert {"1", "5"} <= set(report["status"].removeprefix("not met: ").split(" cost")[0].split(", ")), report
    assert report["float_modules"] == [] and report["retention_after"] == report["retention_before"]
    assert evaluation["retention"] < 0.99


def test_units_group_into_blocks_past_the_limit():
    model = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)) for _ in range(3)])
    assert sensitivity_units(model) == [f"{i}.{j}" for i in range(3) for j in range(2)]
    assert sensitivity_units(model, limit=3) == ["0", "1", "2"]


def test_int8_compute_share_counts_macs():
    model = nn.Sequential(nn.Linear(10, 30), nn.Linear(30, 10))  # 300 + 300 MACs
    assert int8_compute_share(model, torch.randn(1, 10), ("0",)) == 0.5
    assert int8_compute_share(model, torch.randn(1, 10), ()) == 1.0


def test_minmax_calibration_changes_the_activation_observer(digits, tmp_path):
    from compress.quant.pt2e import xnnpack_quantizer

    minmax = xnnpack_quantizer(True, calibration_method="minmax").global_config
    default = xnnpack_quantizer(True).global_config
    assert "MinMaxObserver" in repr(minmax.input_activation.observer_or_fake_quant_ctr)
    assert "HistogramObserver" in repr(default.input_activation.observer_or_fake_quant_ctr)


@pytest.mark.parametrize("keep", [True, False])
def test_log_mel_front_end_stays_float(monkeypatch, tmp_path, keep):
    """int8 on the power spectrum ruins a wake-word model (the log of rounded-to-zero bins); kept float, not."""
    from torch.utils.data import DataLoader, TensorDataset

    from compress.data.synthetic import generate_audio
    from compress.models.audio import LogMelFrontend, tiny_conv

    monkeypatch.setattr(LogMelFrontend, "keep_float_in_int8", keep)
    wave, y = generate_audio(Task("binary", 2), 32, sample_rate=8000, clip_samples=1000, seed=0)
    loader = DataLoader(TensorDataset(wave, y.float(), torch.arange(len(y))), batch_size=16)
    torch.manual_seed(0)
    model = tiny_conv(1, sample_rate=8000).eval()
    qi = QuantInputs(example=wave[:2], calibration=loader, out=tmp_path)
    qm, evaluation = quantize_with_floor(model, Int8StaticConfig(calibration_samples=32), qi, loader,
                                         Task("binary", 1))
    assert (list(qm.meta["config"]["float_modules"]) == ["frontend"]) is keep
    assert qm.meta["int8"]["int8_tensors"] == (2 if keep else 3)  # conv + head weights (+ the DFT kernels)
    assert (evaluation["cosine"] > 0.95) is keep, evaluation["cosine"]


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_log_mel_front_end_stays_float_in_onnx_runtime(tmp_path, mode):
    """Every node of the front end stays float in ONNX Runtime's int8, not only those reading a weight.

    Excluding only the DFT Conv and the mel MatMul (the nodes fed by the module's buffers) left the
    power sum and `+ eps` between them quantized: the int8 power spectrum then lost its quiet bins.
    """
    import onnx
    import onnxruntime as ort
    from torch.utils.data import DataLoader, TensorDataset

    from compress.data.synthetic import generate_audio
    from compress.models.audio import tiny_conv
    from compress.quant.configs import Int8DynamicConfig
    from compress.quant.quantize import quantize

    wave, y = generate_audio(Task("binary", 2), 32, sample_rate=8000, clip_samples=1000, seed=0)
    loader = DataLoader(TensorDataset(wave, y.float(), torch.arange(len(y))), batch_size=16)
    torch.manual_seed(0)
    model = tiny_conv(1, sample_rate=8000).eval()
    config = (Int8StaticConfig(backend="onnx", calibration_samples=32) if mode == "static"
              else Int8DynamicConfig(backend="onnx"))
    qm = quantize(model, config, example=wave[:2], calibration=loader, out=tmp_path)
    graph = onnx.load(str(qm.path)).graph
    made_by = {out: n for n in graph.node for out in n.output}
    front, todo = [], [next(n for n in graph.node if n.op_type == "Log")]
    while todo:  # the Log and every node it depends on: the front end, input to log-mel
        node = todo.pop()
        front.append(node.op_type)
        todo.extend(made_by[i] for i in node.input if i in made_by)
    assert not {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger",
                "MatMulInteger"} & set(front), front
    assert {"QuantizeLinear", "DynamicQuantizeLinear"} & {n.op_type for n in graph.node}  # the rest is int8
    out = ort.InferenceSession(str(qm.path), providers=["CPUExecutionProvider"]).run(
        None, {"input": wave.numpy()})[0]
    with torch.no_grad():
        ref = model(wave).numpy()
    cosine = float((out * ref).sum() / ((out ** 2).sum() ** 0.5 * (ref ** 2).sum() ** 0.5))
    assert cosine > 0.95, cosine


def test_log_mel_front_end_weights_stay_float_in_coreml(tmp_path):
    """CoreML compresses weights only; the front end's DFT and mel matrices are not among them."""
    pytest.importorskip("coremltools")
    import coremltools as ct

    from compress.data.synthetic import generate_audio
    from compress.models.audio import tiny_conv
    from compress.quant.quantize import quantize

    wave, _ = generate_audio(Task("binary", 2), 4, sample_rate=8000, clip_samples=1000, seed=0)
    torch.manual_seed(0)
    model = tiny_conv(1, sample_rate=8000).eval()
    qm = quantize(model, Int8StaticConfig(backend="coreml"), example=wave[:2], out=tmp_path)
    spec = ct.utils.load_spec(str(qm.path))
    compressed = sorted(op.outputs[0].name for f in spec.mlProgram.functions.values()
                        for block in f.block_specializations.values() for op in block.operations
                        if op.type.startswith("constexpr_"))
    assert compressed == ["p_conv_weight_quantized"], compressed  # the head (136 weights) is under the threshold
    assert any("kept in float: frontend" in n for n in qm.meta["notes"]), qm.meta["notes"]


def test_a_convolution_is_quantized_alone_in_the_sensitivity_trials():
    """`only_modules` quantizes that unit: the quantizer's filter also sees the weight's get_attr node.

    That node has no module stack; when it failed the filter, no convolution was ever quantized
    alone, every conv scored 0 and was never kept float.
    """
    from compress.quant.common import export_graph, int8_census_torch
    from compress.quant.pt2e import pt2e_calibrated

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    x = torch.randn(8, 1, 8, 8)
    graph = export_graph(model, x[:2], "static").module()
    config = Int8StaticConfig(calibration_samples=8)
    for unit in sensitivity_units(model):
        converted, _ = pt2e_calibrated(graph, config, [x], only_modules=(unit,))
        assert int8_census_torch(converted)["int8_tensors"] == 1, unit  # that unit's weight, nothing else
        assert not torch.equal(converted(x), model(x)), unit


def test_log_mel_front_end_stays_float_in_qat():
    """QAT fake-quantized the front end too: its DFT kernel's all-zero rows got a zero scale, loss NaN."""
    from torch.utils.data import DataLoader, TensorDataset

    from compress.data.synthetic import generate_audio
    from compress.models.audio import tiny_conv
    from compress.quant.configs import Int8QATConfig
    from compress.quant.qat import qat_distill

    wave, y = generate_audio(Task("binary", 2), 32, sample_rate=8000, clip_samples=1000, seed=0)
    loader = DataLoader(TensorDataset(wave, y, torch.arange(len(y))), batch_size=16)
    torch.manual_seed(0)
    model = tiny_conv(2, sample_rate=8000).eval()
    qm = qat_distill(model, None, loader, None, None, Task("binary", 2), epochs=1, lr=1e-4,
                     config=Int8QATConfig(epochs=1, lr=1e-4))
    losses = [epoch["loss_total"] for epoch in qm.meta["qat_history"]]
    assert losses and all(torch.isfinite(torch.tensor(losses))), losses
    assert "kept in float: frontend" in qm.meta["notes"]
    assert qm.meta["int8"]["int8_tensors"] == 2  # the conv and the head; not the DFT kernel


def test_floor_met_on_the_metric_but_not_on_agreement_still_searches(sensitive_student, digits, tmp_path):
    """A floor low enough for the ruined model's accuracy: its decisions still disagree with fp32's,
    which export parity would fail (int8 bound `INT8_MIN_AGREEMENT`), so layers go back to float."""
    from compress.core.tasks import INT8_MIN_AGREEMENT

    config = Int8StaticConfig(backend="executorch", calibration_samples=128, min_retention=0.05)
    qm, evaluation = quantize_with_floor(sensitive_student, config, inputs(digits, tmp_path), digits[1], TASK)
    report = qm.meta["accuracy_aware"]
    assert report["retention_before"] >= 0.05 and report["agreement_before"] < INT8_MIN_AGREEMENT, report
    assert report["float_modules"] == ["1"] and report["status"] == "met", report
    assert report["agreement_after"] >= INT8_MIN_AGREEMENT and evaluation["agreement"] == report["agreement_after"]


@pytest.fixture(scope="module")
def two_block_student(digits):
    """Two blocks, each holding one ruinous layer (an outlier weight on an input that is constant or
    always 0, exact in fp32) and one harmless one; the ruinous `1.0` and `2.0` sit between int8 layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()),
                          nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)))
    model = train_on_labels(model, digits[0], epochs=4, lr=3e-3, preprocess=PRE, task=TASK)
    corner = PRE(next(iter(digits[0]))[0])[:, 0, 0, 0]
    first, middle, ruined = model[1][0], model[1][2], model[2][0]
    with torch.no_grad():
        big = 300 * first.weight.abs().max(dim=1).values
        first.weight[:, 0] += big
        first.bias -= big * corner[0]  # exact in fp32: the corner pixel is constant
        middle.weight[0], middle.bias[0] = 0.0, -1.0  # unit 0 is always 0 after the ReLU
        ruined.weight[:, 0] = 300 * ruined.weight.abs().max()
    return model.eval()


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_blocks_too_coarse_for_the_floor_are_split_into_their_layers(two_block_student, digits, tmp_path, monkeypatch,
                                                                      backend):
    """As blocks (2 units, at most 1 float) no set reaches the floor; split into their 4 layers, the
    two ruinous ones go float and the harmless ones stay int8. On ONNX Runtime this needs the float
    layers shielded from its load-time weight quantization (next test)."""
    import compress.quant.accuracy as accuracy

    model = two_block_student
    monkeypatch.setattr(accuracy, "MAX_UNITS", 2)
    assert accuracy.sensitivity_units(model, 2) == ["1", "2"]
    assert accuracy.unit_parts(model, "1") == ["1.0", "1.2"] and accuracy.unit_parts(model, "1.0") == []
    config = Int8StaticConfig(backend=backend, calibration_samples=128, min_retention=0.99)
    qm, evaluation = quantize_with_floor(model, config, inputs(digits, tmp_path), digits[1], TASK)
    report = qm.meta["accuracy_aware"]
    assert report["retention_before"] < 0.9, report
    assert report["status"] == "met" and sorted(report["float_modules"]) == ["1.0", "2.0"], report
    assert {row["module"] for row in report["sensitivity"]} == {"1.0", "1.2", "2.0", "2.2"}
    assert evaluation["retention"] >= 0.99 and 0.0 < report["int8_compute_share"] < 1.0


def test_a_float_layer_between_int8_ones_stays_float_in_onnx_runtime(two_block_student, digits, tmp_path):
    """ONNX Runtime's `WeightBiasQuantization` (session level 1) quantizes, per tensor, the weight of a
    float Gemm that reads a DequantizeLinear and feeds a QuantizeLinear: layer `2.0` here, kept float
    by `nodes_to_exclude`. Unshielded, the file ran 2.8 off its own unoptimised graph on one digits
    batch and agreed with fp32 on 0.858 of the decisions."""
    import onnxruntime as ort

    from compress.quant.evaluate import collect_outputs
    from compress.quant.static import quantize_static

    model = two_block_student
    config = Int8StaticConfig(backend="onnx", calibration_samples=128, float_modules=("1.0", "2.0"))
    qm = quantize_static(model, config, inputs(digits, tmp_path))
    x = PRE(next(iter(digits[1]))[0]).numpy()

    def run(level) -> torch.Tensor:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(qm.path), options, providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0])

    levels = ort.GraphOptimizationLevel
    optimised, as_written = run(levels.ORT_ENABLE_ALL), run(levels.ORT_DISABLE_ALL)
    # int8 kernels vs the Q/DQ simulation differ by an output rounding step (0.12 here), not by 2.8
    assert (optimised - as_written).abs().max() < 0.02 * as_written.abs().max()
    outs, _ = collect_outputs(qm, digits[1], PRE)
    ref, _ = collect_outputs(model, digits[1], PRE)
    assert TASK.agreement(outs, ref) >= 0.99
    from export.quant_stats import onnx_quantized_share

    assert onnx_quantized_share(qm.path)["quantized_ops"] == 2  # the two int8 Gemms; the shielded one is float
