"""The deployed form of a model: re-parameterisable blocks fused, as timm's `reparameterize_model` does.

MobileOne, RepViT, FastViT, RepGhostNet and the like train with parallel branches (conv + 1x1 +
identity, each with its BatchNorm) that fold into one convolution for inference. Quantizing and
exporting the training form ships the slow, multi-branch graph, and int8 then rounds each branch
separately. `deploy_form` returns a fused copy (the original is left as it is) or the model itself
when nothing in it can be fused, with the number of fused blocks for the stage's records.
"""

from __future__ import annotations

from torch import nn

FUSE_METHODS = ("fuse", "reparameterize", "switch_to_deploy")
"""The methods timm's re-parameterisable blocks expose (timm.models._manipulate.reparameterize_model)."""


def fusable_blocks(model: nn.Module) -> int:
    """How many sub-modules (the model included) have a fuse/re-parameterize method."""
    return sum(1 for m in model.modules() if any(callable(getattr(m, f, None)) for f in FUSE_METHODS))


def deploy_form(model: nn.Module) -> tuple[nn.Module, int]:
    """(`model` with its re-parameterisable blocks fused, in eval mode, how many blocks there were).

    Fused on a deep copy with `timm.utils.reparameterize_model`; `model` itself when none is found.
    """
    count = fusable_blocks(model)
    if not count:
        return model, 0
    from timm.utils import reparameterize_model

    training = model.training
    fused = reparameterize_model(model.eval())
    model.train(training)
    return fused.eval(), count


class XnnpackGroupNorm1(nn.Module):
    """`nn.GroupNorm` with one group, written in ops the XNNPACK delegate takes (reshape, mean, rsqrt).

    ExecuTorch's XNNPACK partitioner has no `native_group_norm`: MobileViTv2 (21 of them at 050) was
    cut into 40 delegate partitions with the norms on portable kernels between them, and lowering
    ran XNNPACK's passes once per partition. The same statistics over (C, H, W): the input seen as
    (N, 1, 1, C·H·W), its mean and biased variance over the last two axes, then the per-channel
    affine. Same parameter names (`weight`, `bias`), so module paths and checkpoints are unchanged;
    outputs equal GroupNorm's within float rounding (tested). Static INT8 leaves it float, as it left
    the GroupNorm (`compress.quant.pt2e.xnnpack_quantizer`).
    """

    keep_float_in_int8 = True

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.eps, self.num_channels = norm.eps, norm.num_channels
        self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x):
        flat = x.reshape(x.shape[0], 1, 1, -1)  # (N, 1, 1, C·H·W)
        centred = flat - flat.mean(dim=(-2, -1), keepdim=True)
        var = (centred * centred).mean(dim=(-2, -1), keepdim=True)
        y = (centred * (var + self.eps).rsqrt()).reshape(x.shape)
        if self.weight is None:
            return y
        shape = (1, -1, *([1] * (x.dim() - 2)))  # (1, C, 1, 1) for images
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def xnnpack_form(model: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `model` with each one-group `nn.GroupNorm` as `XnnpackGroupNorm1`, how many were swapped).

    `model` itself (count 0) when it has none. For the programs lowered to XNNPACK only: ONNX and
    CoreML have a group norm of their own. Measured on MobileViTv2-050: 40 delegate partitions
    before, 19 after (the rest are its attention's `split`/`sum`/`expand_as`, which XNNPACK does not
    take either; a rewrite of them in slices and a mean lowered to one partition but XNNPACK then
    computed it wrongly, max error 2.3 on a unit-scale output, so it was dropped).
    """
    import copy

    names = [name for name, m in model.named_modules() if isinstance(m, nn.GroupNorm) and m.num_groups == 1]
    if not names:
        return model, 0
    swapped = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = swapped.get_submodule(parent_name) if parent_name else swapped
        setattr(parent, child, XnnpackGroupNorm1(getattr(parent, child)))
    return swapped, len(names)
