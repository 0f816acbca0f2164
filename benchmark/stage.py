"""`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compress.context import Context
from compress.core import determinism
from compress.core.atomic import read_json
from compress.core.errors import KdtoolError
from compress.core.progress import console
from compress.core.runfolder import KD_STUDENT, PRUNED, TRAINING_STAGES
from compress.data.loader import collect_outputs, example_batch, make_loader
from export.stage import EXPORT_BATCH, _example_inputs, artifacts_of
from export.targets import TARGETS
from recipes.schema import BenchmarkConfig


def ensure_ready(ctx) -> None:
    """The benchmark needs the distilled student; name the missing stage otherwise."""
    if not ctx.run.stage(KD_STUDENT, "meta.json").exists():
        raise KdtoolError(f"{ctx.run.stage('student_kd')} has no distilled student",
                          f"run `{ctx.command('distill')}` (or `{ctx.command('run')}`) first")
    if not ctx.run.stage(ctx.final_student, "meta.json").exists():
        raise KdtoolError(f"{ctx.run.stage(ctx.final_student)} has no pruned student",
                          f"run `{ctx.command('prune')}` (or `{ctx.command('run')}`) first")


def failure_reason(e: BaseException) -> str:
    """Why a row failed, for the card: the whole first line of the error (never cut mid-word), then its
    hint or the first line of its cause when there is one."""
    text = (e.message if isinstance(e, KdtoolError) else str(e)).strip()
    first = text.splitlines()[0] if text else ""
    if not isinstance(e, KdtoolError):
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
    extra = e.hint if isinstance(e, KdtoolError) else ""
    cause = e.__cause__
    if not extra and cause is not None and str(cause).strip():
        extra = f"cause: {str(cause).strip().splitlines()[0]}"
    return f"{first} ({extra})" if extra else first


def teacher_notes(ctx) -> list[str]:
    """The card's note on where the teacher came from (a checkpoint, trained here, the baseline)."""
    meta = ctx.run.stage("teacher", "meta.json")
    origin = read_json(meta).get("origin") if meta.exists() else None
    return [f"teacher: {origin}."] if origin else []


def pruning_notes(ctx) -> list[str]:
    """The card's note on what pruning reached (the pruned student's row carries the same facts)."""
    meta = ctx.run.stage(PRUNED, "meta.json")
    p = read_json(meta).get("pruning") if ctx.recipe.prune is not None and meta.exists() else None
    if not p:
        return []
    asked = f"ratio {p['ratio']}" if p.get("ratio") is not None else next(
        f"{k} {p[k]}" for k in ("max_params", "max_gflops", "max_latency_ms") if k in p)
    return [f"student_pruned: {p['channels_removed']:.0%} of channels, {p['params_removed']:.0%} of params and "
            f"{p['gflops_removed'] or 0:.0%} of GFLOPs removed ({asked}; {p['importance']} importance, {p['scope']}, "
            f"{p['steps']} step(s), recovery {p['recover']}); quantized and exported rows are made from it."]


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


def _artifact_metrics(session: Any, ctx, student, batch: int,
                      fixed_batch: bool = False) -> tuple[dict[str, float | None], dict[str, str]]:
    """Task metrics (and notes on undefined ones) of an artifact over the scored split, `batch` rows at a time."""
    import numpy as np

    _, scored = ctx.scored_split

    def run(batch_in: torch.Tensor) -> torch.Tensor:
        x = batch_in.numpy().astype(np.float32)
        if fixed_batch and len(x) < batch:  # a fixed-batch artifact: pad the last batch, keep the real rows
            pad = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
            return torch.from_numpy(np.asarray(session.run(pad))[: len(x)])
        return torch.from_numpy(np.asarray(session.run(x)))

    outputs, targets = collect_outputs(run, make_loader(scored, batch, shuffle=False, seed=0), student.preprocess)
    return ctx.task.score(outputs.float(), targets)


def _chance(ctx: Context) -> float | None:
    """The primary metric of the best constant predictor on the scored split."""
    targets = [t for _, t, _ in make_loader(ctx.scored_split[1], 256, shuffle=False, seed=0)]
    return ctx.task.chance(ctx.task.primary_metric, torch.cat(targets)) if targets else None


