"""Every registered exporter and runtime, tested for free (timm's pattern), and recipe names checked
against the registries right after loading (exit code 2, the known names listed)."""

from __future__ import annotations

import pytest

from compress.core.errors import EXIT_BAD_INPUT, KdtoolError
from export.names import check_names, registries
from recipes.schema import Recipe

REG = registries()


@pytest.mark.parametrize("name", sorted(REG["format"]))
def test_every_exporter_has_a_registered_runtime(name):
    exporter = REG["format"].get(name)()
    assert exporter.runtime in REG["runtime"], f"{name} exports for unregistered runtime {exporter.runtime!r}"


@pytest.mark.parametrize("name", sorted(REG["runtime"]))
def test_every_runtime_says_whether_it_runs_here(name):
    reason = REG["runtime"].get(name)().available()
    assert reason is None or (isinstance(reason, str) and reason.strip()), f"{name}.available() gave {reason!r}"


def _recipe(**sections) -> Recipe:
    return Recipe(name="names", teacher={"arch": "resnet10t", "pretrained": True}, student={"arch": "resnet10t"},
                  **sections)


@pytest.mark.parametrize(("sections", "key"), [
    ({"data": {"source": "digitz"}}, "data.source: unknown data source 'digitz'"),
    ({"distill": {"soft_loss": "kll"}}, "distill.soft_loss: unknown KD loss 'kll'"),
    ({"distill": {"terms": [{"name": "fitnet"}, {"name": "atention"}]}}, "distill.terms[1].name: unknown KD loss"),
    ({"export": {"formats": ["onnx", "tflite"]}}, "export.formats[1]: unknown exporter 'tflite'"),
])
def test_unknown_names_fail_after_loading_listing_the_known(sections, key):
    with pytest.raises(KdtoolError) as e:
        check_names(_recipe(**sections))
    assert str(e.value).startswith(key) and e.value.exit_code == EXIT_BAD_INPUT
    assert "known:" in e.value.hint


def test_registered_names_pass():
    check_names(_recipe(data={"source": "synthetic_images"}, distill={"soft_loss": "none", "terms": [{"name": "rkd"}]},
                        export={"formats": sorted(REG["format"])}))
