"""Optional format packages (pip extras): whether they are installed, and the hint when not.

A format whose packages are missing is skipped with the install hint, as TensorRT is without
CUDA, and every other format is still made. The check finds the packages without importing them
(litert-torch takes seconds to import).
"""

from __future__ import annotations

import importlib.util
import sys


def importable(name: str) -> bool:
    """Whether the top-level package `name` can be imported (a `None` in `sys.modules` says no)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    return importlib.util.find_spec(name) is not None


def missing_extra(extra: str, packages: tuple[str, ...], what: str) -> str | None:
    """None when every package of `extra` is installed, else why `what` cannot run, with the install hint.

    Args:
        extra: the pip extra that installs them (`litert`, `openvino`).
        packages: their import names.
        what: the thing that needs them, e.g. "LiteRT export".
    """
    for name in packages:
        if not importable(name):
            return f'{what} needs `pip install "kdtool[{extra}]"` ({name} is not installed)'
    return None
