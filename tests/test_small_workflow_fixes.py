"""Small things seen in real use (issue 19.8): `init` names the run after the new file, Ctrl-C says how to
continue, hints name the recipe and --out, a failed row keeps the whole reason and its cause."""

from __future__ import annotations

import pytest
import typer
import yaml
from reliability_fixtures import cli, error_lines, write_recipe


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


def test_a_failed_row_keeps_the_whole_first_line_and_the_cause():
    from benchmark.measure import failure_reason
    from compress.core.errors import ExportError

    long = ("ExecuTorch cannot load /a/very/long/path/" + "x" * 300
            + "/student_kd.fp16.pte: Backend CoreMLBackend is not registered")
    reason = failure_reason(ExportError(long, "run it where CoreMLBackend is built in"))
    assert reason.startswith(long) and reason.endswith("(run it where CoreMLBackend is built in)")
    try:
        try:
            raise OSError("Backend CoreMLBackend is not registered")
        except OSError as cause:
            raise RuntimeError("Failed to load method forward\nsecond line") from cause
    except RuntimeError as e:
        assert failure_reason(e) == ("RuntimeError: Failed to load method forward "
                                     "(cause: Backend CoreMLBackend is not registered)")


def test_a_pte_naming_an_unregistered_delegate_is_named(tmp_path):
    from export.formats.executorch.runtime import missing_backends

    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\x00ET12...CoreMLBackend\x00...XnnpackBackend\x00")
    assert missing_backends(pte, ["XnnpackBackend"]) == ["CoreMLBackend"]
    assert missing_backends(pte, ["XnnpackBackend", "CoreMLBackend"]) == []
