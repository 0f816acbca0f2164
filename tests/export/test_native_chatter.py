"""Loading a .pte prints ExecuTorch's C++ cpuinfo/threadpool lines; kdtool keeps them off the terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cli_fixtures import REPO, cli_env

CODE = """
import sys
from export.formats import get_runtime
get_runtime("executorch").load(sys.argv[1], 2)
print("loaded")
"""


def test_executorch_load_is_quiet_unless_debug(exported):
    pytest.importorskip("executorch.runtime")
    artifact = exported("executorch")[0]
    assert artifact.status == "ok", artifact.reason
    runs = {debug: subprocess.run([sys.executable, "-c", CODE, str(artifact.path)], cwd=REPO, capture_output=True,
                                  text=True, timeout=120, env=cli_env(**({"KDTOOL_DEBUG": "1"} if debug else {})))
            for debug in (False, True)}
    assert all("loaded" in r.stdout for r in runs.values()), runs[False].stderr
    if "threadpool" not in runs[True].stderr + runs[True].stdout:
        pytest.skip("this ExecuTorch build prints nothing on load")
    assert "threadpool" not in runs[False].stderr + runs[False].stdout
    assert "cpuinfo" not in runs[False].stderr + runs[False].stdout
