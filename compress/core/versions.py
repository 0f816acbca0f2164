"""Installed package versions: the one lookup behind the quantized models' meta, the artifacts'
manifests and the report's environment fingerprint."""

from __future__ import annotations

import platform
from importlib import metadata


def package_versions(packages: tuple[str, ...] | list[str], missing: str | None = "not installed") -> dict[str, str]:
    """`{"python": ..., package: version}` for `packages`, in order.

    Args:
        packages: distribution names (e.g. "torch", "onnxruntime").
        missing: the value recorded for a package that is not installed; None leaves it out.
    """
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if missing is not None:
                out[name] = missing
    return out
