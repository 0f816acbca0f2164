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


def xnnpack_self_attention(attention: nn.Module):
    """timm MobileViTv2's `LinearSelfAttention._forward_self_attn` in ops the XNNPACK delegate takes.

    timm splits q/k/v with `split`, sums the context over the patches with `sum(dim=-1)` and
    broadcasts it with `expand_as`: none of the three is delegated (executorch 1.5.1), so every
    attention cut the graph into more partitions. Here: slices, a mean over (1, N) of the (B, d·P,
    1, N) view times N, and a broadcasting multiply; the same arithmetic (outputs equal, tested).
    """
    import torch.nn.functional as F

    def forward_self_attn(x):  # x: (B, C, P, N)
        d = attention.embed_dim
        qkv = attention.qkv_proj(x)  # (B, 1 + 2d, P, N)
        query, key, value = qkv[:, :1], qkv[:, 1:1 + d], qkv[:, 1 + d:]
        scores = attention.attn_drop(F.softmax(query, dim=-1))  # (B, 1, P, N)
        b, _, p, n = key.shape
        context = (key * scores).reshape(b, d * p, 1, n).mean(dim=(-2, -1), keepdim=True)
        context = context.reshape(b, d, p, 1) * float(n)  # (B, d, P, 1): the sum over N
        return attention.out_drop(attention.out_proj(F.relu(value) * context))

    return forward_self_attn


def xnnpack_form(model: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `model` in ops XNNPACK delegates, how many modules were rewritten).

    One-group `nn.GroupNorm`s become `XnnpackGroupNorm1`; timm MobileViTv2's self-attention gets
    `xnnpack_self_attention`. Parameters keep their names. `model` itself (count 0) when it has
    none of them. For the programs lowered to XNNPACK only: ONNX and CoreML take the originals.
    Measured on MobileViTv2-050 at 64 px: 40 delegate partitions before, 1 after.
    """
    import copy

    norms = [name for name, m in model.named_modules() if isinstance(m, nn.GroupNorm) and m.num_groups == 1]
    attentions = [name for name, m in model.named_modules() if _is_linear_self_attention(m)]
    if not norms and not attentions:
        return model, 0
    swapped = copy.deepcopy(model)
    for name in norms:
        parent_name, _, child = name.rpartition(".")
        parent = swapped.get_submodule(parent_name) if parent_name else swapped
        setattr(parent, child, XnnpackGroupNorm1(getattr(parent, child)))
    for name in attentions:
        attention = swapped.get_submodule(name)
        attention._forward_self_attn = xnnpack_self_attention(attention)
    return swapped, len(norms) + len(attentions)


def _is_linear_self_attention(module: nn.Module) -> bool:
    cls = type(module)
    return cls.__name__ == "LinearSelfAttention" and cls.__module__ == "timm.models.mobilevit"
