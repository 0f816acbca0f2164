"""The search space: recipe key paths (as `--set` takes them) → a categorical list or a numeric range.

```yaml
sweep:                                   # in the recipe, or the same mapping in a `--space FILE`
  student.kwargs.channels: [[4, 8, 16, 32], [8, 16, 32, 64]]
  distill.temperature: {low: 1.0, high: 8.0, log: true}
  distill.alpha: {low: 0.1, high: 0.9, step: 0.1}
  quantize.modes: [[static], [qat]]
```

Every path and value is checked against the recipe schema before any trial starts: each
categorical value and both ends of each range are applied to the recipe (the way `--set` applies
them) and validated, so an unknown key gets the schema's did-you-mean and a value out of range the
schema's message.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from compress.core.errors import KdtoolError
from export.names import check_names
from recipes.load import apply_overrides, format_validation_errors
from recipes.schema import Recipe

SHARED = ("name", "teacher", "sweep")
"""Sections a trial may not change: the run name, the teacher every trial shares, the space itself."""

RANGE_KEYS = {"low", "high", "log", "step"}


@dataclass(frozen=True)
class Param:
    """One searched key: `choices` (categorical) or `low`/`high` (int when both ends and the step are ints)."""

    path: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    integer: bool = False
    encoded: bool = field(default=False)  # choices hold lists/dicts: Optuna sees their JSON text

    @property
    def keys(self) -> list[str]:
        """The key path as `apply_overrides` takes it."""
        return self.path.split(".")

    def optuna_choices(self) -> tuple[Any, ...]:
        """Choices as Optuna stores them (None, bool, int, float or str)."""
        return tuple(json.dumps(c) for c in self.choices) if self.encoded else self.choices

    def decode(self, value: Any) -> Any:
        """A value Optuna suggested → the recipe value."""
        return json.loads(value) if self.encoded else value

    def distribution(self) -> Any:
        """The Optuna distribution of this key (as `Trial.suggest_*` records it in the study)."""
        import optuna

        if self.choices:
            return optuna.distributions.CategoricalDistribution(self.optuna_choices())
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log,
                                                        step=int(self.step or 1))
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log,
                                                      step=self.step)


def read_space(space_file: Path | None, raw_recipe: dict) -> dict[str, Any]:
    """The raw space mapping: `--space FILE` (a mapping, or one under `sweep:`), else the recipe's `sweep:`.

    Raises:
        KdtoolError: no space anywhere, an unreadable file, or not a mapping.
    """
    if space_file is not None:
        try:
            raw = yaml.safe_load(Path(space_file).read_text())
        except OSError as e:
            raise KdtoolError(f"--space {space_file}: cannot read it ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise KdtoolError(f"--space {space_file}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if isinstance(raw, dict) and set(raw) == {"sweep"}:
            raw = raw["sweep"]
        where = f"--space {space_file}"
    else:
        raw, where = raw_recipe.get("sweep"), "the recipe's sweep section"
        if raw is None:
            raise KdtoolError("nothing to search: the recipe has no sweep section and no --space was given",
                              "add `sweep: {distill.temperature: {low: 1, high: 8}}` or pass --space FILE")
    if not isinstance(raw, dict) or not raw:
        raise KdtoolError(f"{where}: a space is a non-empty mapping of recipe key paths",
                          "e.g. distill.temperature: {low: 1, high: 8}")
    return raw


def parse_space(raw_space: dict[str, Any], raw_recipe: dict) -> list[Param]:
    """Parse and validate a space against the recipe it searches.

    Args:
        raw_space: key path → list of values, or {low, high, log, step}.
        raw_recipe: the recipe as loaded (after `--set`), whose schema every value must pass.

    Raises:
        KdtoolError: naming the first key path at fault (unknown key with did-you-mean, empty range,
            a categorical with fewer than two values, a value the schema refuses).
    """
    params = [_param(str(path), spec) for path, spec in raw_space.items()]
    for param in params:
        values = param.choices if param.choices else (param.low, param.high)
        for value in values:
            _check_value(raw_recipe, param.path, value)
    return params


SHARED_WHY = {"name": "each trial's run is named by the sweep (<recipe>-trialNNNN)",
              "teacher": "the teacher is trained once and shared by every trial",
              "sweep": "the space cannot search itself"}


def _param(path: str, spec: Any) -> Param:
    section = path.split(".")[0]
    if section in SHARED:
        raise KdtoolError(f"sweep space {path}: `{section}` cannot be searched",
                          f"{SHARED_WHY[section]}; search student, distill, quantize, export or benchmark keys")
    if isinstance(spec, list):
        if len(spec) < 2:
            raise KdtoolError(f"sweep space {path}: a categorical needs at least two values, got {spec!r}",
                              f"fix it with --set {path}=VALUE instead of searching it")
        if len({json.dumps(v, sort_keys=True) for v in spec}) != len(spec):
            raise KdtoolError(f"sweep space {path}: repeated values in {spec!r}")
        encoded = any(isinstance(v, list | dict) for v in spec)
        return Param(path, choices=tuple(spec), encoded=encoded)
    if isinstance(spec, dict):
        return _range(path, spec)
    raise KdtoolError(f"sweep space {path}: {spec!r} is neither a list of values nor {{low, high}}",
                      "e.g. [2.0, 4.0] or {low: 1.0, high: 8.0, log: true}")


def _range(path: str, spec: dict) -> Param:
    unknown = set(spec) - RANGE_KEYS
    if unknown or not {"low", "high"} <= set(spec):
        raise KdtoolError(f"sweep space {path}: a range takes low, high and optionally log, step "
                          f"(got {', '.join(map(str, spec))})", "e.g. {low: 0.1, high: 0.9, step: 0.1}")
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise KdtoolError(f"sweep space {path}: {name} {value!r} is not a finite number")
    if not low < high:
        raise KdtoolError(f"sweep space {path}: empty range (low {low} is not below high {high})")
    if log and low <= 0:
        raise KdtoolError(f"sweep space {path}: a log range needs low > 0, got {low}")
    if step is not None and (step <= 0 or step > high - low):
        raise KdtoolError(f"sweep space {path}: step {step} does not fit in [{low}, {high}]")
    if log and step is not None:
        raise KdtoolError(f"sweep space {path}: give log or step, not both (Optuna samples one or the other)")
    integer = all(isinstance(v, int) for v in (low, high) + ((step,) if step is not None else ()))
    return Param(path, low=low, high=high, log=log, step=step, integer=integer)


def _check_value(raw_recipe: dict, path: str, value: Any) -> None:
    """Apply `path=value` to a copy of the recipe and validate it: the schema's own message on failure."""
    trial = apply_overrides(copy.deepcopy(raw_recipe), [(path.split("."), value)])
    trial.pop("sweep", None)
    try:
        check_names(Recipe.model_validate(trial))  # registered names too: data source, KD loss, formats
    except KdtoolError as e:
        raise KdtoolError(f"sweep space {path}={value!r}: {e.message}", e.hint) from None
    except ValidationError as e:
        problems = format_validation_errors(e, Recipe)
        ours = [p for p in problems if p.split(":")[0] == path or p.startswith(path + ".")
                or path.startswith(p.split(":")[0] + ".")]
        problem = (ours or problems)[0]
        raise KdtoolError(f"sweep space {path}={value!r}: {problem}",
                          "key paths are the ones --set takes, e.g. distill.temperature") from None


