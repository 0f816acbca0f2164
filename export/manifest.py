"""`manifest.json` beside each artifact: what a deployer needs without opening the model.

Schema `kdtool.manifest/1`: format, precision, runtime, files (name, bytes, sha256), inputs
(name, shape with "batch" for a dynamic axis, dtype, layout), preprocessing, labels, outputs and
their meaning, opset, package versions, parity (the same object as the report's), and the
format facts (delegation share, quantized share, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compress.core.atomic import sha256_file, write_json
from compress.core.versions import package_versions
from export.artifact import Artifact
from export.registry import ExportContext

SCHEMA = "kdtool.manifest/1"
MANIFEST = "manifest.json"
FORMAT_PACKAGES = {"onnx": ["onnx", "onnxruntime", "onnxscript"], "executorch": ["executorch"],
                   "coreml": ["coremltools"], "tensorrt": ["tensorrt"], "torchscript": [], "aoti": [],
                   "litert": ["litert-torch", "ai-edge-litert"], "openvino": ["openvino", "nncf"]}


def build_manifest(artifact: Artifact, ctx: ExportContext, example: torch.Tensor) -> dict[str, Any]:
    """The manifest of one artifact (paths relative to the artifact's folder).

    Args:
        artifact: the exported artifact (status, parity and info filled in).
        ctx: the context it was exported with.
        example: an input batch, for shapes and dtype.
    """
    folder = artifact.path.parent
    shape: list[int | str] = list(example.shape)
    if artifact.info.get("dynamic_batch", ctx.dynamic_batch):
        shape[0] = "batch"
    layout = "NCHW" if example.ndim == 4 else ("N,samples" if example.ndim == 2 else f"{example.ndim}-d")
    return {
        "schema": SCHEMA,
        "name": artifact.name,
        "format": artifact.format,
        "precision": artifact.precision,
        "runtime": artifact.runtime,
        "target": artifact.target,
        "status": artifact.status,
        "reason": artifact.reason,
        "file": _rel(artifact.path, folder),
        "files": [{"name": _rel(f, folder), "bytes": _bytes(f), "sha256": sha256_file(f)}
                  for f in artifact.files],
        "size_mb": artifact.size_mb,
        "sha256": artifact.sha256,
        "inputs": [{"name": n, "shape": shape, "dtype": str(example.dtype).replace("torch.", ""),
                    "layout": layout} for n in ctx.input_names[:1]],
        "outputs": [{"name": n, "meaning": ctx.output_meaning} for n in ctx.output_names],
        "task": ctx.task,
        "labels": list(ctx.labels) if ctx.labels else None,
        "preprocessing": ctx.preprocess,
        "opset": ctx.opset if artifact.format in ("onnx", "tensorrt") else None,
        "versions": versions(artifact.format),
        "parity": artifact.parity.model_dump(mode="json") if artifact.parity else None,
        "info": artifact.info,
        "metadata": ctx.metadata,
    }


def write_manifest(artifact: Artifact, ctx: ExportContext, example: torch.Tensor) -> Path:
    """Write `manifest.json` atomically into the artifact's folder; returns its path."""
    path = artifact.path.parent / MANIFEST
    write_json(path, build_manifest(artifact, ctx, example))
    return path


def versions(fmt: str) -> dict[str, str]:
    """Versions of python, torch, timm and the format's packages (those installed)."""
    out = package_versions(("torch", "timm", *FORMAT_PACKAGES.get(fmt, [])), missing=None)
    return {**out, "torch": torch.__version__}  # the build's own string (with its +cuXXX local tag)


def _rel(path: Path, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return Path(path).name


def _bytes(path: Path) -> int:
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
