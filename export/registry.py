"""The exporter seam: `EXPORTERS` (name → exporter class), the `Exporter` protocol and `ExportContext`.

A new format is one new package in `export/formats/` whose exporter registers a class here and whose
runtime registers in `export.runtime.RUNTIMES`; `export/formats/__init__.py` imports every format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from compress.core.errors import ExportError
from compress.core.registry import Registry
from export.artifact import Artifact

Precision = Literal["fp32", "fp16", "int8"]

EXPORTERS: Registry = Registry("exporter")
"""Format name (`onnx`, `executorch`, ...) → exporter class; instantiate with no arguments."""


@dataclass
class ExportContext:
    """Everything an exporter needs besides the model: names, precision, metadata, quantized inputs.

    Passed as `spec` (the run context, `compress.context.Context`, is `ctx`).

    Attributes:
        name: run-level name of the model, e.g. "student_kd"; files are `<name>.<ext>`.
        precision: "fp32", "fp16" or "int8" (int8 needs `quantized_program` or `quantized_onnx`).
        task: task kind (binary, multiclass, multilabel, regression): picks parity agreement rules.
        preprocess: how raw inputs become the model input (`Preprocess.to_dict()`), for the manifest.
        labels: class names in logit order (classifiers), embedded where the format allows.
        input_names / output_names: tensor names in the artifact.
        output_meaning: what the output is, e.g. "logits (N, 10), softmax for probabilities".
        dynamic_batch: export the batch axis as dynamic (formats that cannot keep it record so).
        max_batch: upper bound given to torch.export for the dynamic batch axis.
        opset: ONNX opset.
        metadata: extra string key/values embedded in the artifact and the manifest.
        quantized_program: a PT2E-converted `torch.fx.GraphModule` (`convert_pt2e` output, XNNPACK
            quantizer) or an `ExportedProgram` of it; ExecuTorch int8 lowers this.
        quantized_onnx: an ONNX Runtime–quantized (QDQ) `.onnx` file; ONNX/TensorRT int8 adopt it.
        target: deployment target the artifact is made for (android, ios, server), if any.
        tag: name suffix of a static-batch file that another target makes with another batch (`b1`).
        variant: format-specific flavour, e.g. "coreml" for ExecuTorch with the CoreML delegate.
        task_spec: the `compress.core.tasks.Task` (primary metric, decisions) for parity, if known.
        parity_targets: labels of the real parity inputs: parity then compares the primary metric.
        inputs_hash: the artifact's inputs hash (`export.stage.artifact_hash`), recorded in its
            manifest: the export stage's index is rebuilt from manifests after a crash.
        calibration: preprocessed calibration samples for formats that calibrate their own int8
            (LiteRT, OpenVINO): the quantization stage's calibration set.
        validation: (inputs, labels) for accuracy-aware int8 inside a format (OpenVINO's NNCF).
        min_retention: the accuracy-aware int8 floor (`quantize.min_retention`), None when off.
    """

    name: str = "model"
    precision: Precision = "fp32"
    task: str = "multiclass"
    preprocess: dict[str, Any] = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    input_names: tuple[str, ...] = ("input",)
    output_names: tuple[str, ...] = ("output",)
    output_meaning: str = "raw model outputs (logits for classifiers)"
    dynamic_batch: bool = True
    max_batch: int = 1024
    opset: int = 18
    metadata: dict[str, str] = field(default_factory=dict)
    quantized_program: Any = None
    quantized_onnx: Path | None = None
    target: str | None = None
    variant: str | None = None
    task_spec: Any = None
    parity_targets: Any = None
    tag: str | None = None
    inputs_hash: str | None = None
    calibration: Any = None
    validation: Any = None
    min_retention: float | None = None

    def artifact_name(self, fmt: str) -> str:
        """Name used in reports: `<name>.<format>[-<variant>][-<tag>].<precision>`."""
        flavour = "-".join(p for p in (fmt, self.variant, self.tag) if p)
        return f"{self.name}.{flavour}.{self.precision}"

    def embedded_metadata(self) -> dict[str, str]:
        """String key/values embedded inside the artifact (ONNX metadata_props, CoreML, TorchScript...)."""
        meta = {
            "kdtool.name": self.name,
            "kdtool.task": self.task,
            "kdtool.precision": self.precision,
            "kdtool.inputs": json.dumps(list(self.input_names)),
            "kdtool.outputs": json.dumps(list(self.output_names)),
            "kdtool.output_meaning": self.output_meaning,
            "kdtool.preprocess": json.dumps(self.preprocess, sort_keys=True),
        }
        if self.labels:
            meta["kdtool.labels"] = json.dumps(list(self.labels))
        meta.update({str(k): str(v) for k, v in self.metadata.items()})
        return meta

    def batch_dim(self) -> dict[int, Any] | None:
        """The torch.export dynamic-shape spec for the first input, or None when the batch is static."""
        if not self.dynamic_batch:
            return None
        return {0: torch.export.Dim("batch", min=1, max=self.max_batch)}


class Exporter(Protocol):
    """One format: writes an artifact for `model` into `out_dir` and returns its `Artifact`.

    Exporters write files atomically, embed `spec.embedded_metadata()` where the format allows, and
    raise `ExportError` (naming the unsupported op or missing package) when they cannot export.
    Parity and manifests are done by the caller (`export.run.export_model`), once for all formats.
    """

    name: str
    runtime: str
    precisions: tuple[str, ...]

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Export `model` (eval mode, fp32) traced on `example`; returns the artifact (status ok)."""
        ...


def check_precision(exporter: Exporter, spec: ExportContext) -> None:
    """Raise ExportError when `exporter` cannot make `spec.precision`."""
    if spec.precision not in exporter.precisions:
        raise ExportError(f"{exporter.name} does not export precision {spec.precision!r}",
                          f"supported: {', '.join(exporter.precisions)}")


def export_program(model: nn.Module, example: torch.Tensor,
                   spec: ExportContext) -> torch.export.ExportedProgram:
    """`torch.export.export` with the context's dynamic batch; unsupported ops become an ExportError.

    Falls back to a static batch when the model specialises it (e.g. a PT2E-converted graph traced
    at a fixed batch) and records that by setting `spec.dynamic_batch = False`.
    """
    dim = spec.batch_dim()
    try:
        if dim is not None:
            try:
                return torch.export.export(model, (example,), dynamic_shapes=(dim,))
            except torch._dynamo.exc.UserError:
                # the graph bounds or fixes the batch (e.g. a PT2E graph): let torch.export decide
                program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
                spec.dynamic_batch = not isinstance(user_input_shape(program)[0], int)
                return program
        return torch.export.export(model, (example,))
    except Exception as e:  # torch.export raises many types; name the failure for the user
        raise ExportError(f"torch.export failed for {spec.name}: {first_line(e)}",
                          "the model has an op or Python control flow torch.export cannot trace") from e


def user_input_shape(program: torch.export.ExportedProgram) -> tuple[Any, ...]:
    """Shape of the first user input of an exported program (ints, or SymInts for dynamic axes)."""
    user = [s.arg.name for s in program.graph_signature.input_specs
            if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user[0])
    return tuple(node.meta["val"].shape)


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception message, shortened: names the op without the traceback."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:limit]


def build_artifact(fmt: str, path: Path, spec: ExportContext, runtime: str, extra_files: tuple[Path, ...] = (),
                   info: dict[str, Any] | None = None) -> Artifact:
    """An `Artifact` for files already written: size counts every file (ONNX `.data` included).

    Args:
        fmt: format name (Artifact.format).
        path: the main file or folder (`.mlpackage`).
        spec: the export context (name, precision, target).
        runtime: registered runtime name that loads it.
        extra_files: files the main one needs (ONNX external weights), hashed and counted too.
        info: format facts (delegation share, opset, dynamic batch...).
    """
    from compress.core.atomic import sha256_file, size_on_disk_mb

    if not Path(path).exists() or size_on_disk_mb(path) == 0:
        raise ExportError(f"{fmt} export wrote no data to {path}", "see the exporter's log above")
    files = [Path(path), *map(Path, extra_files)]
    info = {"dynamic_batch": spec.dynamic_batch, **(info or {})}
    if extra_files:
        info["files_sha256"] = {f.name: sha256_file(f) for f in files}
    return Artifact(name=spec.artifact_name(fmt), format=fmt, precision=spec.precision, path=Path(path),
                    files=files, runtime=runtime, target=spec.target, status="ok",
                    size_mb=round(sum(size_on_disk_mb(f) for f in files), 6), sha256=sha256_file(path),
                    info=info)
