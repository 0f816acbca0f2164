"""CLI basics: every command's --help is instant, the listings print, `init` never overwrites silently."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import typer
from cli_fixtures import REPO, cli, cli_env, error_lines, umask

import kdtool

COMMANDS = sorted(typer.main.get_command(kdtool.app).commands)


def test_every_command_is_listed_in_help():
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert {"run", "distill", "quantize", "export", "benchmark", "ls", "recipes", "init"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    result = cli(command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout and command in result.stdout
    assert "--debug" in result.stdout or command in ("ls", "recipes")


def test_help_is_fast_and_imports_no_torch():
    """`kdtool --help` in a fresh process: no torch/timm import (they take seconds), well under 5 s."""
    code = ("import sys, kdtool\n"
            "try:\n    kdtool.app(['distill', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
            "heavy = ('torch', 'timm', 'onnx', 'executorch', 'coremltools')\n"
            "print(sorted(m for m in heavy if m in sys.modules))")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", "help imported heavy modules"
    assert seconds < 5.0, f"--help took {seconds:.1f} s"


def test_ls_losses_lists_the_registry():
    from compress.distill.losses import LOSSES

    result = cli("ls", "losses")
    assert result.exit_code == 0, result.stderr
    names = [ln.split()[0] for ln in result.stdout.splitlines() if ln.strip()]
    assert names == list(LOSSES.describe())
    assert "kl" in names and len(names) >= 5


def test_ls_unknown_list_is_exit_2_naming_the_choices():
    result = cli("ls", "lossess")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdtool: error: unknown list 'lossess' (hint: one of ")
    assert "losses" in lines[0] and "exporters" in lines[0]
    assert "Traceback" not in result.stderr


def test_recipes_lists_quickstart_first():
    result = cli("recipes")
    assert result.exit_code == 0
    first = result.stdout.splitlines()[0]
    assert first.split()[0] == "quickstart" and "kdtool run" in first


def test_init_copies_then_refuses_to_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shipped = (REPO / "recipes" / "quickstart.yaml").read_bytes()
    first = cli("init", "mine", "--from", "quickstart")
    assert first.exit_code == 0, first.stderr
    dest = tmp_path / "mine.yaml"
    copied = dest.read_bytes().split(b"\n", 1)
    assert copied[0] == b"# kdtool run mine.yaml"  # the header names the command for the copy
    expected = shipped.split(b"\n", 1)[1].replace(b"\nname: quickstart\n", b"\nname: mine\n")  # its own run folder
    assert b"\nname: mine\n" in expected and copied[1] == expected
    assert oct(dest.stat().st_mode & 0o777) == oct(0o666 & ~umask())

    dest.write_text("# my edits\n")
    again = cli("init", "mine", "--from", "quickstart")
    assert again.exit_code == 2
    lines = error_lines(again.stderr)
    assert len(lines) == 1 and "mine.yaml exists" in lines[0] and "--force" in lines[0], again.stderr
    assert dest.read_text() == "# my edits\n", "overwritten without --force"
    assert "Traceback" not in again.stderr

    forced = cli("init", "mine", "--from", "quickstart", "--force")
    assert forced.exit_code == 0 and dest.read_bytes().split(b"\n", 1)[1] == expected
    assert [p.name for p in tmp_path.iterdir()] == ["mine.yaml"], "temporary files left behind"


def test_init_unknown_source_recipe_is_exit_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("init", "mine", "--from", "nosuchrecipe")
    assert result.exit_code == 2
    assert "nosuchrecipe" in error_lines(result.stderr)[0]
    assert list(tmp_path.iterdir()) == []

