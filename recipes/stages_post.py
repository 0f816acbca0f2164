"""The stages after distillation: quantize → export → benchmark, reading and writing the run folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from compress.atomic import read_json
from compress.data import example_batch, make_loader
from compress.errors import ExportError, KdtoolError
from compress.progress import console
from compress.runfolder import finish_stage, inputs_hash, prepare_stage
from compress.tasks import lower_is_better

BACKENDS = {"dynamic": ("torch", "onnx"), "static": ("executorch", "onnx"), "qat": ("executorch",)}
"""Quantization backends made per recipe mode (CoreML static is added for the ios target)."""


EXPORT_BATCH = 2
"""Batch of the example an artifact is exported with (the batch of fixed-batch artifacts)."""


def quant_backends(recipe, mode: str) -> tuple[str, ...]:
    """Backends to quantize for, given the recipe's export targets."""
    if recipe.quantize.backends and mode in recipe.quantize.backends:
        return tuple(recipe.quantize.backends[mode])
    backends = BACKENDS[mode]
    if mode == "static" and "ios" in recipe.export.targets:
        backends = (*backends, "coreml")
    return backends


def run_quantize(ctx, modes: list[str] | None = None, force: bool = False) -> list[dict[str, Any]]:
    """`kdtool quantize`: INT8 versions of the distilled student, each evaluated on validation."""
    from compress.quantize import evaluate_quantized, make_config, quantize

    r = ctx.recipe
    modes = modes or list(r.quantize.modes)
    student = ctx.load("student_kd")
    train_ds, val_ds = ctx.datasets
    kd_hash = ctx.output_hash("student_kd")
    results = []
    for mode in modes:
        for backend in quant_backends(r, mode):
            folder = ctx.run.stage("quantized", mode, backend)
            expected = inputs_hash(_mode_settings(r.quantize, mode, backend), r.distill if mode == "qat" else None,
                                   mode, backend, kd_hash)
            if prepare_stage(folder, expected, force) == "skip":
                console.print(f"[dim]quantize {mode}/{backend}: reused {folder}[/]")
                results.append(read_json(folder / "meta.json"))
                continue
            start = time.perf_counter()
            settings: dict[str, Any] = {"backend": backend}
            if mode == "static":
                settings.update(_mode_settings(r.quantize, mode, backend))
            if mode == "qat":
                settings.update(epochs=r.quantize.qat.epochs, lr=r.quantize.qat.lr,
                                weight_decay=r.quantize.qat.weight_decay)
            teacher = objective = None
            if mode == "qat":
                teacher = ctx.load("teacher")
                objective = _qat_objective(ctx, student, teacher)
            loader = make_loader(train_ds, r.data.batch_size, shuffle=mode == "qat", seed=r.quantize.qat.seed)
            qm = quantize(student.module, make_config(mode, **settings), calibration=loader,
                          preprocess=student.preprocess, out=folder, seed=r.quantize.qat.seed,
                          teacher=teacher.module if teacher else None,
                          teacher_preprocess=teacher.preprocess if teacher else None, task=ctx.task,
                          objective=objective)
            val_loader = make_loader(val_ds, 256, shuffle=False, seed=0)
            evaluation = evaluate_quantized(qm, student.module, val_loader, student.preprocess, ctx.task)
            seconds = time.perf_counter() - start
            finish_stage(folder, expected, {"evaluation": evaluation, "seconds": round(seconds, 2)})
            metric = ctx.task.primary_metric
            value = (evaluation.get("metrics") or {}).get(metric)
            console.print(f"quantize {mode}/{backend}: {metric}="
                          f"{'n/a (' + evaluation['status'] + ')' if value is None else f'{value:.4f}'} "
                          f"size {evaluation.get('size_mb') or 0:.2f} MB ({seconds:.1f} s)")
            results.append(read_json(folder / "meta.json"))
    return results