def run_benchmark(ctx, baseline: Path | None = None, max_regression: float | None = None,
                  min_retention: float | None = None, force: bool = False, wide: bool = False):
    """`kdtool benchmark`: measure every model and artifact, write the report card, apply CI gates.

    The terminal shows the compact card sized to its width (`wide`: every column)."""

    from benchmark.cost import artifact_size_mb, gflops_per_sample, peak_memory_mb
    from benchmark.gates import enforce_gates
    from benchmark.report.card import ReportRow, build_report, load_report
    from benchmark.report.console import print_card
    from benchmark.report.render import write_report
    from compress.core.progress import task_progress
    from compress.distill.trainer import evaluate
    from compress.models.build import count_params
    from export.formats import get_runtime
    from export.formats.pytorch.runtime import TorchSession

    ensure_ready(ctx)
    r = ctx.recipe
    split, scored = ctx.scored_split  # the checkpoints were chosen on validation; the card scores `split`
    bench = r.benchmark
    torch.set_num_threads(bench.threads)
    student = ctx.load(ctx.final_student)
    inputs = _example_inputs(ctx, student, 32)
    student_cost = {"params": count_params(student.module), "gflops": gflops_per_sample(student.module, inputs[:1])}
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    rows: list[ReportRow] = []
    artifacts = artifacts_of(ctx)
    quant_folders = sorted(p.parent for p in ctx.run.stage("quantized").glob("*/*/meta.json"))
    total = len(_model_stages(ctx)) + len(quant_folders) + len(artifacts)
    with task_progress("benchmark", total) as bar:
        for stage in _model_stages(ctx):
            built = ctx.load(stage)
            meta = read_json(ctx.run.stage(stage, "meta.json"))
            x = built.preprocess(example_batch(ctx.datasets[1], 32))
            session = TorchSession(built.module)
            lat = _measure_row_latency(session, [s.unsqueeze(0).numpy() for s in x], bench)
            if split == "validation":
                metrics, metric_notes = meta["metrics"], meta.get("metric_notes") or {}
            else:
                metrics, metric_notes = evaluate(built.module, built.preprocess, scored, ctx.task)[0], {}
            rows.append(ReportRow(
                name=stage, stage=stage, format="pytorch", precision="fp32", runtime="torch", source=stage,
                path=relative(ctx.run.stage(stage, "best.safetensors"), ctx.run.root),
                params=count_params(built.module), size_mb=artifact_size_mb([ctx.run.stage(stage, "best.safetensors")]),
                gflops=gflops_per_sample(built.module, x[:1]),
                peak_mem_mb=peak_memory_mb(lambda s=session, a=x[:1].numpy(): s.run(a)),
                latency_ms=lat[0], latency_by_batch=lat[1:], metrics=metrics, metric_notes=metric_notes,
                throughput=1000.0 * lat[-1].batch / lat[-1].p50, pruning=meta.get("pruning")))
            bar.advance()
        for folder in quant_folders:
            rows.append(_quantized_row(ctx, folder, samples, bench, student_cost, student))
            bar.advance()
        for artifact in artifacts:
            rows.append(_artifact_row(ctx, artifact, samples, bench, student, student_cost, get_runtime))
            bar.advance()
    targets = list(r.export.targets)  # and every target exported on its own (`kdtool export --target ios`)
    targets += sorted({a.target for a in artifacts if a.status == "ok" and a.target in TARGETS} - set(targets))
    teacher_warnings = read_json(ctx.run.stage("teacher", "meta.json")).get("warnings") or []
    report = build_report(r.name, rows, ctx.task.primary_metric, targets, bench.min_retention, bench.threads,
                          recipe_sha256=ctx.recipe_sha, chance=_chance(ctx), scored_split=split,
                          selection_split=None,  # _split_notes says which split chose the checkpoints
                          notes=[*_split_notes(ctx), *teacher_notes(ctx), *pruning_notes(ctx),
                                 *teacher_warnings])
    report = report.model_copy(update={"versions": {**report.versions, "kdtool": determinism.commit()},
                                       "training": training_provenance(ctx)})
    paths = write_report(report, ctx.run.report)
    print_card(report, console, wide=wide)
    console.print(f"report: {paths['md']}  {paths['html']}")
    base = load_report(baseline) if baseline else None
    enforce_gates(report, base, max_regression, min_retention)
    return report


def _model_stages(ctx) -> tuple[str, ...]:
    """The PyTorch models on the card: the training stages, and the pruned student when the recipe prunes."""
    return (*TRAINING_STAGES, *([PRUNED] if ctx.recipe.prune is not None else []))


def training_provenance(ctx) -> dict[str, Any]:
    """What each trained stage ran with (commit, versions, threads, ...), from its meta.json."""
    return {stage: read_json(ctx.run.stage(stage, "meta.json")).get("provenance")
            for stage in TRAINING_STAGES}


def _split_notes(ctx) -> list[str]:
    """The card's note naming the split its metrics come from."""
    split, scored = ctx.scored_split
    if split == "validation":
        return [f"metrics: validation split ({len(scored)} samples), the split the best checkpoints were chosen "
                "on; add data.test_root or data.test_fraction for held-out scoring."]
    d = ctx.recipe.data
    source = f"data.test_root {d.test_root}" if d.test_root is not None else f"data.test_fraction {d.test_fraction}"
    return [f"metrics: held-out test split ({source}, {len(scored)} samples); the best checkpoints were chosen "
            "on validation."]


