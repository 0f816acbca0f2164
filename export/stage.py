"""`kdtool export`: artifacts of the distilled student (and its INT8 versions) for each target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from compress.core.atomic import read_json, remove_orphans, sha256_json
from compress.core.errors import ExportError, KdtoolError
from compress.core.progress import console
from compress.core.runfolder import finish_stage, inputs_hash, is_finished
from compress.data.loader import example_batch
from compress.quant.stage import best_quantized
from export.index import ordered, read_index

if TYPE_CHECKING:
    from compress.context import Context
    from compress.models.build import BuiltModel
    from export.targets import Job

EXPORT_BATCH = 2
"""Batch of the example an artifact is exported with (the batch of fixed-batch artifacts)."""


def _example_inputs(ctx: Context, student: BuiltModel, n: int) -> torch.Tensor:
    """Real preprocessed validation samples (parity and benchmark inputs)."""
    _, val_ds = ctx.datasets
    raw = example_batch(val_ds, n)
    return student.preprocess(raw)


def _example_targets(ctx: Context, n: int) -> torch.Tensor:
    """Labels of the samples `_example_inputs` returns (parity compares the primary metric on them)."""
    _, val_ds = ctx.datasets
    return torch.stack([torch.as_tensor(val_ds[i][1]) for i in range(min(n, len(val_ds)))])


def run_export(ctx: Context, targets: list[str] | None = None, formats: list[str] | None = None,
               force: bool = False) -> list:
    """`kdtool export`: artifacts of the distilled student (+ its INT8 versions) for each target.

    Additive: each (target, format, precision) artifact has its own inputs hash (export settings,
    the student's weights, the quantized model it adopts) and is reused, made or replaced on its
    own. Exporting one target never touches another's artifacts; `--force` remakes only the
    artifacts asked for. The export folder's `meta.json` indexes every artifact on disk.

    Raises:
        KdtoolError: an asked-for artifact on disk was made from other inputs and `force` is not set.
        ExportError: an artifact failed (the others are written and indexed).
    """
    from export.registry import ExportContext
    from export.run import export_jobs, summary_table
    from export.targets import plan

    r = ctx.recipe
    jobs = plan(targets or list(r.export.targets), formats or (list(r.export.formats) if r.export.formats else None),
                r.export.int8, r.export.batch)  # an unknown target or format fails here, before any model is loaded
    student = ctx.load(ctx.final_student)  # the pruned student when the recipe prunes
    quantized, sources = _quantized_inputs(ctx)
    folder = ctx.run.stage("export")
    remove_orphans(folder)
    index = read_index(folder)  # rebuilt from the artifacts' manifests: the truth after a crash
    hashes = {job.folder: artifact_hash(ctx, job, sources) for job in jobs}
    _warn_damaged(index, hashes)
    reused, todo = _sort_jobs(jobs, hashes, index, folder, force)
    artifacts = []
    if todo:
        _add_calibration(ctx, student, quantized, todo)
        inputs = _example_inputs(ctx, student, r.export.parity_samples)
        preprocess = {**student.preprocess.to_dict(), "decode": _decode_facts(r.data, student)}
        spec = ExportContext(name=ctx.final_student, task=ctx.task.kind, preprocess=preprocess,
                             labels=tuple(r.task.labels) if r.task.labels else None,
                             output_names=("output",), opset=r.export.opset,
                             metadata={"kdtool.recipe": r.name},
                             output_meaning=_output_meaning(ctx.task), task_spec=ctx.task,
                             parity_targets=_example_targets(ctx, len(inputs)))
        artifacts = export_jobs(todo, student.module, inputs[:EXPORT_BATCH], folder, quantized=quantized,
                                spec=spec, inputs=inputs, threads=r.benchmark.threads, hashes=hashes)
    made = {job.folder: a for job, a in zip(todo, artifacts, strict=True)}
    for key, a in made.items():
        index[key] = {**a.model_dump(mode="json"), "job": key, "inputs_hash": hashes[key]}
    if reused:
        console.print(f"[dim]export: reused {len(reused)} artifact(s) made from the same inputs[/]")
    from export.artifact import Artifact

    result = [made.get(job.folder) or Artifact.model_validate(index[reused[job.folder]]) for job in jobs]
    _print_export_table(summary_table(result))
    failed = [a for a in made.values() if a.status == "failed"]
    finish_stage(folder, sha256_json(sorted(e.get("inputs_hash") or "" for e in index.values())),
                 {"artifacts": ordered(index)}, complete=not failed)  # a failed artifact is redone next time
    if failed:
        raise ExportError(f"{len(failed)} artifact(s) failed: " + "; ".join(f"{a.name}: {a.reason}" for a in failed),
                          "see the table above; failed files were renamed *.failed.*, the other artifacts "
                          "were written")
    return result


def _quantized_inputs(ctx: Context) -> tuple[Any, dict[str, str | None]]:
    """The quantization stage's int8 models that exporters adopt, and each one's inputs hash.

    ExecuTorch int8 takes the better of the static and QAT PT2E models; ONNX int8 the static ONNX
    Runtime model, else the dynamic one (a recipe with `quantize.modes: [dynamic]` promises it).
    """
    from export.run import Quantized

    quantized = Quantized(command=ctx.command("quantize"))
    q = ctx.recipe.quantize  # what the formats that calibrate their own int8 (LiteRT, OpenVINO) depend on
    sources: dict[str, str | None] = {"executorch": None, "onnx": None, "calibrated": sha256_json(
        {"calibration_samples": q.calibration_samples, "min_retention": q.min_retention})}
    et_folder, et_mode = best_quantized(ctx, "executorch", ("static", "qat"))
    if et_folder is not None:
        from compress.quant.quantize import load_quantized

        et_quantized = load_quantized(et_folder)
        quantized.pt2e, quantized.pt2e_mode = et_quantized.program, et_mode
        quantized.pt2e_floor = et_quantized.meta.get("accuracy_aware")
        sources["executorch"] = read_json(et_folder / "meta.json").get("inputs_hash")
        console.print(f"[dim]export: ExecuTorch int8 from the {et_mode} quantized model ({et_folder})[/]")
    for mode in ("static", "dynamic"):
        onnx_folder = ctx.run.stage("quantized", mode, "onnx")
        if is_finished(onnx_folder):
            meta = read_json(onnx_folder / "meta.json")
            quantized.onnx, quantized.onnx_mode = onnx_folder / meta["file"], mode
            quantized.onnx_floor = meta.get("accuracy_aware")
            sources["onnx"] = meta.get("inputs_hash")
            break
    return quantized, sources


def _add_calibration(ctx: Context, student, quantized, jobs: list) -> None:
    """Calibration (and accuracy-control) samples for the formats whose exporter makes its own int8
    (LiteRT, OpenVINO), when such a job is planned.

    Calibration: the first `quantize.calibration_samples` training samples, preprocessed, as the
    quantization stage's static PT2E and ONNX Runtime models are calibrated (an unshuffled loader).
    Validation, for OpenVINO's accuracy control at `quantize.min_retention`: as many validation
    samples, with their labels.
    """
    from compress.data.loader import make_loader
    from compress.quant.common import input_batches
    from export.run import calibrates_int8

    if not any(job.precision == "int8" and calibrates_int8(job.format) for job in jobs):
        return
    r = ctx.recipe
    n = r.quantize.calibration_samples
    train_ds, _ = ctx.datasets
    loader = make_loader(train_ds, r.data.batch_size, shuffle=False, seed=r.quantize.qat.seed)
    quantized.calibration = torch.cat(list(input_batches(loader, student.preprocess, n)))
    if r.quantize.min_retention is not None:
        quantized.validation = (_example_inputs(ctx, student, n), _example_targets(ctx, n))
        quantized.min_retention = r.quantize.min_retention


def artifact_hash(ctx: Context, job: Job, sources: dict[str, str | None]) -> str:
    """Inputs hash of one artifact: the export settings that shape it, its job, the student's weights,
    and (int8) the quantized model it adopts. The target list and format list are not part of it."""
    settings = ctx.recipe.export.model_dump(mode="json", exclude={"targets", "formats"})
    source = None
    if job.precision == "int8":
        from export.run import calibrates_int8

        source = sources.get("calibrated" if calibrates_int8(job.format) else
                             "executorch" if job.format == "executorch" else "onnx")
    return inputs_hash(settings, [job.format, job.precision, job.variant, job.batch],
                       ctx.output_hash(ctx.final_student), source, ctx.recipe.benchmark.threads)


def _sort_jobs(jobs: list, hashes: dict[str, str], index: dict[str, dict[str, Any]], folder, force: bool):
    """Split the jobs into those reused (`{job folder: index key}`) and those to make.

    An ok artifact of the same inputs is reused, also under another target (android and server
    share their ONNX fp32 file); with `force` every asked-for artifact is remade. An asked-for
    artifact on disk made from other inputs is replaced only with `force`.
    """
    reused, todo, stale = {}, [], []
    for job in jobs:
        same = [k for k, e in index.items() if e.get("inputs_hash") == hashes[job.folder]
                and e.get("status") == "ok" and k.split("/", 1)[1:] == job.folder.split("/", 1)[1:]]
        own = index.get(job.folder)
        if not force and job.folder in same:
            reused[job.folder] = job.folder
        elif not force and same:
            reused[job.folder] = same[0]
        elif not force and (own is not None and own.get("status") == "ok"
                            or own is None and (folder / job.folder).is_dir()):  # on disk, not made by this index
            stale.append(job.folder)
        else:
            todo.append(job)
    if stale:
        raise KdtoolError(f"{folder}: {', '.join(stale)} were made from a different recipe or upstream model",
                          "pass --force to replace them (other artifacts are kept) or --out another folder")
    return reused, todo


def _warn_damaged(index: dict[str, dict[str, Any]], hashes: dict[str, str]) -> None:
    """Say which asked-for artifacts are remade because their files no longer match their manifests."""
    for key, entry in index.items():
        if key in hashes and entry.get("status") == "failed" and "manifest" in (entry.get("reason") or ""):
            console.print(f"[yellow]export {key}: {entry['reason']}; it is made again[/]")


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


def artifacts_of(ctx: Context) -> list[Any]:
    """Exported artifacts on disk (empty when the export stage has not run), from their manifests."""
    from export.artifact import Artifact

    return [Artifact.model_validate(a) for a in ordered(read_index(ctx.run.stage("export")))]
