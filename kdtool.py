"""kdtool: teacher → small student → on-device artifact, with a report card you can trust.

The CLI is thin: parse, load the recipe, call a stage, map errors to exit codes
(0 ok · 1 internal error · 2 bad input · 3 non-finite loss · 4 export/parity · 5 CI gate).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# Pin our top-level packages before any library can shadow them: onnxruntime.transformers appends
# its folder (which holds a `benchmark.py`) to sys.path when ONNX quantization imports it.
for _package in ("benchmark", "compress", "export", "recipes"):
    importlib.import_module(_package)

if TYPE_CHECKING:
    from compress.context import Context

# plain click help: `--wide` and `--target TARGET` read like a person's CLI (typer's rich help prints <bool>)
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Distill a teacher into a small student, quantize, export, benchmark: one command.")

RecipeArg = Annotated[str | None, typer.Argument(metavar="RECIPE",
                                                help="recipe file or shipped name (default: quickstart)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY=VALUE",
                                                  help="override a recipe key, e.g. distill.temperature=4")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", metavar="DIR",
                                      help="runs folder; the run goes to DIR/<recipe name>")]
ForceOpt = Annotated[bool, typer.Option("--force", help="overwrite outputs made from other inputs")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks and native libraries' output")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="show library logs and warnings (no tracebacks)")]
WideOpt = Annotated[bool, typer.Option("--wide", help="print every column of the card (the files always have them)")]
DeterministicOpt = Annotated[bool, typer.Option(
    "--deterministic", help="bit-identical reruns on this machine (deterministic kernels, seeded RNGs)")]


class Stage(StrEnum):
    baseline = "baseline"
    kd = "kd"
    both = "both"


class QuantMode(StrEnum):
    dynamic = "dynamic"
    static = "static"
    qat = "qat"


def _fail(exc: BaseException, debug: bool) -> None:
    """Map an exception to one line and an exit code (a traceback only for bugs or --debug)."""
    from compress.core.errors import EXIT_INTERNAL, KdtoolError

    if isinstance(exc, KdtoolError):
        if debug:
            traceback.print_exception(exc)
        print(exc.line(), file=sys.stderr)  # always one line
        raise typer.Exit(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        print("kdtool: interrupted; finished stages are kept (to continue: add --resume to `kdtool run`, "
              "`kdtool distill` or `kdtool prune`; other commands, `kdtool sweep` included, just rerun)",
              file=sys.stderr)
        raise typer.Exit(130)
    traceback.print_exception(exc)
    print("kdtool: internal error (a bug): please report it with the traceback above", file=sys.stderr)
    raise typer.Exit(EXIT_INTERNAL)


def _context(recipe: str | None, overrides: list[str] | None, out: Path) -> Context:
    """Validate the recipe and the runs folder first (light imports: errors in < 1.5 s), then build the Context."""
    from compress.core.runfolder import check_writable
    from recipes.load import load_recipe

    r, path, raw = load_recipe(recipe, overrides)
    from export.names import check_names

    check_names(r)
    check_writable(out)
    from compress.context import Context
    from compress.core.atomic import sha256_json
    from compress.core.progress import console
    from compress.core.runfolder import RunFolder

    console.print(f"[bold]{r.name}[/] from {path}")
    return Context(r, RunFolder.for_recipe(out, r.name), recipe_sha=sha256_json(raw), recipe_arg=recipe)


def _guard(debug: bool, fn, *args, out: Path | None = None, **kwargs):
    """Run a command; on failure remove the empty folders it made under `out` and map the error."""
    before = _folders(out)
    try:
        return fn(*args, **kwargs)
    except typer.Exit:
        raise
    except BaseException as exc:  # noqa: BLE001  (mapped to exit codes in one place)
        if out is not None:
            _remove_new_empty_folders(out, before)
        _fail(exc, debug)


def _folders(root: Path | None) -> set[Path]:
    if root is None or not root.is_dir():
        return set()
    return {root, *(p for p in root.rglob("*") if p.is_dir())}


def _remove_new_empty_folders(root: Path, before: set[Path]) -> None:
    """A failed command leaves no trace: folders it created and left empty go (deepest first)."""
    for folder in sorted(_folders(root) - before, key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def _set_deterministic() -> None:
    """`--deterministic`: deterministic kernels only (an op without one fails), seeded RNGs, no autotuning."""
    import random

    import numpy as np
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic GEMMs
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)  # each training stage then reseeds with its train.seed


@app.command()
def run(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"), force: ForceOpt = False,
        resume: Annotated[bool, typer.Option(help="continue interrupted stages")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="validate, build models, probe shapes; no training")]
        = False, deterministic: DeterministicOpt = False, wide: WideOpt = False, debug: DebugOpt = False,
        verbose: VerboseOpt = False) -> None:
    """Run every stage of a recipe: distill → (prune) → quantize → export → benchmark → report card."""

    def go():
        if deterministic:
            _set_deterministic()
        ctx = _context(recipe, set_, out)
        if dry_run:
            from compress.distill.dryrun import dry_run as probe

            return probe(ctx)
        return _run_all(ctx, force=force, resume=resume, wide=wide)

    _guard(debug, go, out=out)


def _run_all(ctx: Context, force: bool, resume: bool, wide: bool = False) -> dict[str, float]:
    """distill → prune (when the recipe has it) → quantize → export → benchmark, each stage skipped when its
    inputs did not change (`benchmark.pipeline.run_pipeline`); prints the timings, then raises an export
    failure."""
    from benchmark.pipeline import run_pipeline
    from compress.core.progress import console

    result = run_pipeline(ctx, force=force, resume=resume, wide=wide)
    console.print("stage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items()))
    if result.export_failure is not None:
        raise result.export_failure
    return result.timings


@app.command()
def distill(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
            stage: Annotated[Stage, typer.Option(help="baseline (stage 1), kd (stage 2) or both")] = Stage.both,
            resume: Annotated[bool, typer.Option(help="continue an interrupted stage exactly")] = False,
            ablate: Annotated[int, typer.Option(help="train baseline and KD over N seeds; report mean ± std")] = 0,
            folds: Annotated[int, typer.Option(help="with --ablate: score each seed by K-fold cross-validation "
                                                    "(a teacher per fold; every sample validated once)")] = 1,
            force: ForceOpt = False, deterministic: DeterministicOpt = False,
            debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Train the teacher (if needed), the student baseline, and the distilled student."""

    def go():
        if deterministic:
            _set_deterministic()
        if folds != 1 and not ablate:
            from compress.core.errors import KdtoolError

            raise KdtoolError(f"--folds {folds} is only used by the ablation", "add --ablate N (seeds), e.g. "
                              "`kdtool distill --ablate 5 --folds 4`")
        ctx = _context(recipe, set_, out)
        if ablate:
            from compress.distill.ablation import run_ablation

            return run_ablation(ctx, seeds=ablate, force=force, folds=folds)
        from compress.distill.stage import run_distill

        return run_distill(ctx, stage.value, force=force, resume=resume)

    _guard(debug, go, out=out)