def floor_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's view of an accuracy-aware report: its facts without the per-layer sensitivity list."""
    if not report:
        return None
    return {k: report.get(k) for k in ("min_retention", "status", "float_modules", "int8_compute_share",
                                       "retention_before", "retention_after", "agreement_before", "agreement_after")}


def _quantized_row(ctx: Context, folder: Path, samples: list, bench: BenchmarkConfig, student_cost: dict[str, Any],
                   student=None):
    """A row for a quantized model: its evaluation, size, and latency where it runs as itself.

    Params and GFLOPs are the FP32 student's: quantization changes the storage, not the graph.
    With a test split the model is scored on it here (its stored evaluation is on validation)."""
    from benchmark.cost import artifact_size_mb
    from benchmark.report.card import ReportRow
    from compress.quant.quantize import load_quantized
    from export.formats import get_runtime
    from export.formats.pytorch.runtime import TorchSession

    meta = read_json(folder / "meta.json")
    mode, backend = meta["mode"], meta["backend"]
    evaluation = meta.get("evaluation", {})
    if ctx.scored_split[0] == "test" and student is not None and backend != "coreml":
        from compress.quant.evaluate import evaluate_quantized

        loader = make_loader(ctx.scored_split[1], 256, shuffle=False, seed=0)
        evaluation = evaluate_quantized(load_quantized(folder), student.module, loader, student.preprocess,
                                        ctx.task, write=False)
    path = folder / meta["file"]
    name = f"{ctx.final_student}.{mode}.{backend}"
    common = dict(name=name, stage="quantized", precision="int8", source=ctx.final_student, **student_cost,
                  path=relative(path, ctx.run.root), size_mb=artifact_size_mb([path]) if path.is_file()
                  else meta.get("size_mb"), metrics=evaluation.get("metrics") or {},
                  accuracy_aware=floor_summary(meta.get("accuracy_aware")))
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
        return ReportRow(**common, format="pytorch", runtime="torch", status="failed", reason=failure_reason(e))
    return ReportRow(**common, format=fmt, runtime=runtime, latency_ms=lat[0], latency_by_batch=lat[1:],
                     throughput=1000.0 * lat[-1].batch / lat[-1].p50)


def _artifact_row(ctx: Context, artifact, samples: list, bench: BenchmarkConfig, student,
                  student_cost: dict[str, Any], get_runtime):
    """A row for an exported artifact: loaded in its runtime, timed, and scored on validation."""
    from benchmark.cost import peak_memory_mb
    from benchmark.latency import make_batches, timed_load
    from benchmark.report.card import ReportRow

    common = dict(name=artifact.name, stage="export", target=artifact.target, format=artifact.format,
                  precision=artifact.precision,
                  runtime=artifact.runtime, source=artifact.name.split(".", 1)[0],  # the model it was made from
                  path=relative(artifact.path, ctx.run.root),
                  size_mb=artifact.size_mb, parity=artifact.parity, **student_cost,
                  accuracy_aware=floor_summary(artifact.info.get("accuracy_aware")))
    if artifact.status != "ok":
        return ReportRow(**common, status=artifact.status, reason=artifact.reason)
    from export.verify import cannot_run_here, platform_status

    runtime = get_runtime(artifact.runtime)
    reason = cannot_run_here(artifact)
    if reason is not None:  # e.g. CoreML, or ExecuTorch with the CoreML delegate, on Linux
        return ReportRow(**common, status="skipped", reason=f"{platform_status(reason)}: {reason}")
    try:
        session, load_ms = timed_load(lambda: runtime.load(Path(artifact.path), bench.threads))
        fixed_batch = None if artifact.info.get("dynamic_batch", True) else artifact.info.get("batch", EXPORT_BATCH)
        timing = bench if not fixed_batch else bench.model_copy(update={"batch_sizes": [fixed_batch]})
        lat = [stats.model_copy(update={"load_ms": load_ms})
               for stats in _measure_row_latency(session, samples, timing)]
        # score in batches the artifact was planned for (ExecuTorch records its memory-planned max_batch)
        batch = fixed_batch or min(64, artifact.info.get("max_batch") or 64)
        metrics, metric_notes = _artifact_metrics(session, ctx, student, batch, fixed_batch=bool(fixed_batch))
        first = make_batches(samples, fixed_batch or 1)[0]
        peak = peak_memory_mb(lambda: session.run(first))
    except Exception as e:  # noqa: BLE001  (one artifact failing does not stop the report)
        return ReportRow(**common, status="failed", reason=failure_reason(e))
    return ReportRow(**common, latency_ms=lat[0], latency_by_batch=lat[1:], metrics=metrics,
                     metric_notes=metric_notes, peak_mem_mb=peak,
                     throughput=1000.0 * lat[-1].batch / lat[-1].p50)
