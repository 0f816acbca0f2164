"""`run_sweep`: what `kdtool sweep` does, in order; every check before any training.

1. objectives, constraints, the recipe, the space (against the schema), the target, the sweep folder;
2. the storage (reachable) or the Ray cluster (installed, answering);
3. the shared teacher, then the trials (local workers on the study, or Ray Tune);
4. trials.csv, sweep.json, sweep.html and the card.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.sweep.objectives import directions, parse_constraints, parse_objectives
from benchmark.sweep.space import parse_space, read_space, recipe_point
from benchmark.sweep.storage import default_url, masked, open_storage
from benchmark.sweep.study import SweepSpec, folder_lock, run_local, shared_teacher
from compress.core.atomic import read_json, write_json
from compress.core.errors import KdtoolError
from compress.core.progress import console

FINGERPRINT = "sweep_spec.json"


@dataclass
class SweepArgs:
    """The command's arguments (typed; the CLI fills it)."""

    recipe: str | None = None
    overrides: list[str] | None = None
    space: Path | None = None
    out: Path = Path("runs")
    trials: int = 10
    workers: int | None = None
    study: str | None = None
    storage: str | None = None
    backend: str = "local"
    ray_address: str | None = None
    target: str | None = None
    objectives: list[str] | None = None
    constraints: list[str] | None = None
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    promote: int | None = None
    promote_to: Path | None = None
    force: bool = False


