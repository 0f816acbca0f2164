"""Which int8 ExecuTorch model the export takes when both static PTQ and QAT ran: the better-scoring one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from compress.core.tasks import Task
from compress.quant.stage import best_quantized


def _ctx(tmp_path, kind: str, num: int, scores: dict[str, float | None]):
    for mode, value in scores.items():
        folder = tmp_path / "quantized" / mode / "executorch"
        folder.mkdir(parents=True)
        metrics = {} if value is None else {Task(kind, num).primary_metric: value}
        (folder / "meta.json").write_text(json.dumps({"evaluation": {"metrics": metrics}}))
    run = SimpleNamespace(stage=lambda *parts: tmp_path.joinpath(*parts))
    return SimpleNamespace(run=run, task=Task(kind, num))


@pytest.mark.parametrize(("scores", "expected"), [
    ({"static": 0.98, "qat": 0.99}, "qat"),
    ({"static": 0.99, "qat": 0.98}, "static"),
    ({"static": 0.99, "qat": 0.99}, "static"),  # a tie keeps the one that needs no training
    ({"qat": 0.97}, "qat"),
    ({"static": None, "qat": 0.5}, "qat"),  # a model that could not be scored loses
])
def test_higher_metric_wins(tmp_path, scores, expected):
    folder, mode = best_quantized(_ctx(tmp_path, "multiclass", 10, scores), "executorch", ("static", "qat"))
    assert mode == expected and folder == tmp_path / "quantized" / expected / "executorch"


def test_error_metrics_prefer_the_lower_value(tmp_path):
    ctx = _ctx(tmp_path, "regression", 2, {"static": 0.30, "qat": 0.20})
    assert best_quantized(ctx, "executorch", ("static", "qat"))[1] == "static"  # CCC (primary): higher wins
    ctx.task = SimpleNamespace(primary_metric="mae")
    for mode, value in (("static", 0.30), ("qat", 0.20)):
        (tmp_path / "quantized" / mode / "executorch" / "meta.json").write_text(
            json.dumps({"evaluation": {"metrics": {"mae": value}}}))
    assert best_quantized(ctx, "executorch", ("static", "qat"))[1] == "qat"


def test_nothing_quantized(tmp_path):
    assert best_quantized(_ctx(tmp_path, "multiclass", 10, {}), "executorch", ("static", "qat")) == (None, None)


def test_a_mode_hashes_only_its_own_settings():
    """Changing QAT's lr redoes QAT only; changing the calibration size redoes static PTQ only."""
    from compress.core.runfolder import inputs_hash
    from compress.quant.stage import _mode_settings
    from recipes.schema import QuantizeConfig

    base = QuantizeConfig(modes=["dynamic", "static", "qat"])
    new_lr = base.model_copy(update={"qat": base.qat.model_copy(update={"lr": 3e-5})})
    new_calib = base.model_copy(update={"calibration_samples": 64})

    def h(cfg, mode, backend="executorch"):
        return inputs_hash(_mode_settings(cfg, mode, backend), mode)

    assert h(new_lr, "qat") != h(base, "qat")
    assert h(new_lr, "static") == h(base, "static") and h(new_lr, "dynamic") == h(base, "dynamic")
    assert h(new_calib, "static") != h(base, "static") and h(new_calib, "qat") == h(base, "qat")
    # the ONNX activation type redoes static ONNX only; left unset, the hash is the one older runs have
    signed = base.model_copy(update={"onnx_activations": "int8"})
    assert h(signed, "static", "onnx") != h(base, "static", "onnx")
    assert h(signed, "static", "executorch") == h(base, "static", "executorch")
    # the accuracy-aware floor (on by default: 0.99) may change the static model, so it is in the hash
    assert h(base, "static", "onnx") == inputs_hash({"calibration_samples": 256, "min_retention": 0.99}, "static")
    for change in ({"min_retention": 0.95}, {"min_retention": None}, {"calibration_method": "minmax"}):
        changed = base.model_copy(update=change)
        assert h(changed, "static") != h(base, "static") and h(changed, "qat") == h(base, "qat"), change


def test_recipe_floor_and_calibration_reach_the_static_config():
    from compress.quant.quantize import make_config
    from compress.quant.stage import _mode_settings
    from recipes.schema import QuantizeConfig

    default = make_config("static", backend="executorch", **_mode_settings(QuantizeConfig(), "static", "executorch"))
    assert default.min_retention == 0.99 and default.calibration_method is None
    chosen = QuantizeConfig(min_retention=0.9, calibration_method="minmax")
    config = make_config("static", backend="onnx", **_mode_settings(chosen, "static", "onnx"))
    assert config.min_retention == 0.9 and config.calibration_method == "minmax"