@app.command()
def prune(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
          resume: Annotated[bool, typer.Option(help="continue an interrupted pruning/recovery")] = False,
          force: ForceOpt = False, debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Prune the distilled student's channels (recipe `prune:`) and recover it with the teacher."""

    def go():
        ctx = _context(recipe, set_, out)
        from compress.prune.stage import run_prune

        return run_prune(ctx, force=force, resume=resume)

    _guard(debug, go, out=out)


@app.command()
def quantize(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
             mode: Annotated[list[QuantMode] | None, typer.Option(metavar="MODE",
                                                                  help="dynamic, static or qat (repeatable)")] = None,
             force: ForceOpt = False, debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Quantize the distilled student to INT8 (dynamic, static PTQ, or QAT with the teacher)."""

    def go():
        ctx = _context(recipe, set_, out)
        import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
        from compress.quant.stage import run_quantize

        return run_quantize(ctx, [m.value for m in mode] if mode else None, force=force)

    _guard(debug, go, out=out)


@app.command()
def export(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
           target: Annotated[list[str] | None, typer.Option(metavar="TARGET",
                                                            help="android, ios, server or all (repeatable)")] = None,
           format_: Annotated[str | None, typer.Option("--format", metavar="FORMATS",
                                                       help="comma-separated formats; overrides presets")]
           = None, force: ForceOpt = False, debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Export the student (and its INT8 versions) for the target devices, verified by parity."""
    formats = [f.strip() for f in format_.split(",")] if format_ else None

    def go():
        from export.targets import check_names

        check_names(target, formats)  # before the recipe, the run folder or torch
        ctx = _context(recipe, set_, out)
        from export.stage import run_export

        return run_export(ctx, targets=target, formats=formats, force=force)

    _guard(debug, go, out=out)


@app.command()
def benchmark(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
              baseline: Annotated[Path | None, typer.Option(metavar="REPORT_JSON",
                                                            help="an earlier report.json to compare with")] = None,
              max_regression: Annotated[float | None, typer.Option(
                  metavar="FRACTION", help="fail (exit 5) when latency or metric is worse than the baseline by "
                                           "more, e.g. 0.05")] = None,
              min_retention: Annotated[float | None, typer.Option(
                  metavar="FRACTION", help="fail (exit 5) when an artifact keeps less of the teacher's metric, "
                                           "e.g. 0.97")] = None,
              force: ForceOpt = False, wide: WideOpt = False, debug: DebugOpt = False,
              verbose: VerboseOpt = False) -> None:
    """Measure every model and artifact; write the report card (json, md, html); apply CI gates."""

    def go():
        from benchmark.gates import check_gate_args

        check_gate_args(baseline, max_regression, min_retention)  # before the recipe, the run folder or torch
        ctx = _context(recipe, set_, out)
        from benchmark.stage import run_benchmark

        return run_benchmark(ctx, baseline=baseline, max_regression=max_regression, min_retention=min_retention,
                             force=force, wide=wide)

    _guard(debug, go, out=out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="a run folder (runs/<recipe name>) "
                                                   "or its report.json")],
           wide: WideOpt = False, debug: DebugOpt = False) -> None:
    """Print the report card of an earlier run again (compact, sized to the terminal)."""

    def go():
        from benchmark.report.card import load_report
        from benchmark.report.console import print_card
        from compress.core.progress import stdout_console

        if (run_dir / "sweep.json").is_file() or run_dir.name == "sweep.json":  # a sweep folder: its card
            from benchmark.sweep.run import print_saved_card

            return print_saved_card(run_dir)
        path = run_dir if run_dir.suffix == ".json" else run_dir / "report" / "report.json"
        if not path.is_file() and not run_dir.exists():
            from compress.core.errors import KdtoolError

            raise KdtoolError(f"{run_dir} does not exist", "pass a run folder, e.g. runs/quickstart")
        if not path.is_file():
            from compress.core.errors import KdtoolError

            raise KdtoolError(f"{run_dir} has no report/report.json", "run `kdtool benchmark` (or `kdtool run`) first")
        print_card(load_report(path), stdout_console(), wide=wide)

    _guard(debug, go)


