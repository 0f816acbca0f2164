"""`kdtool export`: artifacts of the distilled student (and its INT8 versions) for each target."""

from __future__ import annotations

from typing import Any

import torch

from compress.core.atomic import read_json
from compress.core.errors import ExportError
from compress.core.progress import console
from compress.core.runfolder import finish_stage, inputs_hash, prepare_stage
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
    student = ctx.load("student_kd")
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
    expected = inputs_hash(r.export, targets, formats, ctx.output_hash("student_kd"),
                           [read_json(p / "meta.json").get("inputs_hash") for p in (et_folder, static_onnx)
                            if p is not None and (p / "meta.json").exists()])
    if prepare_stage(folder, expected, force, redo_partial=True) == "skip":
        console.print(f"[dim]export: reused {folder}[/]")
        return [a for a in read_json(folder / "meta.json")["artifacts"]]
    inputs = _example_inputs(ctx, student, r.export.parity_samples)
    preprocess = {**student.preprocess.to_dict(), "decode": _decode_facts(r.data, student)}
    export_ctx = ExportContext(name="student_kd", task=ctx.task.kind, preprocess=preprocess,
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


def _decode_facts(data, student) -> dict[str, Any]:
    """How a file becomes a raw sample (`compress.data.files.Decoder`): what `kdtool predict` repeats."""
    from dataclasses import asdict

    from compress.data.files import Decoder

    return asdict(Decoder.for_config("audio" if student.preprocess.kind == "audio" else "image", data))


def _output_meaning(task) -> str:
    if task.kind == "regression":
        return f"values (N, {task.num_outputs}): {', '.join(task.outputs or [])}"
    if task.kind == "binary" and task.num_outputs == 1:
        return "logit (N, 1): sigmoid for P(positive)"
    if task.kind == "multilabel":
        return f"logits (N, {task.num_outputs}): sigmoid per label"
    return f"logits (N, {task.num_outputs}): softmax for class probabilities"


def _print_export_table(rows: list[dict[str, Any]]) -> None:
    """Every planned artifact with its status, size, parity; reasons as footnotes (no cell ever wraps)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    def pct(v: float | None) -> str:
        return "" if v is None else f"{100 * v:.0f}%"

    reasons = [(row["name"], row["reason"]) for row in rows if row["status"] != "ok" and row["reason"]]
    notes = {name: i for i, (name, _) in enumerate(reasons, 1)}
    cells = {"artifact": lambda row: row["name"], "target": lambda row: row["target"] or "",
             "status": lambda row: row["status"] + (f" [{notes[row['name']]}]" if row["name"] in notes else ""),
             "MB": lambda row: "" if row["size_mb"] is None else f"{row['size_mb']:.2f}",
             "parity": lambda row: {"passed": "✓", "failed": "✗", None: ""}.get(row["parity"], "n/v"),
             "max abs": lambda row: "" if row["max_abs"] is None else f"{row['max_abs']:.1e}",
             "agree": lambda row: "" if row["agreement"] is None else f"{row['agreement']:.3f}",
             "delegated": lambda row: pct(row["delegated"]), "int8 ops": lambda row: pct(row["quantized_ops"])}
    narrow = console.width < 100  # an 80-column terminal: the essentials, never a wrapped cell
    columns = [c for c in cells if not narrow or c in ("artifact", "status", "MB", "parity", "int8 ops")]
    table = Table(title="export", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for col in columns:
        table.add_column(col, no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(escape(cells[c](row)) for c in columns))
    console.print(table)
    for name, reason in reasons:
        console.print(f"[dim]\\[{notes[name]}] {escape(name)}: {escape(reason)}[/]", soft_wrap=False)


def artifacts_of(ctx) -> list[Any]:
    """Exported artifacts recorded by the export stage (empty when it has not run)."""
    from export.artifact import Artifact

    meta = ctx.run.stage("export", "meta.json")
    if not meta.exists():
        return []
    return [Artifact.model_validate(a) for a in read_json(meta)["artifacts"]]
