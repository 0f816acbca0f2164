"""The recipe reference, generated from the schema: every key, its type, default and meaning.

    python -m recipes.reference                      # print the generated reference
    python -m recipes.reference docs/recipes.md      # rewrite the block between the markers in place

Everything comes from `recipes.schema` (field types, constraints, defaults, descriptions and section
docstrings), so the reference cannot drift from the code; `tests/test_recipes_reference.py` fails when
docs/recipes.md differs from what this prints. This module imports only the schema (import-linter).
"""

from __future__ import annotations

import os
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from recipes.schema import Recipe

BEGIN = "<!-- BEGIN GENERATED: python -m recipes.reference docs/recipes.md -->"
END = "<!-- END GENERATED -->"

_BOUNDS = ((annotated_types.Ge, "ge", "≥"), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "≤"),
           (annotated_types.Lt, "lt", "<"))


def _section_type(annotation: object) -> type[BaseModel] | None:
    """The recipe section a field holds (directly, optional, or as list items), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _bounds(metadata: list) -> list[str]:
    """Numeric constraints (ge/gt/le/lt) as `≥ 0` style strings."""
    out = []
    for item in metadata:
        for kind, attribute, sign in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{sign} {getattr(item, attribute):g}")  # 0 and 0.0 alike, however pydantic kept it
    return out


def type_name(annotation: object) -> str:
    """A reader's name for a field type: `int`, `"a" or "b"`, `list of str`, `path or null`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        inner, bounds = type_name(args[0]), _bounds(list(args[1:]))
        return f"{inner} ({', '.join(bounds)})" if bounds else inner
    if origin is typing.Literal:
        return " or ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _value(value: object) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _default(field: FieldInfo, parent_default: BaseModel | None, name: str) -> str:
    """The field's default, taken from the enclosing section's default instance when it has one."""
    if parent_default is not None:
        return _value(getattr(parent_default, name))
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    return _value(field.get_default(call_default_factory=True))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _instance(field: FieldInfo, parent_default: BaseModel | None, name: str) -> BaseModel | None:
    """The default instance of a section field (to read its own defaults from), if it has one."""
    value = getattr(parent_default, name) if parent_default is not None else field.get_default(
        call_default_factory=True)
    return value if isinstance(value, BaseModel) else None


def _sections(model: type[BaseModel], path: str, default: BaseModel | None, seen: dict, out: list[str]) -> None:
    """Append the table of one section, then its subsections, depth first (a repeated section by reference)."""
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    defaults = {name: _default(field, default, name) for name, field in model.model_fields.items()}
    keys = tuple(model.model_fields)
    if keys in seen:
        first, first_defaults = seen[keys]
        changed = ", ".join(f"`{k}: {v}`" for k, v in defaults.items() if v != first_defaults[k])
        same = f"The same keys as `{first}`; defaults that differ: {changed}." if changed else \
            f"The same keys and defaults as `{first}`."
        out += [f"### `{path}`", "", f"{doc} {same}", ""]
        return
    seen[keys] = (path, defaults)
    rows, children = [], []
    for name, field in model.model_fields.items():
        key = f"{path}.{name}"
        section = _section_type(field.annotation)
        instance = _instance(field, default, name) if section is not None else None
        if section is not None:
            children.append((section, key, instance))
        annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
        value = "(below)" if instance is not None else defaults[name]
        rows.append(f"| `{key}` | {_cell(type_name(annotation))} | `{_cell(value)}` | "
                    f"{_cell(field.description or ('below' if section else ''))} |")
    out += [f"### `{path}`", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""]
    for section, key, instance in children:
        _sections(section, key, instance, seen, out)


def render() -> str:
    """The generated reference (Markdown, between the markers)."""
    out = [BEGIN, "", f"{Recipe.__doc__.strip()} `name`, `teacher` and `student.arch` are required.", ""]
    seen: dict = {}
    for name, field in Recipe.model_fields.items():
        section = _section_type(field.annotation)
        if section is None:
            out += [f"`{name}`: {type_name(field.annotation)}, {_default(field, None, name)}: {field.description}", ""]
        else:
            _sections(section, name, _instance(field, None, name), seen, out)
    return "\n".join([*out, END]) + "\n"


def key_paths(model: type[BaseModel] = Recipe, prefix: str = "") -> set[str]:
    """Every key path of the recipe (sections and leaves), e.g. `distill.train.lr`, `distill.terms.weight`."""
    paths = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        paths.add(key)
        section = _section_type(field.annotation)
        if section is not None:
            paths |= key_paths(section, key + ".")
    return paths


def splice(document: str, block: str) -> str:
    """`document` with the text between the markers replaced by `block` (appended when there are none)."""
    if BEGIN not in document:
        return document.rstrip("\n") + "\n\n" + block
    head, rest = document.split(BEGIN, 1)
    tail = rest.split(END, 1)[1] if END in rest else "\n"
    return head + block.rstrip("\n") + tail


def main(argv: list[str]) -> None:
    """Print the reference, or splice it into the Markdown file named in argv."""
    if not argv:
        sys.stdout.write(render())
        return
    if argv[0].startswith("-"):
        print("usage: python -m recipes.reference [FILE.md]   (no FILE: print the reference; FILE: rewrite its "
              "generated block)", file=sys.stderr)
        sys.exit(0 if argv[0] in ("-h", "--help") else 2)
    path = Path(argv[0])
    text = splice(path.read_text() if path.exists() else "", render())
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    main(sys.argv[1:])