def build_spec(args: SweepArgs) -> tuple[SweepSpec, Any]:
    """Validate every argument and the space (no training, nothing written). Returns (spec, recipe).

    Raises:
        KdtoolError: the first problem, in one line (exit 2).
    """
    from compress.core.runfolder import check_writable
    from compress.core.tasks import Task, lower_is_better
    from export.targets import TARGETS
    from recipes.load import load_recipe

    objectives = parse_objectives(args.objectives)
    constraints = parse_constraints(args.constraints)
    if args.trials < 1:
        raise KdtoolError(f"--trials {args.trials}: a sweep needs at least one trial")
    if args.sampler not in ("tpe", "nsga2"):
        raise KdtoolError(f"--sampler {args.sampler!r}: unknown", "tpe or nsga2")
    if args.backend not in ("local", "ray"):
        raise KdtoolError(f"--backend {args.backend!r}: unknown", "local or ray")
    if args.pruner not in ("median", "hyperband", "none"):
        raise KdtoolError(f"--pruner {args.pruner!r}: unknown", "median, hyperband or none")
    if args.pruner == "hyperband" and len(objectives) > 1:
        raise KdtoolError("--pruner hyperband needs one objective (Optuna prunes single-objective studies only)",
                          "use --pruner median (the median rule is applied to multi-objective sweeps) or one "
                          "--objective")
    recipe, _, raw = load_recipe(args.recipe, args.overrides)
    params = parse_space(read_space(args.space, raw), raw)
    target = args.target or recipe.export.targets[0]
    if target not in TARGETS:
        raise KdtoolError(f"--target {target!r}: unknown", f"one of {', '.join(TARGETS)}")
    check_writable(args.out)
    study = args.study or f"{recipe.name}-sweep"
    sweep_dir = Path(args.out) / study
    kd = recipe.distill.train or recipe.student.train
    threads = max(kd.threads, recipe.benchmark.threads)
    cores = os.cpu_count() or 1
    workers = args.workers or max(1, cores // threads)
    if workers < 1:
        raise KdtoolError(f"--workers {workers}: at least 1")
    if workers * threads > cores:
        console.print(f"[yellow]--workers {workers} × {threads} threads > {cores} cores: trials share cores, "
                      "their latencies are measured on a busy machine[/]")
    cache_shared = recipe.distill.cache.enabled and not any(
        p.path.startswith(("data.", "distill.cache", "distill.train", "student.train")) for p in params)
    primary = Task.from_config(recipe.task).primary_metric
    spec = SweepSpec(raw_recipe=raw, name=recipe.name, params=params, sweep_dir=sweep_dir, study_name=study,
                     storage_url=args.storage or default_url(sweep_dir), target=target, objectives=objectives,
                     constraints=constraints, sampler=args.sampler, seed=args.seed, trials=args.trials,
                     workers=workers, pruner=args.pruner, primary_metric=primary,
                     lower_is_better=lower_is_better(primary),
                     teacher_cache_dir=(sweep_dir / "teacher_cache").resolve() if cache_shared else None,
                     extra={"epochs": kd.epochs, "threads": threads, "device": kd.device})
    return spec, recipe


def _check_folder(spec: SweepSpec, force: bool) -> None:
    """A sweep folder holds one study: another recipe, space, target or objectives is refused (nothing lost)."""
    path = spec.sweep_dir / FINGERPRINT
    mine = json.loads(json.dumps(spec.fingerprint()))  # as read back (tuples are lists in JSON)
    if path.exists() and read_json(path) != mine and not force:
        raise KdtoolError(f"{spec.sweep_dir} holds a sweep of another recipe, space, target or objectives",
                          "name another study with --study NAME (its own folder), or --force to add to this one "
                          "(same objectives and space only)")


def run_sweep(args: SweepArgs) -> dict[str, Any]:
    """`kdtool sweep`: validate, share the teacher, run the trials, write the results, print the card.

    Returns:
        The sweep.json object.
    """
    spec, recipe = build_spec(args)
    if args.promote is not None:
        return _promote(spec, args)
    if args.backend == "ray":
        from benchmark.sweep.ray_backend import connect

        ray = connect(args.ray_address)  # before anything is written or trained
        _check_folder(spec, args.force)
        write_json(spec.sweep_dir / FINGERPRINT, spec.fingerprint())
        return _run_ray(spec, recipe, ray)
    storage = open_storage(spec.storage_url) if args.storage else None  # reachable, before the folder is made
    _check_folder(spec, args.force)
    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(spec.sweep_dir / ".study.lock"):  # SQLite: one process makes the tables
        storage = storage or open_storage(spec.storage_url)
    write_json(spec.sweep_dir / FINGERPRINT, spec.fingerprint())
    write_json(spec.sweep_dir / "recipe.json", {k: v for k, v in spec.raw_recipe.items()})
    study = run_local(spec, storage, recipe)
    from benchmark.sweep.results import importances, records_from_study

    return finish(spec, records_from_study(study), importances(study, list(spec.objectives)))


def _run_ray(spec: SweepSpec, recipe: Any, ray: Any) -> dict[str, Any]:
    from benchmark.sweep.ray_backend import run_ray, trial_resources

    spec.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json(spec.sweep_dir / "recipe.json", dict(spec.raw_recipe))
    teacher = shared_teacher(spec, recipe)
    resources = trial_resources(spec, ray)
    records = run_ray(spec, teacher, recipe_point(spec.raw_recipe, spec.params), resources, ray)
    return finish(spec, records, {"note": "importances are computed for local/RDB studies (Ray keeps its own)"})


def finish(spec: SweepSpec, records: list[dict[str, Any]], imp: dict[str, Any]) -> dict[str, Any]:
    """Write trials.csv, sweep.json and sweep.html; print the card."""
    from benchmark.sweep.card import print_sweep_card
    from benchmark.sweep.html import write_html
    from benchmark.sweep.results import write_results
    from compress.core.progress import stdout_console

    header = {"study": spec.study_name, "recipe": spec.name, "target": spec.target,
              "objectives": list(spec.objectives),
              "directions": directions(spec.objectives, spec.lower_is_better),
              "constraints": [str(c) for c in spec.constraints], "storage": masked(spec.storage_url),
              "sampler": spec.sampler, "seed": spec.seed, "primary_metric": spec.primary_metric,
              "space": [{**p.__dict__, "choices": list(p.choices)} for p in spec.params]}
    data = write_results(spec.sweep_dir, header, records, imp)
    html_path = write_html(data, spec.sweep_dir / "sweep.html")
    print_sweep_card(data, stdout_console())
    console.print(f"sweep: {spec.sweep_dir / 'trials.csv'}  {spec.sweep_dir / 'sweep.json'}  {html_path}")
    return data


def _promote(spec: SweepSpec, args: SweepArgs) -> dict[str, Any]:
    from benchmark.sweep.promote import promote
    from benchmark.sweep.results import load_sweep

    if not (spec.sweep_dir / "sweep.json").exists():
        raise KdtoolError(f"{spec.sweep_dir} has no sweep.json", "run the sweep first (same command without --promote)")
    data = load_sweep(spec.sweep_dir)
    base = read_json(spec.sweep_dir / "recipe.json")
    dest = promote(data, base, args.promote, args.promote_to, force=args.force)
    console.print(f"wrote {dest} (trial {args.promote}); run it: kdtool run {dest}")
    return data


def print_saved_card(path: Path) -> None:
    """`kdtool report SWEEP_DIR`: print the card of a finished sweep again."""
    from benchmark.sweep.card import print_sweep_card
    from benchmark.sweep.results import load_sweep
    from compress.core.progress import stdout_console

    print_sweep_card(load_sweep(path), stdout_console())