@app.command()
def sweep(recipe: RecipeArg = None, set_: SetOpt = None, out: OutOpt = Path("runs"),
          space: Annotated[Path | None, typer.Option(metavar="FILE", help="search space YAML (default: the "
                                                     "recipe's sweep section)")] = None,
          trials: Annotated[int, typer.Option(metavar="N", help="trials in the study (a rerun resumes to N)")] = 10,
          workers: Annotated[int | None, typer.Option(metavar="K", help="trials at a time on this machine "
                                                      "(default: cores // threads)")] = None,
          study: Annotated[str | None, typer.Option(metavar="NAME", help="study name and folder under --out "
                                                    "(default: <recipe name>-sweep)")] = None,
          storage: Annotated[str | None, typer.Option(metavar="URL", help="SQLAlchemy URL shared by machines, "
                                                      "e.g. postgresql://user:pw@host/db (default: SQLite in "
                                                      "the sweep folder)")] = None,
          backend: Annotated[str, typer.Option(metavar="local|ray", help="run trials here or on a Ray "
                                               "cluster")] = "local",
          ray_address: Annotated[str | None, typer.Option(metavar="ADDRESS", help="Ray cluster (default auto)")]
          = None,
          target: Annotated[str | None, typer.Option(metavar="TARGET", help="android, ios or server (default: "
                                                     "the recipe's first target)")] = None,
          objective: Annotated[list[str] | None, typer.Option(metavar="NAME", help="retention, p50_ms, size_mb, "
                                                              "metric (repeatable; default retention, p50_ms)")]
          = None,
          constraint: Annotated[list[str] | None, typer.Option(metavar="EXPR", help="e.g. 'p50_ms<=10', "
                                                               "'retention>=0.97' (repeatable)")] = None,
          sampler: Annotated[str, typer.Option(metavar="tpe|nsga2", help="Optuna sampler")] = "tpe",
          seed: Annotated[int, typer.Option(help="sampler seed")] = 0,
          pruner: Annotated[str, typer.Option(metavar="median|hyperband|none", help="stop poor trials early "
                                              "from per-epoch validation")] = "median",
          promote: Annotated[int | None, typer.Option(metavar="TRIAL", help="write that trial as a recipe file "
                                                      "and stop")] = None,
          promote_to: Annotated[Path | None, typer.Option(metavar="FILE", help="with --promote: the file")] = None,
          force: ForceOpt = False, debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Search student, KD, int8 and runtime settings against a target: a Pareto front of whole runs."""

    def go():
        from benchmark.sweep.run import SweepArgs, run_sweep

        return run_sweep(SweepArgs(recipe, set_, space, out, trials, workers, study, storage, backend, ray_address,
                                   target, objective, constraint, sampler, seed, pruner, promote, promote_to, force))

    _guard(debug, go, out=out)


@app.command()
def predict(artifact: Annotated[Path, typer.Argument(metavar="ARTIFACT", help=".pte, .onnx, .pt, .pt2, .mlpackage, "
                                                     ".tflite, .xml (or its folder), or a run's stage folder "
                                                     "(checkpoint)")],
            inputs: Annotated[list[Path], typer.Argument(metavar="INPUT...", help="image or .wav files, folders, "
                                                         "or a CSV of paths")],
            top_k: Annotated[int, typer.Option("--top-k", metavar="K", min=1, help="classes shown (multiclass)")] = 3,
            json_: Annotated[bool, typer.Option("--json", help="print JSON (one object per input)")] = False,
            threads: Annotated[int, typer.Option(metavar="N", min=1, help="intra-op threads")] = 2,
            resample: Annotated[bool, typer.Option("--resample/--no-resample", help="resample .wav files of "
                                                   "another rate (else: error)")] = True,
            recipe: Annotated[str | None, typer.Option(metavar="RECIPE", help="for a checkpoint: its recipe "
                                                       "(default: the run folder's name)")] = None,
            verify: Annotated[bool, typer.Option("--verify/--no-verify", help="check the artifact's sha256 "
                                                 "against its manifest (default) or skip the check")] = True,
            debug: DebugOpt = False, verbose: VerboseOpt = False) -> None:
    """Run an exported artifact on your own files: one line per input (label and score)."""

    def go():
        import json

        from export.predict import line
        from export.predict import predict as run_predict

        results = run_predict(artifact, inputs, top_k=top_k, threads=threads, resample=resample, recipe=recipe,
                              verify=verify)
        for result in results:
            print(json.dumps(result) if json_ else line(Path(result["input"]), result))

    _guard(debug, go)


@app.command(name="ls")
def ls(what: Annotated[str, typer.Argument(help="losses, exporters, runtimes, quantizers, models, sources")]) -> None:
    """List registered KD losses, exporters, runtimes, quantization modes, local models or data sources."""
    regs = _registries()
    if what not in regs:
        print(f"kdtool: error: unknown list {what!r} (hint: one of {', '.join(regs)})", file=sys.stderr)
        raise typer.Exit(2)
    for name, doc in regs[what].describe().items():
        print(f"{name:<22} {doc}")


def _registries() -> dict:
    """Every registry `kdtool ls` can print (importing a package registers its entries)."""
    import compress.data.files  # noqa: F401
    import compress.data.synthetic  # noqa: F401
    import compress.models.audio  # noqa: F401
    import compress.models.wrn  # noqa: F401
    import export.formats  # noqa: F401
    from compress.data.registry import DATA_SOURCES
    from compress.distill.losses import LOSSES
    from compress.models.registry import LOCAL_MODELS
    from compress.quant.quantize import QUANT_MODES
    from export.registry import EXPORTERS
    from export.runtime import RUNTIMES

    return {"losses": LOSSES, "models": LOCAL_MODELS, "sources": DATA_SOURCES, "quantizers": QUANT_MODES,
            "exporters": EXPORTERS, "runtimes": RUNTIMES}


@app.command()
def recipes() -> None:
    """List the shipped recipes."""
    from recipes.load import list_recipes

    for name, path in list_recipes().items():
        first = next((ln.lstrip("# ").strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{name:<34} {first}")


@app.command()
def init(name: Annotated[str, typer.Argument(help="file to create, e.g. my_detector.yaml")],
         from_: Annotated[str, typer.Option("--from", help="shipped recipe to copy")] = "quickstart",
         force: ForceOpt = False, debug: DebugOpt = False) -> None:
    """Copy a shipped recipe to edit (never overwrites without --force)."""
    from compress.core.atomic import write_text
    from compress.core.errors import KdtoolError
    from recipes.load import list_recipes, resolve_recipe_path

    def go():
        shipped = list_recipes()
        match = [k for k in shipped if k == from_ or k.startswith(from_)]
        src = shipped[match[0]] if match else resolve_recipe_path(from_)
        dest = Path(name if name.endswith((".yaml", ".yml")) else name + ".yaml")
        if dest.exists() and not force:
            raise KdtoolError(f"{dest} exists", "pass --force to overwrite it or choose another name")
        lines = src.read_text().splitlines(keepends=True)
        if lines and lines[0].startswith("# kdtool"):
            lines[0] = f"# kdtool run {dest}\n"
        run_name = re.sub(r"[^A-Za-z0-9_.-]", "_", dest.stem)  # its own run folder, not the source's
        lines = [f"name: {run_name}\n" if ln.startswith("name:") else ln for ln in lines]
        write_text(dest, "".join(lines))
        print(f"wrote {dest} (from {src.name}); edit it, then: kdtool run {dest}")

    _guard(debug, go)


def _quiet_libraries() -> None:
    """Library chatter hidden: Python logs and warnings unless -v/--verbose or --debug, native prints
    (ExecuTorch cpuinfo/threadpool, coremltools; `compress.core.native`) unless --debug."""
    import logging
    import warnings

    if "--debug" in sys.argv:
        os.environ["KDTOOL_DEBUG"] = "1"
        return
    os.environ.setdefault("TORCH_LOGS", "-all")  # torch resets its loggers' levels on import: errors only
    if "-v" in sys.argv or "--verbose" in sys.argv:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.ERROR)
    for noisy in ("torch", "executorch", "coremltools", "onnxruntime", "onnxscript", "torchao"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("compress").setLevel(logging.WARNING)


def main() -> None:
    """Console-script entry point."""
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
