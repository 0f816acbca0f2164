"""Channel pruning with torch-pruning's DepGraph: remove channels together with all that depends on them.

A residual add, a depthwise convolution, a concatenation or an attention block's heads are pruned
as one group (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023), so the pruned
model is a smaller dense model every runtime runs as it is: no masks, no sparse kernels.

Attention (timm's `Attention` in ViT and MobileViT) loses whole heads, never part of a head: the
head width and the softmax scale stay as trained. MobileViTv2's linear attention has no heads; its
`qkv_proj` outputs are kept whole (the forward splits them by sizes fixed at build time) and the
other channels are pruned like a convolution's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from compress.core.errors import KdtoolError

Measure = Callable[[nn.Module], float]
"""A cost of a model (params, GFLOPs, latency) that a budget bounds."""

MAX_LAYER_RATIO = 0.9
"""No convolution or linear layer loses more than this share of its original channels, over all steps
(global pruning would empty some layers). Attention heads are pruned by the recipe's ratio."""

BUDGET_STEPS = 18
"""A budget search prunes in this many increments up to `MAX_LAYER_RATIO` (0.05 of the channels each)."""


def importance(name: str) -> Any:
    """The torch-pruning importance criterion a recipe names (l1, l2, bn_scale, taylor)."""
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "bn_scale": lambda: tp.importance.BNScaleImportance(),
            "taylor": lambda: tp.importance.GroupTaylorImportance()}[name]()


def ignored_modules(model: nn.Module, ignore: list[str]) -> list[nn.Module]:
    """The classifier plus every module whose path is, or starts with, a name in `ignore`.

    Raises:
        KdtoolError: a name in `ignore` matches no module of the model.
    """
    modules = dict(model.named_modules())
    kept: list[nn.Module] = []
    head = model.get_classifier() if hasattr(model, "get_classifier") else _last_linear(model)
    if isinstance(head, nn.Module):
        kept.append(head)
    kept += split_projections(model)
    for name in ignore:
        matched = [m for path, m in modules.items() if path == name or path.startswith(name + ".")]
        if not matched:
            close = sorted(p for p in modules if p and name.split(".")[-1] in p)[:3]
            raise KdtoolError(f"prune.ignore: {name!r} matches no module of the student",
                              f"module paths look like {', '.join(close) or next(iter(p for p in modules if p), '')}")
        kept += matched
    return kept


def split_projections(model: nn.Module) -> list[nn.Module]:
    """Projections whose outputs the forward splits by sizes fixed at build time: kept whole.

    timm's `LinearSelfAttention` (MobileViTv2) splits its `qkv_proj` output into [1, embed_dim,
    embed_dim] with the `embed_dim` it was built with; pruning those outputs breaks the split. Their
    inputs still follow the channels of the stream they read.
    """
    return [m.qkv_proj for m in model.modules()
            if isinstance(getattr(m, "qkv_proj", None), nn.Module) and isinstance(getattr(m, "embed_dim", None), int)]


def _last_linear(model: nn.Module) -> nn.Module | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """`{qkv projection: heads}` of timm-style attention blocks (a `qkv` Linear and `num_heads`)."""
    return {m.qkv: m.num_heads for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int)}


def _sync_attention(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """Write the pruned head counts back into the attention blocks (their forward reshapes by them)."""
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if qkv in heads:
            m.num_heads = heads[qkv]
            if hasattr(m, "attn_dim"):
                m.attn_dim = m.num_heads * m.head_dim


def layer_channels(model: nn.Module) -> dict[str, int]:
    """`{module path: output channels}` of every convolution and linear layer."""
    return {path: _out_channels(m) for path, m in model.named_modules() if isinstance(m, _LAYERS)}


_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)


def _out_channels(m: nn.Module) -> int:
    return m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features


