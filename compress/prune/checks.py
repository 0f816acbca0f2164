"""Never hand back a silently broken pruned model: a forward check after each pruning step, and a
parity check of the saved model against the pruned graph it was saved from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compress.core.errors import ExportError, KdtoolError
from compress.prune.pruner import first_failing_module

RELOAD_TOLERANCE = 1e-5
"""Largest output difference between the pruned model and its reload, as a share of the outputs' spread
(standard deviation), with the spread taken as at least 1: outputs that barely vary are held to 1e-5
absolute. The same weights go through the same ops: anything above is a wrong shape or attribute, not
rounding."""


def check_forward(pruned: nn.Module, example: torch.Tensor, unpruned: nn.Module, where: str) -> None:
    """The pruned model runs (eval mode), gives finite outputs of the unpruned model's shape.

    Raises:
        KdtoolError: the forward fails (naming the module) or its outputs are not finite or of another shape.
    """
    pruned.eval()
    with torch.no_grad(), first_failing_module(pruned, f"{where}: the pruned student does not run"):
        out = pruned(example)
        ref = unpruned.eval()(example)
    if out.shape != ref.shape:
        raise KdtoolError(f"{where}: the pruned student outputs {tuple(out.shape)}, not {tuple(ref.shape)}",
                          "add the head's module path to prune.ignore")
    if not torch.isfinite(out).all():
        raise KdtoolError(f"{where}: the pruned student outputs NaN/Inf",
                          "prune fewer channels (prune.ratio) or use another importance")


def check_reload(pruned: nn.Module, reloaded: nn.Module, inputs: torch.Tensor) -> dict[str, Any]:
    """Parity of the saved-and-reloaded model with the in-memory pruned graph on real inputs.

    Returns:
        `{"status": "passed", "max_abs", "samples"}`.

    Raises:
        ExportError: the reloaded model computes something else (exit 4).
    """
    with torch.no_grad():
        want, got = pruned.eval()(inputs), reloaded.eval()(inputs)
    max_abs = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    spread = float(want.std()) if want.numel() > 1 else 0.0
    if not max_abs <= RELOAD_TOLERANCE * max(spread, 1.0):
        raise ExportError(f"student_pruned: the saved model differs from the pruned graph (max abs {max_abs:.3g})",
                          "a module's size attribute was not recorded in shapes.json: report this model")
    return {"status": "passed", "max_abs": max_abs, "samples": int(inputs.shape[0])}
