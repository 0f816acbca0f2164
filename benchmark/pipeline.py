"""The whole pipeline on one run folder: distill → prune (when the recipe has it) → quantize → export → benchmark.

`kdtool run` and each sweep trial run it; each stage is skipped when its inputs did not change.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from compress.core.errors import ExportError


@dataclass
class PipelineResult:
    """What a pipeline run leaves besides its run folder.

    Attributes:
        timings: seconds per stage (the distillation's stages by name, then prune, quantize, export,
            benchmark) and `total`.
        export_failure: the export error, when one target failed; the report still shows every artifact,
            the failed ones with their reason.
    """

    timings: dict[str, float] = field(default_factory=dict)
    export_failure: ExportError | None = None


def run_pipeline(ctx: Any, force: bool = False, resume: bool = False, wide: bool = False) -> PipelineResult:
    """Run every stage of the recipe in `ctx` into its run folder.

    Args:
        ctx: the run's `Context` (recipe, run folder, optional epoch callback and shared teacher cache).
        force: rerun every stage even when its inputs did not change.
        resume: continue an interrupted training stage exactly.
        wide: the benchmark's report card shows every column.
    """
    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from benchmark.stage import run_benchmark
    from compress.distill.stage import run_distill
    from compress.quant.stage import run_quantize
    from export.stage import run_export

    result = PipelineResult()
    timings = result.timings
    start = time.perf_counter()
    for outcome in run_distill(ctx, "both", force=force, resume=resume):
        timings[outcome.name] = outcome.seconds
    if ctx.recipe.prune is not None:  # the pruned student is what quantize and export then take
        from compress.prune.stage import run_prune

        t0 = time.perf_counter()
        run_prune(ctx, force=force, resume=resume)
        timings["prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_quantize(ctx, None, force=force)
    timings["quantize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        run_export(ctx, force=force)
    except ExportError as e:  # other artifacts may still be verified: the report card decides
        result.export_failure = e
    timings["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_benchmark(ctx, force=force, wide=wide)
    timings["benchmark"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    return result
