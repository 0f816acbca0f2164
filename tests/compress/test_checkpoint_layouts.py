"""Checkpoint layouts (issue 19.2): every common way of saving weights loads; a layout that fits none is
named with its top-level keys and the layouts tried; a shape mismatch names the first mismatched layer
and a hint that fits it (head → num_classes, elsewhere → arch)."""

from __future__ import annotations

import pytest
import timm
import torch

from compress.core.errors import KdtoolError
from compress.models.weights import load_weights, read_state_dict


def _model(**kwargs) -> torch.nn.Module:
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=10, in_chans=1, **kwargs)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s},
    "model_state_dict": lambda s: {"model_state_dict": s, "optimizer_state_dict": {}},
    "network + module. (FFc23)": lambda s: {"network": _prefixed(s, "module.")},
    "net": lambda s: {"net": s},
    "ema": lambda s: {"ema": s},
    "model_ema": lambda s: {"model_ema": _prefixed(s, "module.")},
    "state_dict_ema": lambda s: {"state_dict_ema": s, "state_dict": {k: torch.zeros_like(v) for k, v in s.items()}},
    "single nested dict": lambda s: {"epoch": 7, "weights": s, "best_acc": 0.9},
    "model. prefix (Lightning)": lambda s: {"state_dict": _prefixed(s, "model.")},
    "_orig_mod. + module. (compile over DDP)": lambda s: _prefixed(s, "_orig_mod.module."),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_common_layout_loads_the_same_weights(tmp_path, layout):
    source = _model()
    state = source.state_dict()
    path = tmp_path / "teacher.pth"
    torch.save(LAYOUTS[layout](state), path)
    target = _model()
    load_weights(target, path, "teacher")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_no_layout_fits_names_the_keys_and_the_layouts_tried(tmp_path):
    path = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "weights_a": {"x": torch.ones(1)}, "weights_b": {"y": torch.ones(1)}}, path)
    with pytest.raises(KdtoolError) as info:
        read_state_dict(path, "teacher")
    message = info.value.message
    assert "top-level keys: epoch, weights_a, weights_b" in message
    assert "network" in message and "state_dict_ema" in message and "single nested dict" in message


def test_a_stem_mismatch_names_the_stem_and_the_arch_hint(tmp_path):
    path = tmp_path / "wide.pth"
    wide = _model(channel_multiplier=2.0)  # every layer twice as wide: the first mismatch is the stem
    torch.save(wide.state_dict(), path)
    with pytest.raises(KdtoolError) as info:
        load_weights(_model(), path, "teacher")
    message, hint = info.value.message, info.value.hint
    first = next(k for k in _model().state_dict() if wide.state_dict()[k].shape != _model().state_dict()[k].shape)
    assert first == "conv_stem.weight"
    assert "the first mismatched layer is conv_stem.weight" in message
    assert "num_classes" not in hint and "teacher.arch" in hint


def test_a_head_mismatch_keeps_the_num_classes_hint(tmp_path):
    path = tmp_path / "head.pth"
    torch.save(timm.create_model("test_efficientnet", num_classes=5, in_chans=1).state_dict(), path)
    with pytest.raises(KdtoolError) as info:
        load_weights(_model(), path, "teacher")
    assert "its head has 5 outputs" in info.value.message and "num_classes" in info.value.hint
