"""Capture intermediate layer outputs by module name with forward hooks, without touching the model.

The idea of torchdistill's `core/forward_hook.py`: the model stays as built (and exports as built);
a context manager registers hooks on the named submodules for one forward pass and removes them
after::

    with capture(student, ["blocks.3"]) as feats:
        logits = student(x)
    feats["blocks.3"]   # (N, C, H, W), with grad
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from torch import Tensor, nn

from compress.core.errors import KdtoolError


def layer_names(model: nn.Module) -> list[str]:
    """Names of every submodule of `model`, as `named_modules()` spells them (the root excluded)."""
    return [name for name, _ in model.named_modules() if name]


def find_layer(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """Return the submodule called `name`, or raise listing the valid names (closest first).

    Args:
        model: the model to search.
        name: a dotted module path such as `layer3` or `blocks.3`.
        role: "student" or "teacher", for the message.

    Raises:
        KdtoolError: no submodule has that name.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = layer_names(model)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    rest = [n for n in valid if n not in close and n.count(".") <= 1]  # top levels: a readable list
    shown = close + rest[: max(0, 30 - len(close))]
    more = f" (+{len(valid) - len(shown)} deeper)" if len(valid) > len(shown) else ""
    guess = f"did you mean {close[0]!r}? " if close else ""
    raise KdtoolError(f"{role} has no layer {name!r}", f"{guess}valid: {', '.join(shown)}{more}")


def first_tensor(output: Any) -> Tensor | None:
    """The tensor a module returned, or the first tensor of a tuple/list/dict it returned."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class capture:  # noqa: N801 - used like a function: `with capture(model, names) as feats`
    """Context manager that records the outputs of named submodules during forward passes.

    Entering returns a dict `name -> Tensor` filled as the model runs (the last call wins when
    a module runs twice). Hooks are removed on exit, also when the forward raises. Names are
    checked on construction, so a typo fails before any computation.

    Args:
        model: the model whose layers to capture (not modified).
        names: module paths as in `model.named_modules()`.
        role: "student" or "teacher", for error messages.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], role: str = "model") -> None:
        self.names = list(dict.fromkeys(names))
        self.modules = {name: find_layer(model, name, role) for name in self.names}
        self.role = role
        self.features: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            tensor = first_tensor(output)
            if tensor is None:
                raise KdtoolError(f"{self.role} layer {name!r} returned no tensor ({type(output).__name__})",
                                  "pick a layer whose output is a tensor")
            self.features[name] = tensor

        return record

    def __enter__(self) -> dict[str, Tensor]:
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self.features

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
