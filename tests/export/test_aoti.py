"""AOTInductor: compiles C++ (~40 s for a tiny model on 2 shared cores), so it is a slow test."""

from __future__ import annotations

import pytest
from export_fixtures import context, tiny_convnet


@pytest.mark.slow
def test_aoti_package_runs_and_matches(tmp_path, example, real_inputs):
    from export.formats.aoti.exporter import read_metadata
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, formats=["aoti"], spec=context(),
                          inputs=real_inputs)
    assert art.status == "ok" and art.path.suffix == ".pt2", art.reason
    assert art.parity.status == "passed" and art.parity.max_abs < 1e-5
    assert read_metadata(art.path)["kdtool.name"] == "student_kd"
