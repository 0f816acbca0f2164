"""The docs stay true: every `kdtool …` line names a real verb and real options, every recipe key exists,
and no page carries history (commit hashes, re-run accounts, dates outside the rendered results).

The verbs and options are read from the typer app in kdtool.py and the keys from the recipe schema, so a
command or key added there is accepted here without editing this test.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer.main

import kdtool
from recipes.reference import key_paths
from recipes.schema import Recipe

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SECTIONS = tuple(Recipe.model_fields)
KEY = re.compile(r"^([a-z_]+(?:\.[a-z_0-9]+)+)(?:\s*[=:].*)?$")
FENCE = re.compile(r"```.*?```", re.S)
HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
INVOCATION = re.compile(r"^(\S+=\S+\s+)*kdtool\s|&&\s*kdtool\s|^(torchrun|python)\b.*\skdtool\.py\s")
"""A code-block line that runs kdtool (a card's `kdtool report: NAME` title is output, not a command)."""
PLACEHOLDER = "key.path"
"""`--set key.path=value`: the generic form, not a key."""
RESULTS_BLOCK = re.compile(r"<!-- BEGIN RESULTS.*?<!-- END RESULTS -->", re.S)


def _commands() -> dict[str, set[str]]:
    """Verb → every option string it takes (typer app → click group)."""
    group = typer.main.get_command(kdtool.app)
    return {name: {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)} | {"--help"}
            for name, cmd in group.commands.items()}


def _pages_text() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in PAGES]


def _command_lines(text: str) -> list[str]:
    """`kdtool …` invocations: lines of code blocks, and inline code spans in prose and tables."""
    found = []
    for block in FENCE.findall(text):
        for line in block.splitlines()[1:]:
            line = line.removeprefix("$ ").strip()
            if INVOCATION.search(line + " ") and not line.startswith("kdtool report:"):
                found.append(line)
    prose = FENCE.sub("", text).replace("\\|", "|")
    found += [s for s in re.findall(r"`([^`\n]+)`", prose) if re.match(r"(\S+=\S+\s+)*kdtool(\.py)?\s", s)]
    return found


def _parse(line: str) -> tuple[str | None, list[str]]:
    """The verb and the option tokens of one `kdtool …` invocation (placeholders and values dropped)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        tokens = line.split("#")[0].split()
    start = next(i for i, t in enumerate(tokens) if t in ("kdtool", "kdtool.py") or t.endswith("/kdtool.py"))
    tokens = tokens[start + 1:]
    for stop in ("|", "&&", ";", ">"):
        tokens = tokens[:tokens.index(stop)] if stop in tokens else tokens
    tokens = [t.strip("[]") for t in tokens]
    if tokens and tokens[0] in ("…", "...", "VERB"):  # `kdtool …`: any command
        return None, []
    verb = tokens[0] if tokens and not tokens[0].startswith("-") else None
    return verb, tokens[1:] if verb else tokens


def test_docs_name_commands():
    pages = {p.name: _command_lines(t) for p, t in _pages_text()}
    assert pages["README.md"], "no kdtool command line found in README.md: the extraction broke"
    assert sum(map(len, pages.values())) > 30


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_kdtool_line_names_a_real_verb_and_real_options(page):
    commands = _commands()
    bad = []
    for line in _command_lines(page.read_text()):
        verb, rest = _parse(line)
        if verb is None:
            bad += [f"{line!r}: no verb"] if rest and rest[0] != "--help" else []
            continue
        if verb not in commands:
            bad.append(f"{line!r}: no command {verb!r} (known: {', '.join(sorted(commands))})")
            continue
        options = [t.split("=", 1)[0] for t in rest if t.startswith("-") and not re.match(r"^-\d", t)]
        bad += [f"{line!r}: {verb} has no option {o}" for o in options if o not in commands[verb]]
    assert not bad, "\n".join(bad)


def _is_module(dotted: str) -> bool:
    """`export.verify.ReferenceCache` names code, not a recipe key."""
    parts = dotted.split(".")
    return any(importlib.util.find_spec(".".join(parts[:n])) is not None and n > 1 for n in range(len(parts), 1, -1)
               if _safe_spec(".".join(parts[:n])))


def _safe_spec(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _recipe_keys(text: str) -> list[str]:
    """Key paths written in `--set a.b=…` and in backticks (`a.b.c`, `a.b: value`) under a recipe section."""
    keys = [k for k in re.findall(r"--set\s+['\"]?([a-z_]+(?:\.[a-z_0-9]+)+)=", text) if k != PLACEHOLDER]
    for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", text)):
        if "unknown key" in span:  # a quoted error message about a mistyped key
            continue
        match = KEY.match(span.strip())
        if match and match.group(1).split(".")[0] in SECTIONS and not _is_module(match.group(1)):
            keys.append(match.group(1))
    return keys


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_key_mentioned_exists(page):
    known = key_paths()
    unknown = sorted({k for k in _recipe_keys(page.read_text()) if k not in known})
    assert not unknown, f"{page.name} names recipe keys the schema does not have: {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_history_in_the_docs(page):
    text = RESULTS_BLOCK.sub("", page.read_text())
    problems = [f"commit hash {h}" for h in HASH.findall(text)]
    problems += [f"re-run account {m!r}" for m in re.findall(r"(?i)\bre-?run (?:at|on)\b[^.\n]*", text)]
    problems += [f"date {d} (dates belong to results files)" for d in re.findall(r"\b20\d\d-\d\d-\d\d\b", text)]
    assert not problems, f"{page.name}: " + "; ".join(problems)


def test_the_checks_catch_what_they_should():
    commands = _commands()
    verb, rest = _parse("kdtool export my.yaml --target android --force  # a comment's apostrophe")
    assert verb == "export" and {"--target", "--force"} <= commands[verb] and "--nope" not in commands[verb]
    assert _parse("COLUMNS=80 kdtool run | cat")[0] == "run"
    assert _recipe_keys("--set key.path=value `distill.temprature: unknown key` `distill.temperature` "
                        "`quantize.onnx_activations: int8` --set data.nope=1 "
                        "`export.verify.ReferenceCache` `compress.core.tasks`") == [
        "data.nope", "distill.temperature", "quantize.onnx_activations"]
    assert HASH.findall("at commit e9e4601, 1e-4, 2026") == ["e9e4601"]


def test_the_docs_the_code_cites_exist():
    """Code cites docs/<page>.md (never a DESIGN.md that the repo does not have)."""
    code = [p for d in ("compress", "export", "benchmark", "recipes") for p in (REPO / d).rglob("*.py")]
    code += [REPO / "kdtool.py", REPO / "pyproject.toml"]
    bad = []
    for path in code:
        text = path.read_text()
        bad += [f"{path.name}: cites DESIGN.md"] if "DESIGN.md" in text else []
        bad += [f"{path.name}: cites missing {m}" for m in re.findall(r"docs/[\w/.-]+\.md", text)
                if not (REPO / m).exists()]
    assert not bad, bad
