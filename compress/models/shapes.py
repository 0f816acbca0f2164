"""Rebuild a structurally pruned model without the pruning code: its shapes as data.

Channel pruning changes a model in two ways: tensors get smaller (a conv's weight, a BatchNorm's
running mean) and modules' size attributes change (`out_channels`, `num_features`, an attention
block's `num_heads`). `architecture_changes` records both as JSON, against a freshly built model of
the same architecture; `apply_shapes` replays them on a fresh build, after which the pruned weights
load as any checkpoint does. `shapes.json` beside `best.safetensors` is all a loader needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.core.errors import KdtoolError

SHAPES_FILE = "shapes.json"
SCHEMA = "kdtool.shapes/1"
_SIMPLE = (int, float, bool)


def _simple_attrs(module: nn.Module) -> dict[str, Any]:
    """The module's public size-like attributes: numbers and tuples/lists of numbers."""
    out = {}
    for name, value in vars(module).items():
        if name.startswith("_") or name == "training":
            continue
        if isinstance(value, _SIMPLE) or (isinstance(value, (tuple, list)) and value
                                          and all(isinstance(v, _SIMPLE) for v in value)):
            out[name] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def architecture_changes(pruned: nn.Module, reference: nn.Module) -> dict[str, Any]:
    """What differs between a pruned model and a fresh build of its architecture, as JSON data.

    Returns:
        `{"schema", "attributes": {module path: {attr: value}}, "tensors": {state key: shape}}`
        holding only what changed.
    """
    ref_modules = dict(reference.named_modules())
    attributes: dict[str, dict[str, Any]] = {}
    for path, module in pruned.named_modules():
        ref = ref_modules.get(path)
        if ref is None:
            raise KdtoolError(f"pruned model has a module {path!r} its architecture does not build",
                              "pruning may only shrink modules, not add them")
        mine, theirs = _simple_attrs(module), _simple_attrs(ref)
        changed = {k: v for k, v in mine.items() if k in theirs and theirs[k] != v}
        if changed:
            attributes[path] = changed
    ref_state = reference.state_dict()
    tensors = {k: list(v.shape) for k, v in pruned.state_dict().items()
               if k in ref_state and tuple(ref_state[k].shape) != tuple(v.shape)}
    return {"schema": SCHEMA, "attributes": attributes, "tensors": tensors}


def apply_shapes(module: nn.Module, shapes: dict[str, Any]) -> nn.Module:
    """Resize a fresh build in place to the recorded pruned shapes (values are loaded afterwards).

    Raises:
        KdtoolError: the record names a module or tensor this architecture does not have.
    """
    modules = dict(module.named_modules())
    for path, attrs in shapes.get("attributes", {}).items():
        target = _module(modules, path)
        for name, value in attrs.items():
            old = getattr(target, name, None)
            setattr(target, name, tuple(value) if isinstance(old, tuple) else value)
    for key, shape in shapes.get("tensors", {}).items():
        path, _, name = key.rpartition(".")
        target = _module(modules, path)
        if name in target._parameters and target._parameters[name] is not None:
            old = target._parameters[name]
            target._parameters[name] = nn.Parameter(torch.zeros(shape, dtype=old.dtype),
                                                    requires_grad=old.requires_grad)
        elif name in target._buffers and target._buffers[name] is not None:
            old = target._buffers[name]
            target._buffers[name] = torch.zeros(shape, dtype=old.dtype)
        else:
            raise KdtoolError(f"{SHAPES_FILE} names tensor {key!r}, which this architecture lacks",
                              "rebuild with the recipe's student architecture the model was pruned from")
    return module


def _module(modules: dict[str, nn.Module], path: str) -> nn.Module:
    if path not in modules:
        raise KdtoolError(f"{SHAPES_FILE} names module {path!r}, which this architecture lacks",
                          "rebuild with the recipe's student architecture the model was pruned from")
    return modules[path]
