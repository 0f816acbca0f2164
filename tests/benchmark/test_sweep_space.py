"""The sweep's search space, objectives and constraints are checked against the recipe schema before any trial."""

from __future__ import annotations

import copy

import pytest
import yaml

from benchmark.sweep.objectives import parse_constraints, parse_objectives
from benchmark.sweep.space import apply_params, parse_space, read_space, recipe_point
from compress.core.errors import KdtoolError
from recipes.load import RECIPES_DIR


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())


def test_a_space_of_every_kind_parses(raw):
    params = parse_space({"student.kwargs.channels": [[4, 8, 16, 32], [8, 16, 32, 64]],
                          "distill.temperature": {"low": 1.0, "high": 8.0, "log": True},
                          "distill.alpha": {"low": 0.1, "high": 0.9, "step": 0.1},
                          "export.batch": [1, "dynamic"], "student.train.epochs": {"low": 2, "high": 6}}, raw)
    by = {p.path: p for p in params}
    assert by["student.kwargs.channels"].encoded and by["student.kwargs.channels"].optuna_choices()[0] == \
        "[4, 8, 16, 32]"
    assert by["distill.temperature"].log and not by["distill.temperature"].integer
    assert by["student.train.epochs"].integer
    trial = apply_params(raw, params, {"student.kwargs.channels": "[8, 16, 32, 64]", "distill.alpha": 0.2})
    assert trial["student"]["kwargs"]["channels"] == [8, 16, 32, 64] and trial["distill"]["alpha"] == 0.2
    assert raw["student"]["kwargs"]["channels"] == [4, 8, 16, 32]  # the base recipe is not touched


@pytest.mark.parametrize("space, words", [
    ({"distill.temprature": [1.0, 2.0]}, ["distill.temprature", "unknown key", "did you mean 'distill.temperature'"]),
    ({"distil.alpha": [0.1, 0.2]}, ["distil", "did you mean 'distill'"]),
    ({"distill.temperature": {"low": 3.0, "high": 3.0}}, ["empty range", "low 3.0"]),
    ({"distill.temperature": {"low": 5.0, "high": 1.0}}, ["empty range"]),
    ({"distill.alpha": [0.5]}, ["at least two values"]),
    ({"distill.alpha": []}, ["at least two values"]),
    ({"distill.alpha": {"low": 0.1, "high": 1.5}}, ["distill.alpha=1.5", "less than or equal to 1"]),
    ({"distill.temperature": {"low": 0.0, "high": 2.0, "log": True}}, ["log range needs low > 0"]),
    ({"distill.temperature": {"low": 1.0, "high": 2.0, "steps": 0.1}}, ["a range takes low, high"]),
    ({"quantize.modes": [["static"], ["fp4"]]}, ["quantize.modes", "'fp4'"]),
    ({"distill.soft_loss": ["kl", "nosuchloss"]}, ["distill.soft_loss", "nosuchloss"]),
    ({"teacher.arch": ["resnet18", "resnet34"]}, ["teacher", "shared"]),
    ({"distill.alpha": "0.5"}, ["neither a list"]),
])
def test_bad_spaces_are_named(raw, space, words):
    with pytest.raises(KdtoolError) as e:
        parse_space(space, raw)
    text = str(e.value)
    for w in words:
        assert w in text, (w, text)


def test_a_key_another_section_adds_is_validated_like_any_schema_key(raw):
    """Validation goes through the schema, not a list of known keys: any key the schema has works."""
    params = parse_space({"quantize.calibration_samples": {"low": 16, "high": 256}}, raw)
    assert params[0].integer and params[0].low == 16


def test_space_comes_from_the_recipe_or_a_file(raw, tmp_path):
    with pytest.raises(KdtoolError, match="no sweep section"):
        read_space(None, raw)
    with_section = copy.deepcopy(raw)
    with_section["sweep"] = {"distill.alpha": [0.3, 0.5]}
    assert read_space(None, with_section) == {"distill.alpha": [0.3, 0.5]}
    file = tmp_path / "space.yaml"
    file.write_text("sweep:\n  distill.temperature: [2.0, 4.0]\n")
    assert read_space(file, raw) == {"distill.temperature": [2.0, 4.0]}
    with pytest.raises(KdtoolError, match="cannot read"):
        read_space(tmp_path / "missing.yaml", raw)


def test_the_recipe_point_is_enqueued_only_when_inside_the_space(raw):
    inside = parse_space({"distill.temperature": [2.0, 4.0], "distill.alpha": {"low": 0.1, "high": 0.9}}, raw)
    assert recipe_point(raw, inside) == {"distill.temperature": 4.0, "distill.alpha": 0.3}
    outside = parse_space({"distill.temperature": [2.0, 3.0]}, raw)
    assert recipe_point(raw, outside) is None
    defaults = parse_space({"export.batch": ["auto", 1]}, raw)  # left out of the recipe: the schema's default
    assert recipe_point(raw, defaults) == {"export.batch": "auto"}


def test_objectives_and_constraints():
    assert parse_objectives(None) == ("retention", "p50_ms")
    assert parse_objectives(["retention", "p50_ms", "size_mb"])[-1] == "size_mb"
    with pytest.raises(KdtoolError, match="did you mean 'p50_ms'"):
        parse_objectives(["p50ms"])
    with pytest.raises(KdtoolError, match="repeated"):
        parse_objectives(["retention", "retention"])
    (c1, c2) = parse_constraints(["p50_ms<=10", "retention >= 0.97"])
    assert c1.violation(8.0) < 0 < c1.violation(12.0) and c2.violation(0.99) < 0 < c2.violation(0.9)
    assert c1.violation(None) > 0
    with pytest.raises(KdtoolError, match="unknown metric"):
        parse_constraints(["latency<=10"])
    with pytest.raises(KdtoolError, match="NAME<=NUMBER"):
        parse_constraints(["p50_ms<10"])


@pytest.mark.parametrize(("space", "why"), [({"name": ["a", "b"]}, "named by the sweep"),
                                             ({"sweep.x": ["a", "b"]}, "cannot search itself")])
def test_name_and_sweep_keys_get_their_own_hint(raw, space, why):
    with pytest.raises(KdtoolError, match="cannot be searched") as e:
        parse_space(space, raw)
    assert why in e.value.hint and "teacher" not in e.value.hint
