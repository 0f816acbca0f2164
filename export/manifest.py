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


def build_manifest(artifact: Artifact, spec: ExportContext, example: torch.Tensor) -> dict[str, Any]:
    """The manifest of one artifact (paths relative to the artifact's folder).

    Args:
        artifact: the exported artifact (status, parity and info filled in).
        spec: the context it was exported with.
        example: an input batch, for shapes and dtype.
    """
    folder = artifact.path.parent
    shape: list[int | str] = list(example.shape)
    if artifact.info.get("dynamic_batch", spec.dynamic_batch):
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
                    "layout": layout} for n in spec.input_names[:1]],
        "outputs": [{"name": n, "meaning": spec.output_meaning} for n in spec.output_names],
        "task": spec.task,
        "labels": list(spec.labels) if spec.labels else None,
        "preprocessing": spec.preprocess,
        "opset": spec.opset if artifact.format in ("onnx", "tensorrt") else None,
        "versions": versions(artifact.format),
        "parity": artifact.parity.model_dump(mode="json") if artifact.parity else None,
        "info": artifact.info,
        "metadata": spec.metadata,
        "inputs_hash": spec.inputs_hash,
    }


def write_manifest(artifact: Artifact, spec: ExportContext, example: torch.Tensor) -> Path:
    """Write `manifest.json` atomically into the artifact's folder; returns its path."""
    path = artifact.path.parent / MANIFEST
    write_json(path, build_manifest(artifact, spec, example))
    return path


def mismatches(artifact_folder: Path, manifest: dict[str, Any]) -> list[tuple[Path, str, str | None]]:
    """The files of an artifact whose sha256 differs from its manifest's: (path, expected, found or None)."""
    out = []
    for item in manifest.get("files") or []:
        path = Path(artifact_folder) / item["name"]
        found = sha256_file(path) if path.exists() else None
        if found != item.get("sha256"):
            out.append((path, item.get("sha256"), found))
    return out


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