def _qat_objective(ctx, student, teacher):
    """The distillation loss for QAT: every `distill` term, with the adapters student_kd trained.

    The adapters come from the student_kd training state (`last.safetensors`, keys `objective.*`);
    a missing or mismatched state leaves fresh adapters, with a logged warning. QAT goes on from
    where distillation ended, so an alpha or temperature schedule is held at its value of the
    last KD epoch (a linear 0.95 → 0.5 alpha trains QAT at 0.5, not at `distill.alpha`).
    """
    from compress.checkpoint import load_objective_state
    from compress.objective import KDObjective
    from compress.schedules import value_at

    train_ds, _ = ctx.datasets
    raw = example_batch(train_ds)
    d = ctx.recipe.distill
    last = max(ctx.kd_train.epochs, 1)
    held = d.model_copy(update={"alpha": value_at(d.alpha_schedule, d.alpha, last),
                                "temperature": value_at(d.temperature_schedule, d.temperature, last),
                                "alpha_schedule": None, "temperature_schedule": None})
    objective = KDObjective(ctx.task, held, student.module, teacher.module,
                            student.preprocess(raw), teacher.preprocess(raw))
    load_objective_state(objective, ctx.run.stage("student_kd") / "last.safetensors")
    return objective


def _mode_settings(quantize_cfg, mode: str, backend: str) -> dict[str, Any]:
    """The settings one quantization mode depends on: changing QAT's lr does not redo static PTQ."""
    if mode == "static":
        settings = {"calibration_samples": quantize_cfg.calibration_samples}
        if backend == "onnx" and quantize_cfg.onnx_activations:  # left out unset: older runs keep their hash
            settings["onnx_activations"] = quantize_cfg.onnx_activations
        return settings
    if mode == "qat":
        return quantize_cfg.qat.model_dump(mode="json", exclude_none=True)
    return {}


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
        from compress.quantize import load_quantized

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
    export_ctx = ExportContext(name="student_kd", task=ctx.task.kind, preprocess=student.preprocess.to_dict(),
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


def best_quantized(ctx, backend: str, modes: tuple[str, ...]) -> tuple[Path | None, str | None]:
    """The quantized model of `backend` with the best validation metric among `modes` (first wins ties).

    QAT exists to recover what static PTQ loses, so when both ran the export takes whichever scored
    higher on the validation split (static on a tie: it needs no training to reproduce).
    """
    best: tuple[float, Path, str] | None = None
    for mode in modes:
        folder = ctx.run.stage("quantized", mode, backend)
        if not (folder / "meta.json").exists():
            continue
        metrics = (read_json(folder / "meta.json").get("evaluation") or {}).get("metrics") or {}
        value = metrics.get(ctx.task.primary_metric)
        metric = ctx.task.primary_metric
        sign = -1.0 if lower_is_better(metric) else 1.0
        score = float("-inf") if value is None else sign * float(value)
        if best is None or score > best[0]:
            best = (score, folder, mode)
    return (best[1], best[2]) if best else (None, None)


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


def ensure_ready(ctx) -> None:
    """The benchmark needs the distilled student; name the missing stage otherwise."""
    if not ctx.run.stage("student_kd", "meta.json").exists():
        raise KdtoolError(f"{ctx.run.stage('student_kd')} has no distilled student",
                          "run `kdtool distill` (or `kdtool run`) first")


def artifacts_of(ctx) -> list[Any]:
    """Exported artifacts recorded by the export stage (empty when it has not run)."""
    from export.artifact import Artifact

    meta = ctx.run.stage("export", "meta.json")
    if not meta.exists():
        return []
    return [Artifact.model_validate(a) for a in read_json(meta)["artifacts"]]


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _measure_row_latency(session: Any, samples: list, bench) -> list:
    """Latency at every recipe batch size (LatencyMs list, smallest batch first)."""
    from benchmark.latency import measure
    from benchmark.report import LatencyMs

    out = []
    for batch in sorted(bench.batch_sizes):
        stats = measure(session, samples, warmup=bench.warmup, min_runs=bench.min_runs, min_time_s=bench.min_time_s,
                        threads=bench.threads, batch=batch)
        out.append(LatencyMs.from_stats(stats))
    return out


def _artifact_metrics(session: Any, ctx, student, batch: int, fixed_batch: bool = False) -> dict[str, float]:
    """Task metrics of an artifact over the whole validation split in its runtime, `batch` rows at a time."""
    import numpy as np

    _, val_ds = ctx.datasets
    outs, targets = [], []
    for raw, target, _ in make_loader(val_ds, batch, shuffle=False, seed=0):
        x = student.preprocess(raw).numpy().astype(np.float32)
        if fixed_batch and len(x) < batch:  # a fixed-batch artifact: pad the last batch, keep the real rows
            pad = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
            outs.append(torch.from_numpy(np.asarray(session.run(pad))[: len(x)]).float())
        else:
            outs.append(torch.from_numpy(np.asarray(session.run(x))).float())
        targets.append(target)
    return ctx.task.metrics(torch.cat(outs), torch.cat(targets))


def run_benchmark(ctx, baseline: Path | None = None, max_regression: float | None = None,
                  min_retention: float | None = None, force: bool = False):
    """`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates."""
    from rich.markup import escape

    from benchmark.gates import enforce_gates
    from benchmark.profile import artifact_size_mb, gflops_per_sample, peak_memory_mb
    from benchmark.report import ReportRow, build_report, load_report, render_console, write_report
    from benchmark.runtimes import get_runtime
    from benchmark.runtimes.torch_eager import TorchSession
    from compress.models import count_params
    from compress.progress import task_progress

    ensure_ready(ctx)
    r = ctx.recipe
    bench = r.benchmark
    torch.set_num_threads(bench.threads)
    student = ctx.load("student_kd")
    inputs = _example_inputs(ctx, student, 32)
    student_cost = {"params": count_params(student.module), "gflops": gflops_per_sample(student.module, inputs[:1])}
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    rows: list[ReportRow] = []
    artifacts = artifacts_of(ctx)
    quant_folders = sorted(p.parent for p in ctx.run.stage("quantized").glob("*/*/meta.json"))
    total = 3 + len(quant_folders) + len(artifacts)
    with task_progress("benchmark", total) as bar:
        for stage in ("teacher", "student_baseline", "student_kd"):
            built = ctx.load(stage)
            meta = read_json(ctx.run.stage(stage, "meta.json"))
            x = built.preprocess(example_batch(ctx.datasets[1], 32))
            session = TorchSession(built.module)
            lat = _measure_row_latency(session, [s.unsqueeze(0).numpy() for s in x], bench)
            rows.append(ReportRow(
                name=stage, stage=stage, format="pytorch", precision="fp32", runtime="torch", source=stage,
                path=relative(ctx.run.stage(stage, "best.safetensors"), ctx.run.root),
                params=count_params(built.module), size_mb=artifact_size_mb([ctx.run.stage(stage, "best.safetensors")]),
                gflops=gflops_per_sample(built.module, x[:1]),
                peak_mem_mb=peak_memory_mb(lambda s=session, a=x[:1].numpy(): s.run(a)),
                latency_ms=lat[0], latency_by_batch=lat[1:], metrics=meta["metrics"],
                throughput=1000.0 * lat[-1].batch / lat[-1].p50))
            bar.advance()
        for folder in quant_folders:
            rows.append(_quantized_row(ctx, folder, samples, bench, student_cost))
            bar.advance()
        for artifact in artifacts:
            rows.append(_artifact_row(ctx, artifact, samples, bench, student, student_cost, get_runtime))
            bar.advance()
    report = build_report(r.name, rows, ctx.task.primary_metric, list(r.export.targets), bench.min_retention,
                          bench.threads, recipe_sha256=ctx.recipe_sha)
    paths = write_report(report, ctx.run.report)
    console.print(render_console(report))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print(f"report: {paths['md']}  {paths['html']}")
    base = load_report(baseline) if baseline else None
    enforce_gates(report, base, max_regression, min_retention)
    return report


def _quantized_row(ctx, folder: Path, samples: list, bench, student_cost: dict[str, Any]):
    """A row for a quantized model: its evaluation, size, and latency where it runs as itself.

    Params and GFLOPs are the FP32 student's: quantization changes the storage, not the graph."""
    from benchmark.profile import artifact_size_mb
    from benchmark.report import ReportRow
    from benchmark.runtimes import get_runtime
    from benchmark.runtimes.torch_eager import TorchSession
    from compress.quantize import load_quantized

    meta = read_json(folder / "meta.json")
    mode, backend = meta["mode"], meta["backend"]
    evaluation = meta.get("evaluation", {})
    path = folder / meta["file"]
    name = f"student_kd.{mode}.{backend}"
    common = dict(name=name, stage="quantized", precision="int8", source="student_kd", **student_cost,
                  path=relative(path, ctx.run.root), size_mb=artifact_size_mb([path]) if path.is_file()
                  else meta.get("size_mb"), metrics=evaluation.get("metrics") or {})
    if backend == "coreml":
        return ReportRow(**common, format="coreml", runtime="coreml", status="skipped",
                         reason="CoreML prediction needs macOS; weights compressed, not run here")
    if backend == "executorch":  # a PT2E reference graph: it is timed as its .pte artifact, not here
        return ReportRow(**common, format="pytorch", runtime="torch", status="ok",
                         reason="PT2E reference model (simulated int8); timed as its ExecuTorch artifact")
    try:
        if backend == "onnx":
            session = get_runtime("onnxruntime").load(path, bench.threads)
            fmt, runtime = "onnx", "onnxruntime"
        else:
            session = TorchSession(load_quantized(folder).module)
            fmt, runtime = "pytorch", "torch"
        lat = _measure_row_latency(session, samples, bench)
    except Exception as e:  # noqa: BLE001  (a row fails; the report goes on)
        return ReportRow(**common, format="pytorch", runtime="torch", status="failed", reason=str(e)[:200])
    return ReportRow(**common, format=fmt, runtime=runtime, latency_ms=lat[0], latency_by_batch=lat[1:],
                     throughput=1000.0 * lat[-1].batch / lat[-1].p50)


def _artifact_row(ctx, artifact, samples: list, bench, student, student_cost: dict[str, Any], get_runtime):
    """A row for an exported artifact: loaded in its runtime, timed, and scored on validation."""
    from benchmark.latency import make_batches, timed_load
    from benchmark.profile import peak_memory_mb
    from benchmark.report import ReportRow

    common = dict(name=artifact.name, stage="export", format=artifact.format, precision=artifact.precision,
                  runtime=artifact.runtime, source="student_kd", path=relative(artifact.path, ctx.run.root),
                  size_mb=artifact.size_mb, parity=artifact.parity, **student_cost)
    if artifact.status != "ok":
        return ReportRow(**common, status=artifact.status, reason=artifact.reason)
    runtime = get_runtime(artifact.runtime)
    reason = runtime.available()
    if reason is not None:
        return ReportRow(**common, status="skipped", reason=reason)
    try:
        session, load_ms = timed_load(lambda: runtime.load(Path(artifact.path), bench.threads))
        fixed_batch = None if artifact.info.get("dynamic_batch", True) else EXPORT_BATCH
        timing = bench if not fixed_batch else bench.model_copy(update={"batch_sizes": [fixed_batch]})
        lat = [stats.model_copy(update={"load_ms": load_ms})
               for stats in _measure_row_latency(session, samples, timing)]
        # score in batches the artifact was planned for (ExecuTorch records its memory-planned max_batch)
        batch = fixed_batch or min(64, artifact.info.get("max_batch") or 64)
        metrics = _artifact_metrics(session, ctx, student, batch, fixed_batch=bool(fixed_batch))
        first = make_batches(samples, fixed_batch or 1)[0]
        peak = peak_memory_mb(lambda: session.run(first))
    except Exception as e:  # noqa: BLE001  (one artifact failing does not stop the report)
        return ReportRow(**common, status="failed", reason=f"{type(e).__name__}: {str(e)[:200]}")
    return ReportRow(**common, latency_ms=lat[0], latency_by_batch=lat[1:], metrics=metrics, peak_mem_mb=peak,
                     throughput=1000.0 * lat[-1].batch / lat[-1].p50)
