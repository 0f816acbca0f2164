"""What the CLI tells the user: `init` names the run after the new file, Ctrl-C says how to continue,
hints name the recipe and --out."""

from __future__ import annotations

import pytest
import typer
import yaml
from cli_fixtures import cli, error_lines, write_recipe


def test_init_names_the_run_after_the_new_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("init", "my detector", "--from", "deepfake")
    assert result.exit_code == 0, result.stderr
    recipe = yaml.safe_load((tmp_path / "my detector.yaml").read_text())
    assert recipe["name"] == "my_detector"
    assert (tmp_path / "my detector.yaml").read_text().startswith("# kdtool run my detector.yaml")


def test_ctrl_c_says_how_to_continue(capsys):
    import kdtool

    with pytest.raises(typer.Exit) as info:
        kdtool._fail(KeyboardInterrupt(), debug=False)
    assert info.value.exit_code == 130
    assert "--resume" in capsys.readouterr().err


def test_hints_name_the_recipe_and_out(tmp_path):
    recipe = write_recipe(tmp_path)
    result = cli("benchmark", recipe, "--out", tmp_path / "elsewhere")
    assert result.exit_code == 2
    line = error_lines(result.stderr)[0]
    assert f"`kdtool distill {recipe} --out {tmp_path / 'elsewhere'}`" in line