@dataclass
class Pruning:
    """One pruner bound to a model: `step()` removes the next share of channels, never taking a layer
    below its floor (`floors`: the fewest output channels each layer keeps)."""

    model: nn.Module
    pruner: Any
    prepare: Callable[[nn.Module], None] | None
    floors: dict[nn.Module, int]

    def step(self) -> None:
        """Prune one step (gradients first for Taylor importance), then resize attention blocks."""
        if self.prepare is not None:
            self.prepare(self.model)
        for group in self.pruner.step(interactive=True):
            group = self._above_floors(group)
            if group is not None:
                group.prune()
        self.model.zero_grad(set_to_none=True)
        _sync_attention(self.model, self.pruner.num_heads)

    def _above_floors(self, group: Any) -> Any:
        """`group` with only as many of its least important channels as every layer in it can lose
        (None: none). Attention groups pass as they are: torch-pruning has already counted their heads."""
        dg = self.pruner.DG
        root, idxs = group[0].dep, list(group[0].idxs)
        room = len(idxs)
        for dep, dep_idxs in group:
            m = dep.target.module
            depthwise = isinstance(m, nn.modules.conv._ConvNd) and 1 < m.groups == m.out_channels
            if m in self.floors and dep_idxs and (dg.is_out_channel_pruning_fn(dep.handler) or depthwise):
                left = max(_out_channels(m) - self.floors[m], 0)
                room = min(room, len(idxs) * left // len(dep_idxs))
        if room == len(idxs) or any(dep.target.module in self.pruner.num_heads for dep, _ in group):
            return group
        if room <= 0 or self.pruner._get_channel_groups(group) > 1:  # grouped channels: all or nothing
            return None
        module, handler = root.target.module, root.handler
        width = (dg.get_out_channels if dg.is_out_channel_pruning_fn(handler) else dg.get_in_channels)(module)
        imp = self.pruner.estimate_importance(dg.get_pruning_group(module, handler, list(range(width))))
        if imp is not None and len(imp) == width:  # the least important of the channels it chose
            idxs.sort(key=lambda i: float(imp[i]))
        return dg.get_pruning_group(module, handler, sorted(idxs[:room]))


def make_pruning(model: nn.Module, example: torch.Tensor, ratio: float, *, criterion: str, scope: str,
                 ignore: list[str], steps: int = 1, prepare: Callable[[nn.Module], None] | None = None,
                 original: dict[str, int] | None = None) -> Pruning:
    """Trace `model` and set up pruning of `ratio` of its channels in `steps` equal steps.

    Args:
        model: the model to prune in place (eval mode while tracing).
        example: one preprocessed input batch.
        ratio: share of each layer's channels removed after all steps (global: of all channels).
        criterion: l1, l2, bn_scale or taylor.
        scope: uniform (the same ratio per layer) or global (channels ranked across layers).
        ignore: module paths kept whole, beside the classifier.
        steps: pruner steps to reach `ratio` (a linear schedule).
        prepare: fills gradients before each step (Taylor importance needs them).
        original: `layer_channels` of the model before any pruning (default: as it is now); no layer is
            pruned below `1 - MAX_LAYER_RATIO` of these counts, however many steps come.

    Raises:
        KdtoolError: an `ignore` name matches nothing, or torch-pruning cannot trace the model (the first
            module that fails is named).
    """
    import torch_pruning as tp

    kept = ignored_modules(model, ignore)
    heads = attention_heads(model)
    model.eval()
    try:
        with first_failing_module(model, "torch-pruning cannot trace the student"):
            pruner = tp.pruner.MetaPruner(
                model, example, importance=importance(criterion), global_pruning=scope == "global",
                pruning_ratio=ratio, max_pruning_ratio=MAX_LAYER_RATIO, iterative_steps=steps,
                ignored_layers=kept, num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=False,
                head_pruning_ratio=ratio if heads else 0.0)
    finally:
        model.zero_grad(set_to_none=True)
    original = layer_channels(model) if original is None else original
    floors = {m: max(1, math.ceil(round((1 - MAX_LAYER_RATIO) * original[path], 6)))
              for path, m in model.named_modules() if path in original}
    return Pruning(model, pruner, prepare, floors)


class first_failing_module:  # noqa: N801  (used as a context manager, like torch.no_grad)
    """Turn an exception raised inside a module's forward into a `KdtoolError` naming that module.

    Forward pre/post hooks keep the stack of modules being run; the innermost one still open when
    the exception arrives is where it happened.
    """

    def __init__(self, model: nn.Module, what: str) -> None:
        self.model, self.what, self.stack, self.handles = model, what, [], []

    def __enter__(self) -> first_failing_module:
        for path, m in self.model.named_modules():
            self.handles.append(m.register_forward_pre_hook(lambda _m, _i, p=path: self._enter(p)))
            self.handles.append(m.register_forward_hook(lambda _m, _i, _o: self._leave()))
        return self

    def _enter(self, path: str) -> None:  # a hook returning a value would replace the module's input/output
        self.stack.append(path)

    def _leave(self) -> None:
        if self.stack:
            self.stack.pop()

    def __exit__(self, kind, exc, tb) -> bool:
        for h in self.handles:
            h.remove()
        if exc is None or isinstance(exc, KdtoolError):
            return False
        where = next((p for p in reversed(self.stack) if p), None)
        culprit = f"module {where!r} ({type(dict(self.model.named_modules())[where]).__name__})" if where else \
            f"the model's own forward ({type(self.model).__name__})"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise KdtoolError(f"{self.what}: it fails in {culprit}: {type(exc).__name__}: {first}",
                          "add that module to prune.ignore, or prune another student architecture") from exc


def prune_ratio(model: nn.Module, example: torch.Tensor, ratio: float, **options: Any) -> None:
    """Remove `ratio` of the (current) channels of `model` in place, in one step."""
    if ratio <= 0:
        return
    make_pruning(model, example, ratio, **options).step()


def prune_to_budget(model: nn.Module, example: torch.Tensor, measure: Measure, budget: float, what: str,
                    **options: Any) -> float:
    """Prune `model` in place in increments of 0.05 of its channels until `measure(model) <= budget`.

    Returns:
        The cost measured at the end (at most `budget`).

    Raises:
        KdtoolError: the budget is not met with every layer pruned down to its floor (exit 2).
    """
    cost = measure(model)
    if cost <= budget:
        return cost
    pruning = make_pruning(model, example, MAX_LAYER_RATIO, steps=BUDGET_STEPS, **options)
    for _ in range(BUDGET_STEPS):
        pruning.step()
        cost = measure(model)
        if cost <= budget:
            return cost
    raise KdtoolError(f"prune.{what}: budget {budget:g} cannot be reached: with up to {MAX_LAYER_RATIO:.0%} of each "
                      f"prunable layer's original channels removed the student still costs {cost:.4g}",
                      "raise the budget, add fewer modules to prune.ignore, or pick a smaller student")


def channel_count(model: nn.Module) -> int:
    """Output channels of every convolution and linear layer (the width pruning removes)."""
    return sum(layer_channels(model).values())
