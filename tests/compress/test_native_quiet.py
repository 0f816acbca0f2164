"""Native prints (C/C++ writing to fds 1 and 2) stay off the terminal unless --debug."""

from __future__ import annotations

import subprocess
import sys

from cli_fixtures import REPO, cli_env

CODE = """
import ctypes, os
from compress.core.native import quiet_native
libc = ctypes.CDLL(None)
seen = []
with quiet_native(seen):
    libc.printf(b"[cpuinfo_utils.cpp:87] Failed to open midr file\\n")
    os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 2 threads.\\n")
libc.printf(b"after-stdout\\n")
libc.fflush(None)
os.write(2, b"after-stderr\\n")
print("captured:", "midr" in seen[0] if seen else "nothing", flush=True)
"""


def _run(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CODE], cwd=REPO, env=cli_env(**env), capture_output=True,
                          text=True, timeout=60)


def test_native_prints_are_redirected_and_captured():
    out = _run()
    assert out.returncode == 0, out.stderr
    assert "midr" not in out.stdout and "threadpool" not in out.stderr
    assert "after-stdout" in out.stdout and "after-stderr" in out.stderr  # descriptors restored
    assert "captured: True" in out.stdout


def test_debug_lets_native_prints_through():
    out = _run(KDTOOL_DEBUG="1")
    assert "midr" in out.stdout and "threadpool" in out.stderr
    assert "captured: nothing" in out.stdout
