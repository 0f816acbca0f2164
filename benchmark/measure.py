"""One row of the report card per model, quantized model and artifact: latency, size, cost and metrics.

The inputs are typed values, not a recipe: a `Scoring` (the scored batches and the task), `ModelEntry`s
(PyTorch models), quantized-model folders and `Artifact`s. `kdtool benchmark` builds them from the run
folder, `benchmark.api.benchmark` from the user's models and DataLoader; both measure here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmark.cost import artifact_size_mb, gflops_per_sample, peak_memory_mb
from benchmark.latency import LatencyMs, make_batches, measure, timed_load
from benchmark.report.card import ReportRow
from compress.core.atomic import read_json
from compress.core.errors import KdtoolError
from compress.core.progress import task_progress
from compress.core.tasks import Task
from compress.data.loader import collect_outputs
from compress.models.build import count_params
from export.artifact import Artifact
from recipes.schema import BenchmarkConfig

EXPORT_BATCH = 2
"""Batch of the example an artifact is exported with (the batch of fixed-batch artifacts)."""


@dataclass
class Scoring:
    """The split every row is scored on.

    Attributes:
        batches: batch size → the split's `(raw, target, ...)` batches in order, at most that many rows each.
        task: metrics, the primary metric and chance.
        raw: up to 32 raw samples (latency inputs, before each model's preprocessing).
        name: "validation", "test" or the user's loader ("val_loader"), for the notes.
    """

    batches: Callable[[int], Iterable]
    task: Task
    raw: torch.Tensor
    name: str = "validation"

    def targets(self) -> torch.Tensor | None:
        """Every target of the split, in order (None when it is empty)."""
        parts = [t for _, t, *_ in self.batches(256)]
        return torch.cat(parts) if parts else None

    def chance(self) -> float | None:
        """The primary metric of the best constant predictor on this split."""
        targets = self.targets()
        return self.task.chance(self.task.primary_metric, targets) if targets is not None else None


class rechunk:  # noqa: N801  (used like a function; a class so it can be iterated more than once)
    """A loader's `(input, target, ...)` batches cut into pieces of at most `size` rows (order kept)."""

    def __init__(self, batches: Iterable, size: int) -> None:
        self.batches, self.size = batches, size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y, *_ in self.batches:
            for i in range(0, len(x), self.size):
                yield x[i:i + self.size], y[i:i + self.size]


@dataclass
class ModelEntry:
    """A PyTorch model on the card (teacher, student...).

    Attributes:
        name, stage: the row's name and stage (`teacher`, `student_baseline`, `student_kd`).
        module, preprocess: the model and raw batch → its input.
        path: its weights file (size on the card), or None (size from its parameters).
        metrics, metric_notes: already measured on the scored split (None: measured here).
        pruning: for the pruned student, the ratio asked and what was removed.
    """

    name: str
    stage: str
    module: nn.Module
    preprocess: Callable[[torch.Tensor], torch.Tensor]
    path: Path | None = None
    metrics: dict[str, float | None] | None = None
    metric_notes: dict[str, str] = field(default_factory=dict)
    pruning: dict[str, Any] | None = None  # student_pruned: what pruning removed (its row carries it)


def relative(path: Path | str | None, root: Path | None) -> str | None:
    """`path` relative to the run folder where it lies inside it."""
    if path is None:
        return None
    try:
        return str(Path(path).relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


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


def floor_summary(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """The card's view of an accuracy-aware report: its facts without the per-layer sensitivity list."""
    if not report:
        return None
    return {k: report.get(k) for k in ("min_retention", "status", "float_modules", "int8_compute_share",
                                       "retention_before", "retention_after", "agreement_before", "agreement_after")}


def row_latency(session: Any, samples: list, bench: BenchmarkConfig) -> list[LatencyMs]:
    """Latency at every configured batch size (smallest batch first)."""
    return [LatencyMs.from_stats(measure(session, samples, warmup=bench.warmup, min_runs=bench.min_runs,
                                         min_time_s=bench.min_time_s, threads=bench.threads, batch=batch))
            for batch in sorted(bench.batch_sizes)]


def _timing(lat: list[LatencyMs]) -> dict[str, Any]:
    return {"latency_ms": lat[0], "latency_by_batch": lat[1:], "throughput": 1000.0 * lat[-1].batch / lat[-1].p50}


def measure_rows(models: list[ModelEntry], quantized: list[Path], artifacts: list[Artifact], scoring: Scoring,
                 bench: BenchmarkConfig, student: ModelEntry | None, root: Path | None = None,
                 rescore_quantized: bool = True) -> list[ReportRow]:
    """Every row of the card, measured in order (models, quantized models, artifacts) under one progress bar.

    Args:
        models: the PyTorch models (teacher first by convention).
        quantized: folders of quantized models (`compress.quant` meta.json + model file).
        artifacts: exported artifacts (`export_model`'s list, or the export stage's index).
        scoring: the scored split and task.
        bench: latency settings (batch sizes, threads, warm-up, minimum runs and time).
        student: the fp32 model the artifacts were exported from (its preprocessing feeds them; its
            params and GFLOPs are theirs). None: artifacts take the raw samples as they are.
        root: the run folder (row paths relative to it).
        rescore_quantized: score quantized models on `scoring` (False: reuse their stored validation evaluation).
    """
    torch.set_num_threads(bench.threads)
    pre = student.preprocess if student is not None else _same
    inputs = pre(scoring.raw)
    cost = {"params": count_params(student.module), "gflops": gflops_per_sample(student.module, inputs[:1])} \
        if student is not None else {}
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    rows: list[ReportRow] = []
    with task_progress("benchmark", len(models) + len(quantized) + len(artifacts)) as bar:
        for entry in models:
            rows.append(model_row(entry, scoring, bench, root))
            bar.advance()
        for folder in quantized:
            rows.append(quantized_row(folder, samples, bench, cost, student, scoring if rescore_quantized else None,
                                      root))
            bar.advance()
        for artifact in artifacts:
            rows.append(artifact_row(artifact, samples, bench, pre, cost, scoring, root))
            bar.advance()
    return rows


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def model_row(entry: ModelEntry, scoring: Scoring, bench: BenchmarkConfig, root: Path | None) -> ReportRow:
    """A PyTorch model's row: params, size, GFLOPs, peak memory, latency, and its metrics on the split."""
    from export.formats.pytorch.runtime import TorchSession

    entry.module.eval()
    x = entry.preprocess(scoring.raw)
    session = TorchSession(entry.module)
    lat = row_latency(session, [s.unsqueeze(0).numpy() for s in x], bench)
    metrics, notes = entry.metrics, entry.metric_notes
    if metrics is None:
        outputs, targets = collect_outputs(entry.module, rechunk(scoring.batches(256), 256), entry.preprocess)
        metrics, notes = scoring.task.score(outputs, targets)
    size = artifact_size_mb([entry.path]) if entry.path is not None and Path(entry.path).is_file() \
        else round(sum(p.numel() * p.element_size() for p in entry.module.parameters()) / 1e6, 3)
    return ReportRow(name=entry.name, stage=entry.stage, format="pytorch", precision="fp32", runtime="torch",
                     source=entry.name, path=relative(entry.path, root), params=count_params(entry.module),
                     size_mb=size, gflops=gflops_per_sample(entry.module, x[:1]),
                     peak_mem_mb=peak_memory_mb(lambda: session.run(x[:1].numpy())), metrics=metrics,
                     metric_notes=notes, pruning=entry.pruning, **_timing(lat))


def quantized_row(folder: Path, samples: list, bench: BenchmarkConfig, cost: dict[str, Any],
                  student: ModelEntry | None, scoring: Scoring | None, root: Path | None) -> ReportRow:
    """A row for a quantized model: its evaluation, size, and latency where it runs as itself.

    Params and GFLOPs are the FP32 student's: quantization changes the storage, not the graph.
    With `scoring` it is scored on that split here; without, its stored (validation) evaluation is used."""
    from compress.quant.evaluate import evaluate_quantized
    from compress.quant.quantize import load_quantized
    from export.formats import get_runtime
    from export.formats.pytorch.runtime import TorchSession

    meta = read_json(folder / "meta.json")
    mode, backend = meta["mode"], meta["backend"]
    evaluation = meta.get("evaluation", {})
    if scoring is not None and student is not None and backend != "coreml":
        evaluation = evaluate_quantized(load_quantized(folder), student.module, rechunk(scoring.batches(256), 256),
                                        student.preprocess, scoring.task, write=False)
    path = folder / meta["file"]
    source = student.name if student is not None else "student_kd"  # the model it was quantized from
    common = dict(name=f"{source}.{mode}.{backend}", stage="quantized", precision="int8", source=source,
                  **cost, path=relative(path, root),
                  size_mb=artifact_size_mb([path]) if path.is_file() else meta.get("size_mb"),
                  metrics=evaluation.get("metrics") or {}, accuracy_aware=floor_summary(meta.get("accuracy_aware")))
    if backend == "coreml":
        return ReportRow(**common, format="coreml", runtime="coreml", status="skipped",
                         reason="CoreML prediction needs macOS; weights compressed, not run here")
    if backend == "executorch":  # a PT2E reference graph: it is timed as its .pte artifact, not here
        return ReportRow(**common, format="pytorch", runtime="torch", status="ok",
                         reason="PT2E reference model (simulated int8); timed as its ExecuTorch artifact")
    try:
        if backend == "onnx":
            session, fmt, runtime = get_runtime("onnxruntime").load(path, bench.threads), "onnx", "onnxruntime"
        else:
            session, fmt, runtime = TorchSession(load_quantized(folder).module), "pytorch", "torch"
        lat = row_latency(session, samples, bench)
    except Exception as e:  # noqa: BLE001  (a row fails; the report goes on)
        return ReportRow(**common, format="pytorch", runtime="torch", status="failed", reason=failure_reason(e))
    return ReportRow(**common, format=fmt, runtime=runtime, **_timing(lat))


def artifact_metrics(session: Any, scoring: Scoring, preprocess: Callable, batch: int,
                     fixed_batch: bool = False) -> tuple[dict[str, float | None], dict[str, str]]:
    """Task metrics (and notes on undefined ones) of an artifact over the scored split, `batch` rows at a time."""

    def run(batch_in: torch.Tensor) -> torch.Tensor:
        x = batch_in.numpy().astype(np.float32)
        if fixed_batch and len(x) < batch:  # a fixed-batch artifact: pad the last batch, keep the real rows
            pad = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
            return torch.from_numpy(np.asarray(session.run(pad))[: len(x)])
        return torch.from_numpy(np.asarray(session.run(x)))

    outputs, targets = collect_outputs(run, rechunk(scoring.batches(batch), batch), preprocess)
    return scoring.task.score(outputs.float(), targets)


def artifact_row(artifact: Artifact, samples: list, bench: BenchmarkConfig, preprocess: Callable,
                 cost: dict[str, Any], scoring: Scoring, root: Path | None) -> ReportRow:
    """A row for an exported artifact: loaded in its runtime, timed, and scored on the split."""
    from export.formats import get_runtime
    from export.verify import cannot_run_here, platform_status

    common = dict(name=artifact.name, stage="export", target=artifact.target, format=artifact.format,
                  precision=artifact.precision, runtime=artifact.runtime,
                  source=artifact.name.split(".", 1)[0],  # the model it was made from
                  path=relative(artifact.path, root), size_mb=artifact.size_mb, parity=artifact.parity, **cost,
                  accuracy_aware=floor_summary(artifact.info.get("accuracy_aware")),
                  notes=list(artifact.info.get("notes") or []))
    if artifact.status != "ok":
        return ReportRow(**common, status=artifact.status, reason=artifact.reason)
    reason = cannot_run_here(artifact)
    if reason is not None:  # e.g. CoreML, or ExecuTorch with the CoreML delegate, on Linux
        return ReportRow(**common, status="skipped", reason=f"{platform_status(reason)}: {reason}")
    try:
        runtime = get_runtime(artifact.runtime)
        session, load_ms = timed_load(lambda: runtime.load(Path(artifact.path), bench.threads))
        fixed_batch = None if artifact.info.get("dynamic_batch", True) else artifact.info.get("batch", EXPORT_BATCH)
        timing = bench if not fixed_batch else bench.model_copy(update={"batch_sizes": [fixed_batch]})
        lat = [stats.model_copy(update={"load_ms": load_ms}) for stats in row_latency(session, samples, timing)]
        # score in batches the artifact was planned for (ExecuTorch records its memory-planned max_batch)
        batch = fixed_batch or min(64, artifact.info.get("max_batch") or 64)
        metrics, metric_notes = artifact_metrics(session, scoring, preprocess, batch, fixed_batch=bool(fixed_batch))
        first = make_batches(samples, fixed_batch or 1)[0]
        peak = peak_memory_mb(lambda: session.run(first))
    except Exception as e:  # noqa: BLE001  (one artifact failing does not stop the report)
        return ReportRow(**common, status="failed", reason=failure_reason(e))
    return ReportRow(**common, metrics=metrics, metric_notes=metric_notes, peak_mem_mb=peak, **_timing(lat))
