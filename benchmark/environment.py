"""The environment fingerprint stored with every report: which machine and which versions.

Latency is only comparable between runs on the same CPU, thread count and library versions, and
INT8 speed depends on CPU features (AVX-512 VNNI, AMX), so all of them go into `report.json`.
Versions come from `importlib.metadata` (no heavy backend is imported).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

PACKAGES = ("torch", "torchvision", "timm", "torchao", "onnx", "onnxruntime", "onnxscript", "executorch",
            "coremltools", "torchmetrics", "numpy", "tensorrt", "litert-torch", "ai-edge-litert", "openvino", "nncf")
"""Packages whose versions are recorded."""

CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
             "neon", "asimd", "asimddp", "i8mm", "sve")
"""CPU features that change which kernels (notably INT8) a runtime can use."""


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (Linux), else empty."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if info:
                        break
                    continue
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """A human-readable CPU name ("Intel(R) Xeon(R) ...", "Apple M2", ...)."""
    info = _cpuinfo()
    name = info.get("model name") or info.get("Model") or info.get("Hardware")
    if not name and sys.platform == "darwin":
        import subprocess

        try:
            name = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            name = ""
    return name or platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list[str]:
    """The CPU_FLAGS this CPU has (from /proc/cpuinfo; on Apple silicon, NEON is assumed)."""
    info = _cpuinfo()
    have = set((info.get("flags") or info.get("Features") or "").split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        have |= {"neon", "asimd"}
    return [f for f in CPU_FLAGS if f in have]


def usable_cores() -> int:
    """CPU cores this process may run on (affinity-aware where the OS tells us)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of `packages` ("not installed" where absent), plus Python's."""
    from compress.core.versions import package_versions

    return package_versions(packages)


def _accelerator() -> str | None:
    """The CUDA device name if torch is already imported and sees one (never imports torch)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def machine(threads: int) -> dict[str, Any]:
    """The machine part of the report: CPU model, cores, flags of interest, OS, threads used.

    Args:
        threads: the intra-op thread count the benchmark fixed.
    """
    out: dict[str, Any] = {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "usable_cores": usable_cores(),
        "cpu_flags": cpu_flags(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "threads": threads,
    }
    accelerator = _accelerator()
    if accelerator:
        out["accelerator"] = accelerator
    return out


BUSY_SPREAD = 0.10
"""A row whose per-call std is above this fraction of its mean is unstable (pyperf's threshold)."""

BUSY_OTHER_CORES = 0.5
"""Other processes using more than the cores left free (plus this) during a measurement: busy."""


def load_average() -> float | None:
    """The 1-minute load average, or None where the OS has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def load_warnings(rows: list[Any], threads: int, cores: int | None = None) -> list[str]:
    """Warnings (like pyperf's) for rows timed on a busy machine or with a high run-to-run spread.

    Args:
        rows: report rows (anything with `name` and `latency_at(1)` giving a `LatencyMs`).
        threads: the thread count the benchmark used.
        cores: usable cores (default: this process's).
    """
    free = max((cores or usable_cores()) - threads, 0)
    busy, unstable = [], []
    for row in rows:
        lat = row.latency_at(1) if hasattr(row, "latency_at") else None
        if lat is None:
            continue
        if lat.other_cpu is not None and lat.other_cpu > free + BUSY_OTHER_CORES:
            busy.append(f"{row.name} ({lat.other_cpu:.1f})")
        if lat.spread is not None and lat.spread > BUSY_SPREAD:
            unstable.append(f"{row.name} ({lat.spread:.0%})")
    out = []
    if busy:
        out.append(f"Machine busy while timing: other processes used more than the {free} free core(s) "
                   f"(cores used by others: {', '.join(busy)}); latency is unreliable, rerun on an idle machine.")
    if unstable:
        out.append(f"Unstable latency: robust spread (1.4826·MAD) above {BUSY_SPREAD:.0%} of the median for "
                   f"{', '.join(unstable)}; "
                   "rerun on an idle machine, or raise benchmark.min_time_s.")
    return out


def fingerprint(threads: int, rows: list[Any] | None = None) -> dict[str, Any]:
    """Machine, versions and load warnings: `{"machine": {...}, "versions": {...}, "warnings": [...]}`.

    `machine` includes the 1-minute load average at report time and `busy` (whether a row was
    timed on a busy machine or with a high spread, see `load_warnings`).
    """
    warnings = load_warnings(rows or [], threads)
    info = {**machine(threads), "load_average": load_average(), "busy": bool(warnings)}
    return {"machine": info, "versions": versions(), "warnings": warnings}
