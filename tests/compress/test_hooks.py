"""Forward-hook capture of intermediate layers by module name."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.distill.hooks import capture, find_layer, first_tensor, layer_names


class PairOut(nn.Module):
    """A layer returning a tuple, like attention blocks that also return weights."""

    def forward(self, x):
        return (x * 2, "meta", x)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), PairOut(), nn.Linear(3, 2))


def test_capture_records_the_named_layer_outputs_with_grad():
    model = _tiny()
    model[3] = nn.Identity()  # PairOut's tuple cannot feed a Linear; the last layer just passes it on
    x = torch.randn(5, 4)
    with capture(model, ["0", "1", "2"]) as feats:
        out = model(x)
    expected = torch.relu(model[0](x))
    torch.testing.assert_close(feats["0"], model[0](x))
    torch.testing.assert_close(feats["1"], expected)
    torch.testing.assert_close(feats["2"], expected * 2)  # first tensor of the tuple
    assert feats["1"].requires_grad and isinstance(out, tuple)


def test_capture_leaves_the_model_untouched_and_removes_its_hooks():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    before = model(x)
    with capture(model, ["layer3", "layer1.0.conv1"]) as feats:
        during = model(x)
    assert feats["layer3"].shape == (2, 256, 2, 2) and feats["layer1.0.conv1"].shape == (2, 64, 8, 8)
    torch.testing.assert_close(before, during)
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError), capture(model, ["layer3"]):
        model(torch.randn(2, 3, 32, 32))  # wrong channels: the forward fails, hooks still go
    assert all(not m._forward_hooks for m in model.modules())


def test_unknown_layer_names_are_rejected_listing_valid_names_closest_first():
    model = timm.create_model("resnet18", pretrained=False, num_classes=3, in_chans=1)
    with pytest.raises(KdtoolError, match="student has no layer 'layr3'") as err:
        capture(model, ["layr3"], role="student")
    assert err.value.hint.startswith("did you mean 'layer3'?")
    assert "layer1" in err.value.hint and "fc" in err.value.hint
    with pytest.raises(KdtoolError, match="no layer ''"):
        find_layer(model, "", "teacher")


def test_layer_names_and_first_tensor():
    model = _tiny()
    assert layer_names(model) == ["0", "1", "2", "3"]
    t = torch.ones(1)
    assert first_tensor(("a", [None, t])) is t and first_tensor({"x": t}) is t and first_tensor("no") is None


def test_a_layer_returning_no_tensor_fails_clearly():
    class Text(nn.Module):
        def forward(self, x):
            return "nothing"

    model = nn.Sequential(Text())
    with pytest.raises(KdtoolError, match="returned no tensor"), capture(model, ["0"]):
        model(torch.zeros(1))
