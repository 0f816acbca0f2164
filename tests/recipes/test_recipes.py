"""Every shipped recipe validates; bad recipes get every problem at once, each naming its key path."""

from pathlib import Path

import pytest

from compress.core.errors import KdtoolError
from recipes.load import list_recipes, load_recipe
from recipes.schema import Recipe


@pytest.mark.parametrize("name", list(list_recipes()))
def test_shipped_recipe_validates(name):
    recipe, path, _ = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# kdtool"), f"{path} must start with the command that runs it"


def test_quickstart_is_first_and_default():
    assert next(iter(list_recipes())) == "quickstart"
    recipe, path, _ = load_recipe(None)
    assert path.name == "quickstart.yaml" and recipe.name == "quickstart"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
teacher: {arch: resnet18, train: {epochs: 1}}
student: {arch: mobilenetv3_small_050}
"""


def test_every_problem_reported_at_once_with_key_paths(tmp_path):
    bad = BASE + "distill: {temperature: 0, alpha: 1.5, temprature: 3}\ndata: {batch_size: -1}\n"
    with pytest.raises(KdtoolError) as e:
        load_recipe(_write(tmp_path, bad))
    msg = e.value.message
    assert "4 problem(s)" in msg
    assert "distill.temperature: Input should be greater than 0" in msg
    assert "distill.alpha: Input should be less than or equal to 1" in msg
    assert "distill.temprature: unknown key (did you mean 'distill.temperature'?)" in msg
    assert "data.batch_size" in msg
    assert e.value.exit_code == 2


def test_unknown_top_level_section_suggests(tmp_path):
    with pytest.raises(KdtoolError, match=r"distil: unknown key \(did you mean 'distill'\?\)"):
        load_recipe(_write(tmp_path, BASE + "distil: {alpha: 0.5}\n"))


def test_wrong_type_and_literal_named(tmp_path):
    with pytest.raises(KdtoolError) as e:
        load_recipe(_write(tmp_path, BASE + "task: {kind: classification}\nquantize: {modes: [fast]}\n"))
    assert "task.kind" in e.value.message and "'classification'" in e.value.message
    assert "quantize.modes.0" in e.value.message and "'fast'" in e.value.message


def test_teacher_needs_weights_or_training(tmp_path):
    text = "name: t\nteacher: {arch: resnet18}\nstudent: {arch: mobilenetv3_small_050}\n"
    with pytest.raises(KdtoolError, match="teacher: the teacher needs a checkpoint"):
        load_recipe(_write(tmp_path, text))


def test_overrides_apply_and_validate(tmp_path):
    p = _write(tmp_path, BASE)
    recipe, _, raw = load_recipe(p, ["distill.temperature=6", "distill.alpha_schedule.kind=linear",
                                     "distill.alpha_schedule.start=0.95", "distill.alpha_schedule.end=0.5",
                                     "distill.alpha_schedule.epochs=20"])
    assert recipe.distill.temperature == 6.0
    assert recipe.distill.alpha_schedule.end == 0.5
    with pytest.raises(KdtoolError, match="distill.temperature"):
        load_recipe(p, ["distill.temperature=-1"])
    with pytest.raises(KdtoolError, match="not key.path=value"):
        load_recipe(p, ["distill.temperature"])


def test_yaml_is_data_not_code(tmp_path):
    p = _write(tmp_path, BASE + "extra: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(KdtoolError, match="not valid YAML"):
        load_recipe(p)


def test_binary_head_width_checked(tmp_path):
    with pytest.raises(KdtoolError, match="task: binary tasks have num_classes 1"):
        load_recipe(_write(tmp_path, BASE + "task: {kind: binary, num_classes: 3}\n"))
