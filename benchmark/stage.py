"""`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compress.context import Context
from compress.core.atomic import read_json
from compress.core.errors import KdtoolError
from compress.core.progress import console
from compress.core.runfolder import KD_STUDENT, TRAINING_STAGES
from compress.data.loader import collect_outputs, example_batch, make_loader
from export.stage import EXPORT_BATCH, _example_inputs, artifacts_of
from recipes.schema import BenchmarkConfig


def ensure_ready(ctx) -> None:
    """The benchmark needs the distilled student; name the missing stage otherwise."""
    if not ctx.run.stage(KD_STUDENT, "meta.json").exists():
        raise KdtoolError(f"{ctx.run.stage('student_kd')} has no distilled student",
                          "run `kdtool distill` (or `kdtool run`) first")


def relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def _measure_row_latency(session: Any, samples: list, bench: BenchmarkConfig) -> list:
    """Latency at every recipe batch size (LatencyMs list, smallest batch first)."""
    from benchmark.latency import measure
    from benchmark.report.card import LatencyMs

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

    def run(batch_in: torch.Tensor) -> torch.Tensor:
        x = batch_in.numpy().astype(np.float32)
        if fixed_batch and len(x) < batch:  # a fixed-batch artifact: pad the last batch, keep the real rows
            pad = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
            return torch.from_numpy(np.asarray(session.run(pad))[: len(x)])
        return torch.from_numpy(np.asarray(session.run(x)))

    outputs, targets = collect_outputs(run, make_loader(val_ds, batch, shuffle=False, seed=0), student.preprocess)
    return ctx.task.metrics(outputs, targets)


def run_benchmark(ctx, baseline: Path | None = None, max_regression: float | None = None,
                  min_retention: float | None = None, force: bool = False):
    """`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates."""
    from rich.markup import escape

    from benchmark.cost import artifact_size_mb, gflops_per_sample, peak_memory_mb
    from benchmark.gates import enforce_gates
    from benchmark.report.card import ReportRow, build_report, load_report, render_console
    from benchmark.report.render import write_report
    from compress.core.progress import task_progress
    from compress.models.build import count_params
    from export.formats import get_runtime
    from export.formats.pytorch.runtime import TorchSession

    ensure_ready(ctx)
    r = ctx.recipe
    bench = r.benchmark
    torch.set_num_threads(bench.threads)
    student = ctx.load(KD_STUDENT)
    inputs = _example_inputs(ctx, student, 32)
    student_cost = {"params": count_params(student.module), "gflops": gflops_per_sample(student.module, inputs[:1])}
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    rows: list[ReportRow] = []
    artifacts = artifacts_of(ctx)
    quant_folders = sorted(p.parent for p in ctx.run.stage("quantized").glob("*/*/meta.json"))
    total = 3 + len(quant_folders) + len(artifacts)
    with task_progress("benchmark", total) as bar:
        for stage in TRAINING_STAGES:
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


def _quantized_row(ctx: Context, folder: Path, samples: list, bench: BenchmarkConfig, student_cost: dict[str, Any]):
    """A row for a quantized model: its evaluation, size, and latency where it runs as itself.

    Params and GFLOPs are the FP32 student's: quantization changes the storage, not the graph."""
    from benchmark.cost import artifact_size_mb
    from benchmark.report.card import ReportRow
    from compress.quant.quantize import load_quantized
    from export.formats import get_runtime
    from export.formats.pytorch.runtime import TorchSession

    meta = read_json(folder / "meta.json")
    mode, backend = meta["mode"], meta["backend"]
    evaluation = meta.get("evaluation", {})
    path = folder / meta["file"]
    name = f"student_kd.{mode}.{backend}"
    common = dict(name=name, stage="quantized", precision="int8", source=KD_STUDENT, **student_cost,
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


def _artifact_row(ctx: Context, artifact, samples: list, bench: BenchmarkConfig, student,
                  student_cost: dict[str, Any], get_runtime):
    """A row for an exported artifact: loaded in its runtime, timed, and scored on validation."""
    from benchmark.cost import peak_memory_mb
    from benchmark.latency import make_batches, timed_load
    from benchmark.report.card import ReportRow

    common = dict(name=artifact.name, stage="export", format=artifact.format, precision=artifact.precision,
                  runtime=artifact.runtime, source=KD_STUDENT, path=relative(artifact.path, ctx.run.root),
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