def apply_params(raw_recipe: dict, params: list[Param], values: dict[str, Any]) -> dict:
    """The recipe of a trial: a copy of `raw_recipe` with each searched key set (decoded), no `sweep` section."""
    by_path = {p.path: p for p in params}
    trial = apply_overrides(copy.deepcopy(raw_recipe),
                            [(by_path[k].keys, by_path[k].decode(v)) for k, v in values.items() if k in by_path])
    trial.pop("sweep", None)
    return trial


def recipe_point(raw_recipe: dict, params: list[Param]) -> dict[str, Any] | None:
    """The recipe's own values of the searched keys (as Optuna stores them, schema defaults filled in), or
    None when one lies outside the space (then the recipe's own point cannot be a trial of this study)."""
    full = Recipe.model_validate({k: v for k, v in raw_recipe.items() if k != "sweep"}).model_dump(mode="json")
    point: dict[str, Any] = {}
    for p in params:
        node: Any = full
        for key in p.keys:
            node = node.get(key) if isinstance(node, dict) else None
        if p.choices:
            if node not in p.choices:
                return None
            point[p.path] = p.optuna_choices()[p.choices.index(node)]
        elif isinstance(node, bool) or not isinstance(node, int | float) or not p.low <= node <= p.high:
            return None
        else:
            point[p.path] = node
    return point
