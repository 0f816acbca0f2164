"""`kdtool sweep --promote N`: write a trial as a recipe file of its own (the base recipe with its values)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from benchmark.sweep.space import Param
from compress.core.atomic import write_text
from compress.core.errors import KdtoolError
from recipes.load import apply_overrides


def promote(data: dict[str, Any], base_recipe: dict[str, Any], number: int, dest: Path | None,
            force: bool = False) -> Path:
    """Write trial `number` of a sweep as a recipe: the recipe the sweep started from, its values set.

    The teacher section stays the base recipe's (train it, or name the sweep's teacher checkpoint);
    the `sweep` section is dropped.

    Raises:
        KdtoolError: no such trial, or `dest` exists without `force`.
    """
    trial = next((t for t in data["trials"] if t["number"] == number), None)
    if trial is None:
        known = ", ".join(str(t["number"]) for t in data["trials"]) or "none"
        raise KdtoolError(f"--promote {number}: no such trial in {data['study']}", f"trials: {known}")
    if trial["state"] != "complete":
        raise KdtoolError(f"--promote {number}: trial {number} is {trial['state']} ({trial['reason']})",
                          f"promote a complete trial, e.g. one on the front: {data['front']}")
    space = {p["path"]: Param(**{**p, "choices": tuple(p["choices"])}) for p in data["space"]}
    overrides = [(path.split("."), space[path].decode(value) if path in space else value)
                 for path, value in trial["params"].items()]
    raw = apply_overrides({k: v for k, v in base_recipe.items() if k != "sweep"}, overrides)
    raw["name"] = f"{base_recipe['name']}-trial{number}"
    dest = Path(dest or f"{raw['name']}.yaml")
    if dest.exists() and not force:
        raise KdtoolError(f"{dest} exists", "pass --force to overwrite it or choose another --promote-to")
    point = ", ".join(f"{k} {trial[k]:.4g}" for k in ("retention", "p50_ms", "size_mb") if trial[k] is not None)
    header = (f"# kdtool run {dest}\n# promoted from sweep {data['study']}, trial {number} "
              f"({data['target']}: {point}, {trial['artifact']})\n")
    write_text(dest, header + yaml.safe_dump(raw, sort_keys=False))
    return dest

