"""The KD objective (named terms and their weighted total) and the probe-built adapters.

Teacher: timm resnet18, student: timm mobilenetv3_small_050, both 1-channel 32x32, 10 classes.
Probed shapes: resnet18 layer3 (N, 256, 2, 2); mobilenet blocks.3 (N, 24, 2, 2), blocks.1 (N, 16, 4, 4).
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.distill.adapters import ConvAdapter, TokenAdapter, build_adapter, probe
from compress.distill.objective import KDObjective
from recipes.schema import DistillConfig, LossTermConfig

TASK = Task("multiclass", 10)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    student = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10, in_chans=1)
    return teacher, student


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 1, 32, 32, generator=g), torch.tensor([0, 3, 7, 9])


def _objective(models, batch, terms=(), task=TASK, **distill):
    teacher, student = models
    cfg = DistillConfig(terms=[LossTermConfig(**t) for t in terms], **distill)
    return KDObjective(task, cfg, student, teacher, batch[0], batch[0])


def _terms(objective, batch, alpha, temperature=4.0):
    x, y = batch
    s_out, s_feats = objective.student_forward(x)
    t_out, t_feats = objective.teacher_forward(x)
    return objective(s_out, s_feats, t_out, t_feats, y, alpha=alpha, temperature=temperature)


def test_adapters_built_from_a_probe_of_two_timm_models(models, batch):
    teacher, student = models
    _, t_feats = probe(teacher, ["layer3"], batch[0], "teacher")
    _, s_feats = probe(student, ["blocks.3", "blocks.1"], batch[0], "student")
    assert t_feats["layer3"].shape == (4, 256, 2, 2)
    same_size = build_adapter(s_feats["blocks.3"].shape, t_feats["layer3"].shape, student_layer="blocks.3",
                              teacher_layer="layer3")
    resized = build_adapter(s_feats["blocks.1"].shape, t_feats["layer3"].shape, student_layer="blocks.1",
                            teacher_layer="layer3", batchnorm=True)
    assert isinstance(same_size, ConvAdapter) and same_size.proj.weight.shape == (256, 24, 1, 1)
    assert isinstance(resized.proj, nn.Sequential) and isinstance(resized.proj[1], nn.BatchNorm2d)
    assert same_size(s_feats["blocks.3"]).shape == (4, 256, 2, 2)
    assert resized(s_feats["blocks.1"]).shape == (4, 256, 2, 2)  # 16→256 channels, 4x4→2x2


def test_adapter_kinds_by_shape():
    same = build_adapter((2, 8, 4, 4), (2, 8, 4, 4), student_layer="a", teacher_layer="b")
    assert isinstance(same, nn.Identity)
    tokens = build_adapter((2, 10, 16), (2, 17, 32), student_layer="a", teacher_layer="b")
    assert isinstance(tokens, TokenAdapter) and tokens(torch.randn(2, 10, 16)).shape == (2, 17, 32)
    pooled = build_adapter((2, 16), (2, 32), student_layer="a", teacher_layer="b")
    assert pooled(torch.randn(2, 16)).shape == (2, 32)
    with pytest.raises(KdtoolError, match=r"student layer 'blocks.3' \(2, 24, 2, 2\) to teacher layer 'fc'"):
        build_adapter((2, 24, 2, 2), (2, 512), student_layer="blocks.3", teacher_layer="fc")


def test_total_is_the_weighted_sum_of_named_terms(models, batch):
    terms = [{"name": "fitnet", "weight": 0.7, "student_layer": "blocks.3", "teacher_layer": "layer3"},
             {"name": "attention", "weight": 50.0, "student_layer": "blocks.1", "teacher_layer": "layer3"},
             {"name": "rkd", "weight": 0.2, "params": {"angle_weight": 1.0}},  # on the logits
             {"name": "fitnet", "weight": 0.1, "student_layer": "blocks.1", "teacher_layer": "layer2"}]
    objective = _objective(models, batch, terms, alpha=0.3)
    out = _terms(objective, batch, alpha=0.3)
    assert list(out) == ["hard", "soft", "fitnet", "attention", "rkd", "fitnet_2", "total"]
    expected = (0.3 * out["hard"] + 0.7 * out["soft"] + 0.7 * out["fitnet"] + 50.0 * out["attention"]
                + 0.2 * out["rkd"] + 0.1 * out["fitnet_2"])
    assert torch.allclose(out["total"], expected) and all(v.item() > 0 for v in out.values())
    assert objective.needs_teacher_features and objective.teacher_layers == ["layer3", "layer2"]
    assert set(objective.adapters) == {"fitnet", "fitnet_2"}  # attention and rkd need none


def test_adapters_train_with_the_student_and_only_they_are_the_objectives_state(batch):
    torch.manual_seed(0)  # fresh models: this test trains the student
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10, in_chans=1)
    student = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10, in_chans=1)
    terms = [{"name": "fitnet", "weight": 1.0, "student_layer": "blocks.1", "teacher_layer": "layer3",
              "params": {"adapter_bn": 1}}]
    objective = _objective((teacher, student), batch, terms)
    assert all(k.startswith("adapters.fitnet.") for k in objective.state_dict())
    assert sum(p.numel() for p in objective.parameters()) == 16 * 256 + 2 * 256  # conv + BN affine
    optimizer = torch.optim.AdamW([*student.parameters(), *objective.parameters()], lr=1e-3)
    student.train()
    objective.train()
    adapter_before = objective.adapters["fitnet"].proj[0].weight.detach().clone()
    first = last = None
    for _ in range(5):
        out = _terms(objective, batch, alpha=0.5)
        optimizer.zero_grad()
        out["total"].backward()
        optimizer.step()
        first, last = first or out, out
    assert last["total"].item() < 0.7 * first["total"].item() and last["fitnet"] < first["fitnet"]
    assert not torch.equal(objective.adapters["fitnet"].proj[0].weight, adapter_before)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher never learns
    assert not teacher.training


def test_without_teacher_only_the_hard_loss(models, batch):
    _, student = models
    objective = KDObjective(TASK, None, student, None)
    x, y = batch
    s_out, feats = objective.student_forward(x)
    out = objective(s_out, feats, None, None, y, alpha=0.5, temperature=4.0)
    assert list(out) == ["hard", "total"] and out["total"] is out["hard"]
    assert not objective.needs_teacher_features and len(list(objective.parameters())) == 0


def test_cached_teacher_outputs_serve_response_terms_but_not_feature_terms(models, batch):
    teacher, student = models
    x, y = batch
    cached = teacher.eval()(x).detach()
    response_only = KDObjective(TASK, DistillConfig(), student, None, x)  # a cache, no teacher loaded
    s_out, s_feats = response_only.student_forward(x)
    out = response_only(s_out, s_feats, cached, {}, y, alpha=0.5, temperature=4.0)
    assert torch.allclose(out["total"], 0.5 * out["hard"] + 0.5 * out["soft"])
    terms = [{"name": "fitnet", "student_layer": "blocks.3", "teacher_layer": "layer3"}]
    feature = _objective(models, batch, terms)
    s_out, s_feats = feature.student_forward(x)
    with pytest.raises(KdtoolError, match="cache cannot serve feature terms"):
        feature(s_out, s_feats, cached, {}, y, alpha=0.5, temperature=4.0)
    with pytest.raises(KdtoolError, match="no teacher model"):
        KDObjective(TASK, feature.distill, student, None, x)


def test_emotion_notebook_form_response_feature_attention(models, batch):
    terms = [{"name": "kl", "weight": 0.5},
             {"name": "fitnet", "weight": 0.3, "student_layer": "blocks.3", "teacher_layer": "layer3"},
             {"name": "attention", "weight": 0.2, "student_layer": "blocks.3", "teacher_layer": "layer3"}]
    objective = _objective(models, batch, terms, alpha=0.0, temperature=4.0, soft_loss="none")
    out = _terms(objective, batch, alpha=0.0)
    assert "soft" not in out
    assert torch.allclose(out["total"], 0.5 * out["kl"] + 0.3 * out["fitnet"] + 0.2 * out["attention"])


@pytest.mark.parametrize(("terms", "task", "soft", "match"), [
    ([{"name": "fitnets", "student_layer": "blocks.3", "teacher_layer": "layer3"}], TASK, None,
     "unknown KD loss 'fitnets'"),
    ([{"name": "fitnet", "student_layer": "blocks.33", "teacher_layer": "layer3"}], TASK, None,
     "student has no layer 'blocks.33'"),
    ([{"name": "fitnet", "student_layer": "blocks.3", "teacher_layer": "layer_3"}], TASK, None,
     "teacher has no layer 'layer_3'"),
    ([{"name": "fitnet", "student_layer": "blocks.3"}], TASK, None, "only one of student_layer"),
    ([{"name": "rkd", "params": {"gamma": 1}}], TASK, None, "no parameter 'gamma'"),
    ([{"name": "rkd", "params": {"adapter_bn": 1}}], TASK, None, "'rkd' uses no adapter"),
    ([{"name": "fitnet", "student_layer": "blocks.3", "teacher_layer": "global_pool"}], TASK, None,
     r"cannot map student layer 'blocks.3' \(4, 24, 2, 2\) to teacher layer 'global_pool' \(4, 512\)"),
    ([{"name": "attention", "student_layer": "blocks.3", "teacher_layer": "global_pool"}], TASK, None,
     "distill term 'attention' .*'global_pool' \\(4, 512\\)"),
    ([], Task("binary", 2), "dkd", "'dkd' is undefined for a binary task"),
    ([{"name": "dkd"}], Task("binary", 2), None, "'dkd' is undefined for a binary task"),
    ([], Task("binary", 1), "kl", "'kl' is undefined"),
])
def test_bad_configs_fail_before_training(models, batch, terms, task, soft, match):
    if task.num_outputs != 10:  # models with the task's output width
        teacher = timm.create_model("resnet18", pretrained=False, num_classes=task.num_outputs, in_chans=1)
        student = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=task.num_outputs,
                                    in_chans=1)
        models = (teacher, student)
    with pytest.raises(KdtoolError, match=match):
        _objective(models, batch, terms, task=task, soft_loss=soft)


def test_unknown_layer_error_lists_valid_names(models, batch):
    with pytest.raises(KdtoolError) as err:
        _objective(models, batch, [{"name": "fitnet", "student_layer": "block.3", "teacher_layer": "layer3"}])
    assert err.value.hint.startswith("did you mean 'blocks.3'?") and "conv_stem" in err.value.hint
