"""The CIFAR wide resnets: published parameter counts, CRD-compatible parameter names, any input size."""

import pytest
import torch

from compress.models.build import count_params, create_architecture


@pytest.mark.parametrize(("arch", "params"), [("wrn40_2", 2_255_156), ("wrn16_2", 703_284)])
def test_param_counts_match_the_crd_paper(arch, params):
    model = create_architecture(arch, 100, 3, {}, pretrained=False)
    assert count_params(model) == params  # CRD table: WRN-40-2 2.2 M, WRN-16-2 0.70 M (100 classes)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    assert model(torch.rand(1, 3, 48, 48)).shape == (1, 100)  # global pooling: not tied to 32 px


def test_state_dict_names_follow_repdistiller():
    keys = set(create_architecture("wrn16_2", 10, 3, {}, pretrained=False).state_dict())
    assert {"conv1.weight", "block1.layer.0.bn1.weight", "block2.layer.0.convShortcut.weight",
            "block3.layer.1.conv2.weight", "bn1.running_mean", "fc.weight", "fc.bias"} <= keys
    shortcuts = sorted(k for k in keys if "convShortcut" in k)
    assert shortcuts == [f"block{i}.layer.0.convShortcut.weight" for i in (1, 2, 3)]  # 16→32, 32→64, 64→128
