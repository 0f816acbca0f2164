"""Arguments before work: a bad CLI argument or recipe is named in one line, exit 2, before torch loads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fixtures import cli_env, error_lines

DRIVER = ("import sys, kdtool\n"
          "try:\n    kdtool.app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
          "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', code)")


def _kdtool_light(tmp_path: Path, *args: str) -> tuple[str, str]:
    """Run the CLI in a fresh process; returns (the error line, 'torch (not) loaded <exit code>')."""
    out = subprocess.run([sys.executable, "-c", DRIVER, *args, "--out", str(tmp_path / "runs")], cwd=tmp_path,
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    lines = error_lines(out.stderr)
    assert len(lines) == 1, out.stderr
    return lines[0], out.stdout.strip().splitlines()[-1]


def _bad_baseline(tmp_path: Path, kind: str) -> str:
    if kind == "missing":
        return str(tmp_path / "broken.json")
    if kind == "folder":
        return str(tmp_path)
    path = tmp_path / "report.json"
    path.write_text("{not json" if kind == "not json" else json.dumps({"schema": "other/1"}))
    return str(path)


@pytest.mark.parametrize(("args", "named"), [
    (["export", "--target", "tablet"], "--target 'tablet': unknown target"),
    (["export", "--format", "onnx,tflite"], "--format 'tflite': unknown format"),
    (["benchmark", "--min-retention", "97"], "--min-retention 97.0"),
    (["benchmark", "--max-regression", "-0.1"], "--max-regression -0.1"),
    (["run", "no_such_recipe.yaml"], "recipe no_such_recipe.yaml not found"),
    (["distill", "--set", "distill.temperature=hot"], "distill.temperature"),
    (["quantize", "--set", "distill.temprature=4"], "distill.temprature: unknown key"),
    (["run", "--set", "student.checkpoint=."], "student.checkpoint . is a folder"),
    (["run", "--set", "teacher.pretrained_file=."], "teacher.pretrained_file . is a folder"),
])
def test_bad_argument_is_named_before_any_heavy_import(tmp_path, args, named):
    line, state = _kdtool_light(tmp_path, *args)
    assert named in line
    assert state == "torch not loaded 2"


@pytest.mark.parametrize(("kind", "named"), [("missing", "does not exist"), ("folder", "is a folder"),
                                             ("not json", "is not valid JSON"), ("schema", "schema is 'other/1'")])
def test_bad_baseline_is_named_not_the_missing_model(tmp_path, kind, named):
    """Before: "... has no distilled student" (the run folder was looked up first)."""
    baseline = _bad_baseline(tmp_path, kind)
    line, state = _kdtool_light(tmp_path, "benchmark", "--baseline", baseline)
    assert named in line and "distilled student" not in line
    assert state == "torch not loaded 2"


def test_checkpoint_folder_says_folder_where_models_load(tmp_path):
    from compress.core.errors import KdtoolError
    from compress.models.weights import read_state_dict

    with pytest.raises(KdtoolError, match="is a folder"):
        read_state_dict(tmp_path, "teacher")


def test_format_names_match_the_registered_exporters():
    """The light list `check_names` uses (format packages with an exporter, read from disk) is the registry's."""
    import export.formats  # noqa: F401
    from export.registry import EXPORTERS
    from export.targets import format_names

    assert set(format_names()) == set(EXPORTERS.describe()) and len(format_names()) >= 6


def test_help_reads_like_a_persons_cli():
    """Flags show no `<bool>`, options name their value (`--target TARGET`), never `<list[str]>`."""
    import typer
    from cli_fixtures import cli

    import kdtool

    for command in sorted(typer.main.get_command(kdtool.app).commands):
        text = cli(command, "--help").stdout
        assert "<bool>" not in text and "<list[str]>" not in text, command
    export_help = cli("export", "--help").stdout
    assert "--target TARGET" in export_help and "--format FORMATS" in export_help
    assert "--wide" in cli("report", "--help").stdout


@pytest.mark.parametrize(("flag", "level"), [(None, "ERROR"), ("-v", "INFO"), ("--debug", "WARNING")])
def test_verbose_shows_library_logs(tmp_path, flag, level):
    code = ("import logging, sys, kdtool\n"
            f"sys.argv = ['kdtool', 'run'{', ' + repr(flag) if flag else ''}]\n"
            "kdtool._quiet_libraries()\n"
            "print(logging.getLevelName(logging.getLogger('executorch').getEffectiveLevel()))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.strip() == level, out.stderr
