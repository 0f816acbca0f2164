"""Structured pruning (compress/prune): DepGraph removal, importance criteria, budgets, bad input, shapes as data."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.models.build import count_params
from compress.models.shapes import apply_shapes, architecture_changes
from compress.prune.checks import check_forward, check_reload
from compress.prune.pruner import attention_heads, channel_count, layer_channels, prune_ratio, prune_to_budget

OPTS = {"criterion": "l2", "scope": "uniform", "ignore": []}


def resnet(seed: int = 0) -> nn.Module:
    """The quickstart student's family: a narrow ResNet-10-T (residual adds couple channels)."""
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", num_classes=10, in_chans=1, channels=[8, 16, 32, 64]).eval()


def fresh_like(model_fn, shapes) -> nn.Module:
    """A fresh build resized to recorded shapes: what a loader without the pruning code does."""
    return apply_shapes(model_fn(1), shapes)


def taylor_gradients(model: nn.Module) -> None:
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "taylor"])
def test_each_criterion_removes_about_the_ratio_and_round_trips(criterion):
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    unpruned = copy.deepcopy(model)
    base_params, base_channels = count_params(model), channel_count(model)
    prune_ratio(model, x, 0.5, criterion=criterion, scope="uniform", ignore=[],
                prepare=taylor_gradients if criterion == "taylor" else None)
    # half of every layer's channels: the classifier keeps its 10 outputs, convolutions keep ~half
    assert channel_count(model) == pytest.approx(10 + 0.5 * (base_channels - 10), rel=0.05)
    # params scale with in x out channels: ~(1 - 0.5)^2 of them remain (the classifier's bias aside)
    assert count_params(model) / base_params == pytest.approx(0.25, abs=0.03)
    check_forward(model, x, unpruned, "test")
    rebuilt = fresh_like(lambda s: resnet(s), architecture_changes(model, unpruned))
    rebuilt.load_state_dict(model.state_dict())
    assert check_reload(model, rebuilt, x)["max_abs"] == 0.0


def test_global_scope_prunes_layers_unevenly_to_the_same_total():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    unpruned = copy.deepcopy(model)
    prune_ratio(model, x, 0.5, criterion="l2", scope="global", ignore=[])
    check_forward(model, x, unpruned, "test")
    kept = [m.out_channels / r.out_channels for m, r in zip(model.modules(), unpruned.modules(), strict=True)
            if isinstance(m, nn.Conv2d)]
    assert max(kept) - min(kept) > 0.1  # ranked across layers, not the same share everywhere
    assert count_params(model) < 0.6 * count_params(unpruned)


