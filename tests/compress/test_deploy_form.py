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
    assert fusable_blocks(fused) == count  # fused blocks keep their method; calling it again changes nothing
    assert sum(p.numel() for p in fused.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want, got = model(x), fused(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


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


def _with_group_norms() -> torch.nn.Module:
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(1, 8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.GroupNorm(1, 8),
                          nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            nn.init.normal_(m.weight)
            nn.init.normal_(m.bias)
    return model


def test_one_group_norms_become_ops_xnnpack_delegates():
    """GroupNorm(1, C) as reshape/mean/rsqrt: same outputs and parameter names, one XNNPACK partition."""
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from compress.models.deploy import XnnpackGroupNorm1, xnnpack_form

    model = _with_group_norms()
    swapped, count = xnnpack_form(model)
    assert count == 2 and isinstance(model[1], torch.nn.GroupNorm)  # the original is untouched
    assert isinstance(swapped[1], XnnpackGroupNorm1) and isinstance(swapped[5], torch.nn.GroupNorm)  # 2 groups stay
    assert list(swapped.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), model(x), atol=1e-5, rtol=1e-5)

    def outside_delegates(m: torch.nn.Module) -> list[str]:
        edge = to_edge_transform_and_lower(torch.export.export(m, (x[:1],)), partitioner=[XnnpackPartitioner()])
        return [str(n.target).split(">")[0] for n in edge.exported_program().graph_module.graph.nodes
                if n.op == "call_function" and "getitem" not in str(n.target)]

    before, after = outside_delegates(model), outside_delegates(swapped)
    assert sum("group_norm" in op for op in before) == 3 and sum("group_norm" in op for op in after) == 1, after
    assert after.count("executorch_call_delegate") < before.count("executorch_call_delegate")
    from executorch.runtime import Runtime  # and XNNPACK computes it right (lowering alone proves nothing)

    for size in (32, 40):
        x = torch.randn(1, 3, size, size)
        program = to_edge_transform_and_lower(torch.export.export(swapped, (x,)), partitioner=[XnnpackPartitioner()])
        buffer = program.to_executorch().buffer  # held: the loaded program reads from it
        method = Runtime.get().load_program(buffer).load_method("forward")
        with torch.no_grad():
            torch.testing.assert_close(method.execute([x])[0], model(x), atol=1e-4, rtol=1e-4)


def test_static_int8_leaves_the_swapped_norms_float():
    """Quantized mean/variance would round the statistics: PT2E int8 leaves the norm's ops unannotated."""
    from compress.quant.common import export_graph
    from compress.quant.configs import Int8StaticConfig
    from compress.quant.pt2e import pt2e_calibrated

    model = _with_group_norms()
    x = torch.randn(16, 3, 12, 12)
    graph = export_graph(model, x[:2], "static").module()  # captured in its XNNPACK form
    assert any("XnnpackGroupNorm1" in str(kind) for n in graph.graph.nodes
               for _, kind in n.meta.get("nn_module_stack", {}).values())
    converted, _ = pt2e_calibrated(graph, Int8StaticConfig(calibration_samples=16), [x])
    norm_ops = [n for n in converted.graph.nodes if n.op == "call_function" and "rsqrt" in str(n.target)]
    assert len(norm_ops) == 2
    for node in norm_ops:  # fed and followed by float ops, no quantize/dequantize pair around them
        assert not any("quantize" in str(user.target) for user in node.users), node.users
    with torch.no_grad():
        ref, out = model(x), converted(x)
    assert float(torch.nn.functional.cosine_similarity(ref.flatten(), out.flatten(), dim=0)) > 0.99

