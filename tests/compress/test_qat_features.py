"""QAT trains on the distillation loss itself: feature (fitnet) and attention terms on the exported student.

Teacher: a two-conv digits classifier at width 16 (layers 0 conv, 1 relu, 2 conv, 3 relu (N, 32, 8, 8)).
Students: the same at width 8, with BatchNorm (2 relu (N, 8, 16, 16), 4 relu (N, 16, 8, 8), 8 linear
head) and without (1 relu, 3 relu, 7 head; PT2E's conv-BN QAT folding takes ~20 s per conversion on
2 cores, so the tests that convert several times use this one).
Terms: fitnet student 4 (3) → teacher 3 (1x1 conv adapter 16 → 32), attention student 2 (1) → teacher 1.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter

import pytest
import torch
from kd_fixtures import PRE, TASK, digits, tiny_net, train_on_labels

from compress.core.errors import KdtoolError
from compress.data.loader import make_loader
from compress.distill.checkpoint import load_objective_state, save_training_state
from compress.distill.objective import KDObjective
from compress.quant.common import export_graph
from compress.quant.qat import FeatureOutputs, qat_distill
from compress.quant.quantize import Int8QATConfig, evaluate_quantized, load_quantized, quantize
from recipes.schema import DistillConfig, LossTermConfig

FITNET = {"name": "fitnet", "student_layer": "4", "teacher_layer": "3"}
ATTENTION = {"name": "attention", "student_layer": "2", "teacher_layer": "1"}
NO_BN_LAYERS = {"4": "3", "2": "1"}
"""Student layer names of the BatchNorm student → the same layers in the student without BatchNorm."""


@pytest.fixture(scope="module")
def data():
    _, train, val = digits(limit=512, crop_pad=0)
    return make_loader(train, 32, True, seed=0), make_loader(val, 64, False, seed=0)


def _trained(width: int, batchnorm: bool, train_loader, seed: int) -> torch.nn.Module:
    return train_on_labels(tiny_net(seed, batchnorm=batchnorm, width=width).module, train_loader, epochs=4, lr=1e-2)


@pytest.fixture(scope="module")
def teacher(data):
    return _trained(16, False, data[0], seed=1)


@pytest.fixture(scope="module")
def models(data, teacher):
    """(student with BatchNorm, teacher), both trained on the digits subset (~90 % validation accuracy)."""
    return _trained(8, True, data[0], seed=0), teacher


@pytest.fixture(scope="module")
def models_no_bn(data, teacher):
    """(student without BatchNorm, teacher)."""
    return _trained(8, False, data[0], seed=0), teacher


def _objective(models, data, terms=((FITNET, 0.3), (ATTENTION, 0.2)), **distill) -> KDObjective:
    student, teacher = models
    if not any(isinstance(m, torch.nn.BatchNorm2d) for m in student.modules()):
        terms = tuple(({**t, "student_layer": NO_BN_LAYERS[t["student_layer"]]}, w) for t, w in terms)
    x = PRE(next(iter(data[0]))[0][:2])
    cfg = DistillConfig(temperature=4.0, **{"alpha": 0.5, **distill},
                        terms=[LossTermConfig(**term, weight=w) for term, w in terms])
    return KDObjective(TASK, cfg, student, teacher, x, x)


def _quant_ops(program) -> Counter:
    return Counter(str(n.target) for n in program.graph.nodes
                   if n.op == "call_function" and "quantize" in str(n.target))


def _int8_weights(qm) -> list[torch.Tensor]:
    return [t for t in qm.module.state_dict().values() if t.dtype == torch.int8]


def test_qat_trains_every_term_and_exports_one_output(models, data, tmp_path):
    student, _ = models
    qm = quantize(student, Int8QATConfig(epochs=2, lr=1e-4), calibration=data[0], preprocess=PRE,
                  teacher_preprocess=PRE, task=TASK, objective=_objective(models, data), out=tmp_path)
    history = qm.meta["qat_history"]
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        for key in ("loss_hard", "loss_soft", "loss_fitnet", "loss_attention", "loss_total"):
            assert math.isfinite(record[key]), (key, record)
        assert record["loss_fitnet"] > 0 and record["loss_attention"] > 0
    assert history[1]["loss_fitnet"] < history[0]["loss_fitnet"], history
    assert any("feature KD on student layers 4, 2" in n for n in qm.meta["notes"])
    assert qm.meta["int8"]["int8_tensors"] == 3 and qm.meta["int8"]["quantized_share"] == 1.0  # 2 convs + head
    reloaded = load_quantized(tmp_path)
    for program in (qm.program, reloaded.program):
        assert len(program.graph_signature.user_outputs) == 1
    x = PRE(next(iter(data[1]))[0][:4])
    assert reloaded.module(x).shape == (4, 10)
    result = evaluate_quantized(qm, student, data[1], PRE, TASK)
    assert result["fp32_metrics"]["accuracy"] > 0.85, result
    assert result["agreement"] > 0.9 and result["retention"] > 0.95, result


def test_feature_terms_send_gradients_into_the_student(models_no_bn, data):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from compress.quant.pt2e import xnnpack_quantizer

    student, _ = models_no_bn
    only_features = _objective(models_no_bn, data, alpha=0.0, soft_loss="none",
                               terms=((FITNET, 1.0), (ATTENTION, 1.0)))
    raw, y, _ = next(iter(data[0]))
    x = PRE(raw)
    layers = only_features.student_layers
    graph = export_graph(FeatureOutputs(copy.deepcopy(student), layers), x, "qat").module()
    prepared = prepare_qat_pt2e(graph, xnnpack_quantizer(True, is_qat=True))
    out, *feats = prepared(x)
    assert [f.shape[1] for f in feats] == [16, 8]
    t_out, t_feats = only_features.teacher_forward(x)
    terms = only_features(out, dict(zip(layers, feats, strict=True)), t_out, t_feats, y, alpha=0.0,
                          temperature=4.0)
    terms["total"].backward()
    grads = {name: p.grad for name, p in prepared.named_parameters()}
    assert grads["model.0.weight"].abs().sum() > 0 and grads["model.2.weight"].abs().sum() > 0
    assert not grads["model.7.weight"].any()  # the head is after every captured layer (hard loss × 0)
    assert all(p.grad.abs().sum() > 0 for p in only_features.adapters.parameters())


def test_feature_outputs_leave_no_trace_in_the_converted_model(models_no_bn, data):
    """Only the feature terms are weighted (alpha 0, no soft loss): the student moves through them alone."""
    student, _ = models_no_bn
    runs = {}
    for name, terms in (("features", ((FITNET, 1.0), (ATTENTION, 1.0))),
                        ("zero", ((FITNET, 0.0), (ATTENTION, 0.0))), ("plain", ())):
        objective = _objective(models_no_bn, data, alpha=0.0, soft_loss="none", terms=terms)
        loader = make_loader(data[0].dataset, 32, True, seed=0)  # the same batches in every run
        runs[name] = qat_distill(student, None, loader, PRE, PRE, TASK, epochs=1, lr=1e-3, objective=objective)
    history = runs["features"].meta["qat_history"][0]
    assert history["loss_fitnet"] > 0 and history["loss_attention"] > 0 and history["loss_total"] > 0
    for qm in runs.values():
        assert len(qm.program.graph_signature.user_outputs) == 1
        assert qm.meta["int8"]["int8_tensors"] == 3
    assert _quant_ops(runs["features"].program) == _quant_ops(runs["plain"].program)  # no feature q/dq left
    moved, kept, plain = (_int8_weights(runs[k]) for k in ("features", "zero", "plain"))
    assert any(not torch.equal(a, b) for a, b in zip(moved, kept, strict=True))  # gradients reached the student
    assert all(torch.equal(a, b) for a, b in zip(kept, plain, strict=True))  # the wrapper itself changes nothing
    x = PRE(next(iter(data[1]))[0][:8])
    torch.testing.assert_close(runs["zero"](x), runs["plain"](x), rtol=0, atol=0)


def test_adapters_load_from_the_distillation_state(models, data, tmp_path, caplog):
    student, _ = models
    trained = _objective(models, data)
    with torch.no_grad():
        for p in trained.adapters.parameters():
            p.add_(0.5)
    opt = torch.optim.SGD(list(student.parameters()) + list(trained.parameters()), lr=0.1)
    save_training_state(tmp_path / "last", student, trained, opt, None, {"epoch": 1})

    fresh = _objective(models, data)
    weight = "adapters.fitnet.proj.weight"
    assert not torch.equal(fresh.state_dict()[weight], trained.state_dict()[weight])
    assert load_objective_state(fresh, tmp_path / "last.safetensors")
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)

    other = _objective(models, data, terms=(({**FITNET, "student_layer": "2", "teacher_layer": "1"}, 0.3),))
    before = other.state_dict()[weight].clone()
    with caplog.at_level(logging.WARNING, logger="compress.distill.checkpoint"):
        assert not load_objective_state(other, tmp_path / "last.safetensors")
        assert not load_objective_state(other, tmp_path / "missing.safetensors")
    assert torch.equal(other.state_dict()[weight], before)
    messages = [r.getMessage() for r in caplog.records]
    assert "adapters.fitnet.proj.weight is (32, 16, 1, 1) there, (16, 8, 1, 1) here" in messages[0]
    assert "the file is missing" in messages[1] and "fresh adapters" in messages[1]


def test_objective_and_loss_fn_are_exclusive(models, data):
    student, teacher = models
    objective = _objective(models, data)
    with pytest.raises(KdtoolError, match="loss_fn or objective, not both"):
        qat_distill(student, None, data[0], PRE, PRE, TASK, loss_fn=lambda s, t, y: s.sum(), objective=objective)
    with pytest.raises(KdtoolError, match="not the objective's teacher"):
        qat_distill(student, copy.deepcopy(teacher), data[0], PRE, PRE, TASK, objective=objective)


def test_qat_holds_distill_schedules_at_their_last_kd_epoch(tmp_path):
    """QAT continues from the end of distillation: alpha/temperature at the last KD epoch, not the bases."""
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.distill.schedules import value_at
    from compress.models.build import build_model
    from compress.quant.stage import _qat_objective
    from recipes.schema import Recipe

    net = {"arch": "resnet10t", "kwargs": {"channels": [4, 8, 16, 32]}, "input_size": 16}
    r = Recipe.model_validate({
        "name": "held", "task": {"kind": "multiclass", "num_classes": 10},
        "data": {"source": "digits", "image_size": 16, "channels": 1, "limit": 64, "batch_size": 32},
        "teacher": {**net, "train": {"epochs": 1}}, "student": {**net, "train": {"epochs": 5}},
        "distill": {"temperature": 4, "alpha": 0.3, "train": {"epochs": 2},
                    "alpha_schedule": {"kind": "linear", "start": 0.9, "end": 0.5, "epochs": 4},
                    "temperature_schedule": {"kind": "step", "steps": {1: 8.0, 2: 2.0}}}})
    ctx = Context(r, RunFolder.for_recipe(tmp_path, "held"))
    student = build_model(r.student, 10, r.data, "student")
    teacher = build_model(r.teacher, 10, r.data, "teacher")
    objective = _qat_objective(ctx, student, teacher)
    assert r.distill.train.epochs == 2 and r.distill.alpha == 0.3 and r.distill.temperature == 4
    assert objective.distill.alpha == pytest.approx(value_at(r.distill.alpha_schedule, 0.3, 2)) == \
        pytest.approx(0.9 - 0.4 / 3)
    assert objective.distill.temperature == 2.0
    assert objective.distill.alpha_schedule is None and r.distill.alpha_schedule is not None  # recipe untouched
