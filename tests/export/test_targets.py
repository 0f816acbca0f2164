"""The one target → formats table: every preset artifact ships to its target, and targets agree."""

from __future__ import annotations

import pytest

from export.registry import EXPORTERS
from export.targets import PRESETS, TARGET_FORMATS, TARGETS, plan


def test_targets_presets_and_shipping_table_name_the_same_targets():
    assert set(TARGETS) == set(PRESETS) == set(TARGET_FORMATS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_preset_artifact_ships_to_its_target(target):
    import export.formats  # noqa: F401  (registers every exporter)

    for job in plan([target]):
        precisions = TARGET_FORMATS[target].get(job.format, ())
        assert precisions is None or job.precision in precisions, f"{target} preset makes unshippable {job}"
        assert job.format in EXPORTERS
