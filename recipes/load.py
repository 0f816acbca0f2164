"""Read a recipe file, apply `--set` overrides, validate, and explain every problem at once."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from compress.core.errors import KdtoolError
from recipes.schema import Recipe

RECIPES_DIR = Path(__file__).resolve().parent


def list_recipes() -> dict[str, Path]:
    """Shipped recipes by name (file stem), quickstart first."""
    found = {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != "quickstart", kv[0])))


def resolve_recipe_path(recipe: str | Path | None) -> Path:
    """A path, or the name of a shipped recipe; None means the quickstart."""
    if recipe is None:
        return RECIPES_DIR / "quickstart.yaml"
    path = Path(recipe)
    if path.exists():
        return path
    shipped = list_recipes()
    if str(recipe) in shipped:
        return shipped[str(recipe)]
    close = difflib.get_close_matches(str(recipe), shipped, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise KdtoolError(f"recipe {recipe} not found", f"{hint}shipped recipes: {', '.join(shipped)}")


def parse_overrides(overrides: list[str] | None) -> list[tuple[list[str], Any]]:
    """`a.b.c=value` strings → (key path, YAML-parsed value)."""
    parsed = []
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KdtoolError(f"--set {item!r} is not key.path=value", "e.g. --set distill.temperature=4")
        try:
            parsed.append((key.strip().split("."), yaml.safe_load(value)))
        except yaml.YAMLError as e:
            raise KdtoolError(f"--set {item!r}: value is not valid YAML", str(e).splitlines()[0]) from e
    return parsed


def apply_overrides(raw: dict, overrides: list[tuple[list[str], Any]]) -> dict:
    """Set each key path in the raw recipe dict, creating sections as needed."""
    for keys, value in overrides:
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return raw


def load_recipe(recipe: str | Path | None = None, overrides: list[str] | None = None) -> tuple[Recipe, Path, dict]:
    """Load and validate a recipe.

    Returns:
        (the validated recipe, its path, the raw dict after overrides: hashed for stage caching).

    Raises:
        KdtoolError: naming every invalid key path at once, with close matches for typos.
    """
    path = resolve_recipe_path(recipe)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise KdtoolError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})", "fix the syntax") from e
    except OSError as e:
        raise KdtoolError(f"cannot read recipe {path}: {e.strerror}") from e
    if not isinstance(raw, dict):
        raise KdtoolError(f"{path}: a recipe is a YAML mapping of sections", "see recipes/quickstart.yaml")
    raw = apply_overrides(raw, parse_overrides(overrides))
    base = path.parent
    try:
        recipe_obj = Recipe.model_validate(raw)
    except ValidationError as e:
        problems = format_validation_errors(e, Recipe)
        raise KdtoolError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems)) from None
    _resolve_paths(recipe_obj, base)
    _check_model_files(recipe_obj)
    return recipe_obj, path, raw


def _check_model_files(recipe: Recipe) -> None:
    """A weights path that is a folder is refused here, before torch is imported (fast answers).

    A missing file is not: shipped recipes name weights the user brings, and `--dry-run` runs
    without them (the stage that loads the file names it)."""
    for role in ("teacher", "student"):
        for field in ("checkpoint", "pretrained_file"):
            value = getattr(getattr(recipe, role), field, None)
            if value is not None and value.is_dir():
                raise KdtoolError(f"{role}.{field} {value} is a folder", "name the weights file inside it")


def _resolve_paths(recipe: Recipe, base: Path) -> None:
    """Relative file paths in a recipe are relative to the current folder, else to the recipe's folder."""
    for section in (recipe.data, recipe.teacher, recipe.student):
        for field in ("root", "val_root", "test_root", "unlabeled_root", "checkpoint", "pretrained_file"):
            value = getattr(section, field, None)
            if value is not None and not value.is_absolute() and not value.exists() and (base / value).exists():
                setattr(section, field, base / value)


def format_validation_errors(error: ValidationError, model: type[BaseModel]) -> list[str]:
    """One line per problem: `key.path: message (did you mean ...)`."""
    lines = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join(loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.5)
            msg = "unknown key" + (f" (did you mean {'.'.join(loc[:-1] + [close[0]])!r}?)" if close else "")
            if known and not close:
                msg += f" (valid: {', '.join(known)})"
        elif err["type"] == "literal_error":
            msg = f"{msg}, got {err.get('input')!r}"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"{path}: {msg}")
    return lines


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the sub-model reached by `loc` (best effort, for typo suggestions)."""
    current: Any = model
    for key in loc:
        if key.isdigit():
            continue
        field = getattr(current, "model_fields", {}).get(key)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
