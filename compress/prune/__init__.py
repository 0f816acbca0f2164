"""Structured pruning (torch-pruning DepGraph) of the distilled student, with recovery training.

Python API: `prune_ratio(model, example, 0.5, criterion="l2", scope="uniform", ignore=[])` prunes an
`nn.Module` in place; `prune_to_budget(...)` prunes until a cost (params, GFLOPs, latency) is met;
`compress.models.shapes.architecture_changes` records the result so it reloads without this package.
`kdtool prune` is `compress.prune.stage.run_prune`.
"""

from compress.prune.pruner import prune_ratio, prune_to_budget

__all__ = ["prune_ratio", "prune_to_budget"]
