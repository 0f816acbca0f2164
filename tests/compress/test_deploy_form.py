"""Re-parameterisable students are quantized and exported fused (timm's reparameterize_model)."""

from __future__ import annotations

import pytest
import torch

from compress.models.deploy import deploy_form, fusable_blocks


def _mobileone():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("mobileone_s0", pretrained=False, num_classes=4, in_chans=1)
    model.train()
    with torch.no_grad():  # realistic BatchNorm statistics, so the branches carry different scales
        for _ in range(3):
            model(torch.randn(4, 1, 32, 32))
    return model.eval()


def test_multi_branch_blocks_fold_into_one_conv_with_the_same_outputs():
    model = _mobileone()
    fused, count = deploy_form(model)
    assert count == fusable_blocks(model) > 10 and fused is not model
    assert fusable_blocks(fused) == 0 and deploy_form(fused) == (fused, 0)  # fused once: not again
    assert sum(p.numel() for p in fused.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want, got = model(x), fused(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_a_fused_fastvit_is_not_fused_again():
    """FastViT's RepMixer cannot re-parameterize twice (it deletes `mixer`, then reads it): the export
    sweep at 8524c11 fused the model and `export_model` fused it again ('RepMixer' object has no
    attribute 'mixer')."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("fastvit_t8", pretrained=False, num_classes=4).eval()
    fused, count = deploy_form(model)
    assert count > 0 and deploy_form(fused) == (fused, 0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want, got = model(x), fused(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))


def test_a_plain_model_is_returned_as_it_is():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    assert deploy_form(model) == (model, 0)


def test_export_ships_the_fused_graph(tmp_path):
    import onnx

    from export.run import export_model

    model = _mobileone()
    x = torch.randn(2, 1, 32, 32)
    (art,) = export_model(model, x, tmp_path, formats=["onnx"], inputs=torch.randn(8, 1, 32, 32))
    assert art.status == "ok" and art.parity.status == "passed", art.reason
    assert art.info["reparameterized_blocks"] == fusable_blocks(model)
    proto = onnx.load(str(art.path))
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert convs < sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) / 2
    assert {p.key: p.value for p in proto.metadata_props}["kdtool.reparameterized_blocks"] == str(
        fusable_blocks(model))
