"""`kdtool export`: artifacts of the distilled student (and its INT8 versions) for each target."""

from __future__ import annotations

from typing import Any

import torch

from compress.core.atomic import read_json
from compress.core.errors import ExportError
from compress.core.progress import console
from compress.core.runfolder import KD_STUDENT, finish_stage, inputs_hash, prepare_stage
from compress.data.loader import example_batch
from compress.quant.stage import best_quantized

EXPORT_BATCH = 2
"""Batch of the example an artifact is exported with (the batch of fixed-batch artifacts)."""


def _example_inputs(ctx, student, n: int) -> torch.Tensor:
    """Real preprocessed validation samples (parity and benchmark inputs)."""
    _, val_ds = ctx.datasets
    raw = example_batch(val_ds, n)
    return student.preprocess(raw)


def run_export(ctx, targets: list[str] | None = None, formats: list[str] | None = None,
               force: bool = False) -> list:
    """`kdtool export`: artifacts of the distilled student (+ its INT8 versions) for each target."""
    from export.registry import ExportContext
    from export.run import Quantized, export_model, summary_table

    r = ctx.recipe
    targets = targets or list(r.export.targets)
    formats = formats or (list(r.export.formats) if r.export.formats else None)
    student = ctx.load(KD_STUDENT)
    quantized = Quantized()
    static_onnx = ctx.run.stage("quantized", "static", "onnx")
    et_folder, et_mode = best_quantized(ctx, "executorch", ("static", "qat"))
    if et_folder is not None:
        from compress.quant.quantize import load_quantized

        quantized.pt2e, quantized.pt2e_mode = load_quantized(et_folder).program, et_mode
        console.print(f"[dim]export: ExecuTorch int8 from the {et_mode} quantized model ({et_folder})[/]")
    if (static_onnx / "meta.json").exists():
        meta = read_json(static_onnx / "meta.json")
        quantized.onnx, quantized.onnx_mode = static_onnx / meta["file"], "static"
    folder = ctx.run.stage("export")
    expected = inputs_hash(r.export, targets, formats, ctx.output_hash(KD_STUDENT),
                           [read_json(p / "meta.json").get("inputs_hash") for p in (et_folder, static_onnx)
                            if p is not None and (p / "meta.json").exists()])
    if prepare_stage(folder, expected, force, redo_partial=True) == "skip":
        console.print(f"[dim]export: reused {folder}[/]")
        return [a for a in read_json(folder / "meta.json")["artifacts"]]
    inputs = _example_inputs(ctx, student, r.export.parity_samples)
    export_ctx = ExportContext(name=KD_STUDENT, task=ctx.task.kind, preprocess=student.preprocess.to_dict(),
                               labels=tuple(r.task.labels) if r.task.labels else None,
                               output_names=("output",), opset=r.export.opset,
                               metadata={"kdtool.recipe": r.name},
                               output_meaning=_output_meaning(ctx.task))
    artifacts = export_model(student.module, inputs[:EXPORT_BATCH], folder, formats=formats, targets=targets,
                             quantized=quantized, ctx=export_ctx, inputs=inputs, int8=r.export.int8,
                             threads=r.benchmark.threads)
    rows = summary_table(artifacts)
    _print_export_table(rows)
    failed = [a for a in artifacts if a.status == "failed"]
    finish_stage(folder, expected, {"artifacts": [a.model_dump(mode="json") for a in artifacts]},
                 complete=not failed)  # a failed export is redone by the next run
    if failed:
        raise ExportError(f"{len(failed)} artifact(s) failed: " + "; ".join(f"{a.name}: {a.reason}" for a in failed),
                          "see the table above; the other artifacts were written")
    return artifacts


def _output_meaning(task) -> str:
    if task.kind == "regression":
        return f"values (N, {task.num_outputs}): {', '.join(task.outputs or [])}"
    if task.kind == "binary" and task.num_outputs == 1:
        return "logit (N, 1): sigmoid for P(positive)"
    if task.kind == "multilabel":
        return f"logits (N, {task.num_outputs}): sigmoid per label"
    return f"logits (N, {task.num_outputs}): softmax for class probabilities"


def _print_export_table(rows: list[dict[str, Any]]) -> None:
    """Every planned artifact with its status, size, parity and (for failures) the reason."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="export", show_lines=False)
    for col in ("artifact", "target", "status", "MB", "parity", "max abs", "agree", "delegated", "int8 ops"):
        table.add_column(col, overflow="fold")

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.0f}%"

    for row in rows:
        status = row["status"] if row["status"] == "ok" else escape(f"{row['status']}: {row['reason']}")
        table.add_row(row["name"], row["target"] or "", status,
                      "" if row["size_mb"] is None else f"{row['size_mb']:.2f}", row["parity"] or "",
                      "" if row["max_abs"] is None else f"{row['max_abs']:.1e}",
                      "" if row["agreement"] is None else f"{row['agreement']:.3f}",
                      pct(row["delegated"]), pct(row["quantized_ops"]))
    console.print(table)


def artifacts_of(ctx) -> list[Any]:
    """Exported artifacts recorded by the export stage (empty when it has not run)."""
    from export.artifact import Artifact

    meta = ctx.run.stage("export", "meta.json")
    if not meta.exists():
        return []
    return [Artifact.model_validate(a) for a in read_json(meta)["artifacts"]]
