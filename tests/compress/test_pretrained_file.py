"""`student.pretrained_file` / `teacher.pretrained_file`: timm weights from a local file, classifier re-initialised."""

from __future__ import annotations

import pytest
import timm
import torch
from cli_fixtures import error_lines, run_kdtool, write_recipe
from safetensors.torch import save_file

from compress.core.errors import KdtoolError
from compress.models.build import build_model
from recipes.schema import DataConfig, StudentConfig, TeacherConfig


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """An ImageNet-shaped (1000 classes, RGB) timm `test_resnet` saved as safetensors and as .pth."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)
    save_file(source.state_dict(), str(folder / "test_resnet.safetensors"))
    torch.save(source.state_dict(), folder / "test_resnet.pth")
    return source.state_dict(), folder


@pytest.mark.parametrize("name", ["test_resnet.safetensors", "test_resnet.pth"])
def test_pretrained_file_loads_the_backbone_and_a_new_head(weights, name):
    state, folder = weights
    cfg = StudentConfig(arch="test_resnet", pretrained_file=folder / name)
    built = build_model(cfg, 10, DataConfig(channels=3, image_size=32), "student")
    loaded = built.module.state_dict()
    backbone = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(loaded[k], state[k]) for k in backbone)
    assert loaded["fc.weight"].shape == (10, state["fc.weight"].shape[1])
    scratch = build_model(StudentConfig(arch="test_resnet"), 10, DataConfig(channels=3, image_size=32), "student")
    assert not torch.equal(scratch.module.state_dict()["conv1.0.weight"], loaded["conv1.0.weight"])


def test_grey_inputs_adapt_the_stem(weights):
    _, folder = weights
    cfg = StudentConfig(arch="test_resnet", pretrained_file=folder / "test_resnet.safetensors")
    built = build_model(cfg, 10, DataConfig(channels=1, image_size=32), "student")
    assert built.module.conv1[0].weight.shape[1] == 1


def test_weights_of_another_architecture_are_named(weights):
    _, folder = weights
    cfg = StudentConfig(arch="test_efficientnet", pretrained_file=folder / "test_resnet.safetensors")
    with pytest.raises(KdtoolError, match=r"student.pretrained_file .* is not test_efficientnet's timm weights"):
        build_model(cfg, 10, DataConfig(channels=3, image_size=32), "student")


def test_a_missing_file_is_named(tmp_path):
    cfg = StudentConfig(arch="test_resnet", pretrained_file=tmp_path / "gone.safetensors")
    with pytest.raises(KdtoolError, match=r"student.pretrained_file .*gone.safetensors does not exist"):
        build_model(cfg, 10, DataConfig(channels=3, image_size=32), "student")


def test_schema_refuses_both_sources_and_accepts_a_file_teacher(weights):
    _, folder = weights
    with pytest.raises(ValueError, match="set one"):
        StudentConfig(arch="test_resnet", pretrained=True, pretrained_file=folder / "test_resnet.pth")
    assert TeacherConfig(arch="test_resnet", pretrained_file=folder / "test_resnet.pth").train is None


def test_pretrained_offline_names_the_file_option(tmp_path):
    recipe = write_recipe(tmp_path, {"student": {"pretrained": True}})
    out = run_kdtool("distill", str(recipe), "--out", str(tmp_path / "runs"), cwd=tmp_path, HF_HUB_OFFLINE="1")
    lines = error_lines(out.stderr)
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "could not be downloaded" in lines[0] and "student.pretrained_file" in lines[0]
