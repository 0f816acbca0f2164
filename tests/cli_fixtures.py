"""Helpers shared by the tests that run the CLI: tiny recipes, in-process and subprocess CLI runs.

The tiny recipe trains timm's `test_efficientnet` (0.1 M params) on 120 real digits at 16 px: a
stage takes about a second on one core, so whole CLI runs fit in a test.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "name": "tiny",
    "task": {"kind": "multiclass", "num_classes": 10},
    "data": {"source": "digits", "image_size": 16, "channels": 1, "limit": 120, "batch_size": 32},
    "teacher": {"arch": "test_resnet", "train": {"epochs": 0}},
    "student": {"arch": "test_efficientnet", "train": {"epochs": 2, "lr": 0.01, "scheduler": "cosine"}},
    "distill": {"temperature": 4.0, "alpha": 0.5, "train": {"epochs": 1, "lr": 0.01, "init": "baseline"}},
    "export": {"targets": ["server"], "formats": ["torchscript"], "int8": False, "parity_samples": 4},
}


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base` (a value of None deletes the key)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def write_recipe(folder: Path, update: dict[str, Any] | None = None, name: str = "recipe.yaml") -> Path:
    """Write the tiny recipe (deep-merged with `update`) to `folder/name`."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump(merge(TINY, update or {}), sort_keys=False))
    return path


def cli(*args: str):
    """Run the kdtool CLI in this process (fast: imports are shared); returns click's Result.

    `result.exit_code`, `result.stdout`, `result.stderr` and `result.exception` are what a user sees.
    """
    from typer.testing import CliRunner

    import kdtool

    return CliRunner().invoke(kdtool.app, [str(a) for a in args])


def run_recipe(recipe: Path, out: Path, sets: list[str]):
    """`kdtool run RECIPE --out OUT --set S...` in this process; returns (click's Result, seconds)."""
    import time

    args: list[str] = ["run", str(recipe), "--out", str(out)]
    for item in sets:
        args += ["--set", item]
    start = time.perf_counter()
    result = cli(*args)
    return result, time.perf_counter() - start


def cli_env(**extra: str) -> dict[str, str]:
    """Environment of a subprocess CLI run: quiet, one thread, no warnings, repo on the path."""
    env = dict(os.environ)
    env.update({"KDTOOL_QUIET": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    env.update(extra)
    return env


def run_kdtool(*args: str, cwd: Path | None = None, timeout: float = 240, driver: Path | None = None,
               **env: str) -> subprocess.CompletedProcess:
    """Run `python kdtool.py ARGS` (or `python DRIVER ARGS`) in a fresh process, as a user would."""
    script = str(driver) if driver is not None else str(REPO / "kdtool.py")
    return subprocess.run([sys.executable, script, *[str(a) for a in args]], cwd=cwd or REPO,
                          env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def files_under(folder: Path) -> list[str]:
    """Every regular file below `folder` (relative paths, sorted); [] when it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def error_lines(stderr: str) -> list[str]:
    """The `kdtool: error:` lines of a run's stderr."""
    return [ln for ln in stderr.splitlines() if ln.startswith("kdtool: error:")]


def umask() -> int:
    """The process umask (set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