class DepthwiseNet(nn.Module):
    """conv → BN → ReLU → depthwise conv → BN → ReLU → conv → pool → linear: one channel group through all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.conv1(x))))))
        return self.head(self.conv3(x).mean((2, 3)))


def test_removing_dead_channels_computes_exactly_what_the_model_did():
    """Channels whose whole group is zero contribute nothing: removing them must not change one output."""
    torch.manual_seed(0)
    model = DepthwiseNet().eval()
    for bn in (model.bn1, model.bn2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    dead = [1, 3, 4, 6]
    with torch.no_grad():
        for tensor in (model.conv1.weight, model.conv1.bias, model.bn1.weight, model.bn1.bias, model.dw.weight,
                       model.bn2.weight, model.bn2.bias):
            tensor[dead] = 0
        model.conv3.weight[:, dead] = 0
    x = torch.randn(4, 1, 12, 12)
    want = model(x)
    prune_ratio(model, x, 0.5, criterion="l1", scope="uniform", ignore=["conv3"])
    assert model.conv1.out_channels == model.dw.groups == model.bn2.num_features == model.conv3.in_channels == 4
    assert torch.allclose(model(x), want, atol=1e-6)


def test_ignore_keeps_named_layers_whole_and_a_wrong_name_is_refused():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    stem_width = model.conv1[0].out_channels
    prune_ratio(model, x, 0.5, criterion="l2", scope="uniform", ignore=["conv1.0"])
    assert model.conv1[0].out_channels == stem_width
    assert model.get_classifier().out_features == 10  # the classifier is kept by default
    with pytest.raises(KdtoolError, match=r"prune.ignore: 'layer9' matches no module"):
        prune_ratio(resnet(), x, 0.5, criterion="l2", scope="uniform", ignore=["layer9"])


def test_a_model_torch_pruning_cannot_trace_names_its_first_failing_module():
    class NoAutograd(nn.Module):
        def forward(self, x):
            if x.requires_grad:
                raise RuntimeError("this block runs without autograd only")
            return x

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), NoAutograd(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.LazyLinear(10))
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        model(x)
    with pytest.raises(KdtoolError, match=r"cannot trace the student: it fails in module '2' \(NoAutograd\)"):
        prune_ratio(model, x, 0.5, **OPTS)


def test_a_params_budget_is_met_or_refused():
    model, x = resnet(), torch.randn(1, 1, 16, 16)
    budget = 0.4 * count_params(model)
    cost = prune_to_budget(model, x, lambda m: float(count_params(m)), budget, "max_params", **OPTS)
    assert cost == count_params(model) <= budget
    assert count_params(model) > 0.2 * count_params(resnet())  # increments of 0.05: it stopped when met
    with pytest.raises(KdtoolError, match=r"prune.max_params: budget 100 cannot be reached"):
        prune_to_budget(resnet(), x, lambda m: float(count_params(m)), 100, "max_params", **OPTS)


def tiny_vit(seed: int = 0) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=32, depth=2,
                             num_heads=4).eval()


def test_vit_attention_loses_whole_heads_and_reloads_exactly():
    model, x = tiny_vit(), torch.randn(2, 1, 16, 16)
    unpruned = copy.deepcopy(model)
    prune_ratio(model, x, 0.5, **OPTS)
    heads = list(attention_heads(model).values())
    assert heads == [2, 2]
    for block in model.blocks:  # head width and softmax scale as trained: only whole heads go
        assert block.attn.head_dim == 8 and block.attn.qkv.out_features == 3 * 2 * 8
    check_forward(model, x, unpruned, "test")
    rebuilt = apply_shapes(tiny_vit(1), architecture_changes(model, unpruned))
    rebuilt.load_state_dict(model.state_dict())
    assert check_reload(model, rebuilt, x)["max_abs"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("arch,size", [("mobilevit_xxs", 64), ("mobilevitv2_050", 64)])
def test_mobilevit_families_prune_and_reload(arch, size):
    def build(seed):
        torch.manual_seed(seed)
        return timm.create_model(arch, num_classes=10).eval()

    model, x = build(0), torch.randn(2, 3, size, size)
    unpruned = copy.deepcopy(model)
    prune_ratio(model, x, 0.3, **OPTS)
    check_forward(model, x, unpruned, arch)
    assert count_params(model) < 0.7 * count_params(unpruned)
    rebuilt = apply_shapes(build(1), architecture_changes(model, unpruned))
    rebuilt.load_state_dict(model.state_dict())
    assert check_reload(model, rebuilt, x)["max_abs"] == 0.0


def test_a_wrong_reload_fails_parity():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    other = resnet(1)
    with pytest.raises(KdtoolError, match="differs from the pruned graph") as e:
        check_reload(model, other, x)
    assert e.value.exit_code == 4


def test_over_steps_no_layer_keeps_fewer_than_a_tenth_of_its_original_channels():
    model, x = resnet(), torch.randn(2, 1, 16, 16)
    original = layer_channels(model)
    for share in (0.6, 0.6, 0.9):  # 1 - 0.4 * 0.4 * 0.1: 98.4 % of the channels asked for in three steps
        prune_ratio(model, x, share, criterion="l2", scope="global", ignore=[], original=original)
    now = layer_channels(model)
    assert all(now[p] >= 0.1 * n for p, n in original.items()), {p: (now[p], n) for p, n in original.items()}
    assert channel_count(model) < 0.3 * sum(original.values())  # it still pruned, down to the floors
