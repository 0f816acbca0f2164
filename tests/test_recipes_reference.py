"""docs/recipes.md is what `python -m recipes.reference` generates from the schema: it cannot drift."""

from __future__ import annotations

from pathlib import Path

from recipes.reference import BEGIN, END, key_paths, render, splice

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"


def test_docs_recipes_md_is_the_generated_reference():
    text = DOC.read_text()
    assert BEGIN in text and END in text, "docs/recipes.md lost its generated block's markers"
    assert splice(text, render()) == text, "docs/recipes.md drifted: run `python -m recipes.reference docs/recipes.md`"


def test_every_schema_key_is_in_the_reference():
    """Each key has a row, or its section is rendered by reference to an identical one ("The same keys")."""
    block = render()
    missing = [k for k in key_paths() if f"`{k}`" not in block
               and f"### `{k.rsplit('.', 1)[0]}`" not in block]
    assert not missing, missing
    assert "`distill.train.lr`" not in block and "### `distill.train`" in block


def test_splice_replaces_only_the_block():
    doc = f"intro\n\n{BEGIN}\nold\n{END}\nafter\n"
    assert splice(doc, f"{BEGIN}\nnew\n{END}\n") == f"intro\n\n{BEGIN}\nnew\n{END}\nafter\n"
