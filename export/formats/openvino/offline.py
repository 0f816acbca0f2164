"""OpenVINO without its usage telemetry: kdtool runs offline and forks its own workers.

Unless a user opted out, importing `openvino` (its converter package) and running
`openvino.convert_model` or NNCF send Google Analytics events from a forked process and write a
client id under `~/intel`. Every OpenVINO import and call of kdtool goes through `no_telemetry`,
which sets the switches both packages document for CI machines: `CI=true` (openvino-telemetry
declines where the caller asks it to in CI, as OpenVINO's converter does) and `NNCF_CI` (NNCF uses
its stub; read when NNCF is first imported). The user's environment is restored on exit. The
import-time event of `openvino.tools.ovc` is sent with the consent read from the opt-in file, so
the first import happens inside as well (`import_openvino`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO's converter and NNCF from sending usage telemetry while inside.

    Unless a user opted out, `openvino.convert_model` and NNCF send Google Analytics events from a
    forked process and write a client id under `~/intel`. kdtool runs offline and forks its own
    workers (`export.lowering`), so it uses the switches both document for CI machines: `CI=true`
    (openvino-telemetry declines, as OpenVINO's converter asks it to in CI) and `NNCF_CI` (NNCF uses
    its stub; read when NNCF is first imported). The user's environment is restored on exit.
    """
    saved = {key: os.environ.get(key) for key in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_openvino() -> Any:
    """`import openvino` with telemetry off (the first import sends an event otherwise)."""
    with no_telemetry():
        import openvino

    return openvino
