"""`kdtool export` on a recipe: LiteRT and OpenVINO int8 calibrated on the recipe's calibration samples."""

from __future__ import annotations

import json

import pytest
from cli_fixtures import cli, write_recipe

from export.extras import missing_extra

pytestmark = pytest.mark.skipif(
    missing_extra("litert", ("litert_torch", "ai_edge_litert"), "LiteRT") is not None
    or missing_extra("openvino", ("openvino", "nncf"), "OpenVINO") is not None,
    reason='pip install "kdtool[litert,openvino]"')


@pytest.mark.slow
def test_kdtool_export_calibrates_litert_and_openvino_int8_from_the_recipe(tmp_path):
    recipe = write_recipe(tmp_path, {
        "quantize": {"modes": ["dynamic"], "calibration_samples": 40, "min_retention": 0.9},
        "export": {"targets": ["android", "server"], "formats": ["litert", "openvino"], "int8": True}})
    assert cli("distill", recipe, "--out", tmp_path / "runs").exit_code == 0
    result = cli("export", recipe, "--out", tmp_path / "runs")
    assert result.exit_code in (0, 4), result.stderr  # 4: an int8 file of this 2-epoch student failed parity
    meta = json.loads((tmp_path / "runs/tiny/export/meta.json").read_text())
    rows = {(a["target"], a["format"], a["precision"]): a for a in meta["artifacts"]}
    # the presets' int8 rows, and each format's fp32 on both targets (--format adds it where no preset has it)
    assert set(rows) == {("android", "litert", "fp32"), ("android", "litert", "int8"), ("android", "openvino", "fp32"),
                         ("server", "openvino", "fp32"), ("server", "openvino", "int8"), ("server", "litert", "fp32")}
    assert all(rows[(t, f, "fp32")]["status"] == "ok" for t, f, p in rows if p == "fp32")
    assert rows[("android", "litert", "int8")]["info"]["calibration_samples"] == 40
    int8 = rows[("server", "openvino", "int8")]["info"]["int8"]
    assert int8["calibration_samples"] == 40 and int8["validation_samples"] == 30  # the whole validation split
