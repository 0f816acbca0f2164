"""The local/RDB driver: one Optuna study, K trial processes at a time on this machine, resumable.

`kdtool sweep` validates everything first (space, objectives, constraints, storage), trains or loads
the teacher once into `<sweep>/teacher/`, then lets Optuna propose trials until the study holds
`--trials` of them. Trials of a process that died on this machine (Ctrl-C, kill) are failed and
their parameters queued again on the next start; a worker that died on another machine is found by
Optuna's heartbeat and re-queued the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmark.sweep.objectives import Constraint
from benchmark.sweep.space import Param, apply_params, recipe_point
from benchmark.sweep.storage import masked
from benchmark.sweep.trial import run_trial_process
from compress.core.atomic import write_json, write_text
from compress.core.errors import KdtoolError
from compress.core.progress import console

HOST = socket.gethostname()


@dataclass
class SweepSpec:
    """Everything a sweep was asked for, validated."""

    raw_recipe: dict[str, Any]
    name: str
    params: list[Param]
    sweep_dir: Path
    study_name: str
    storage_url: str
    target: str
    objectives: tuple[str, ...]
    constraints: tuple[Constraint, ...]
    sampler: str = "tpe"
    seed: int = 0
    trials: int = 10
    workers: int = 1
    pruner: str = "median"
    primary_metric: str = "accuracy"
    lower_is_better: bool = False
    teacher_cache_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        """What makes two runs of the command the same study (the sweep folder refuses another)."""
        base = {k: v for k, v in self.raw_recipe.items() if k != "sweep"}
        return {"recipe": base, "space": [p.__dict__ for p in self.params], "target": self.target,
                "objectives": list(self.objectives), "study": self.study_name}


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (recorded; the sweep goes on)."""


class StudyFull(TrialFailed):
    """Another process filled the study first: this worker stops asking."""


class Interrupted(KdtoolError):
    """The trial's process was interrupted with the sweep: queued again on the next start."""

    def __init__(self, number: int) -> None:
        super().__init__(f"trial {number} was interrupted", "rerun the same command: the sweep resumes, "
                         "the interrupted trial runs again", exit_code=130)


PRUNE_STARTUP = 5
"""Completed trials a trial is compared with before the median rule may stop it (Optuna's MedianPruner default)."""


def prune_warmup(epochs: int) -> int:
    """Epochs never judged by the pruner: the first third of the distillation, at least the first.

    Early validation metrics swing while the learning rate warms up: on the quickstart (10 epochs) the
    completed trials stood at a median 0.30 accuracy after epoch 2 and ended at 0.96-1.00 retention;
    judging from epoch 2 on after 3 completed trials stopped 11 of the first 15 trials on that noise.
    """
    return max(1, epochs // 3)


def sampler_for(spec: SweepSpec, constraints: bool = True) -> Any:
    """TPE or NSGA-II, seeded, with the constraints (Optuna's `constraints_func`).

    Args:
        constraints: pass the constraints to the sampler (False where the trials cannot carry their
            constraint values, as with Ray: the constraints are then applied to the results).
    """
    import optuna

    cf = _constraints_func if spec.constraints and constraints else None
    if spec.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=spec.seed, constraints_func=cf,
                                             population_size=max(4, min(50, spec.trials // 3)))
    return optuna.samplers.TPESampler(seed=spec.seed, constraints_func=cf,
                                      n_startup_trials=max(2, min(10, spec.trials // 3)))


def _constraints_func(trial: Any) -> list[float]:
    return list(trial.user_attrs.get("constraints", [1.0]))


def open_study(spec: SweepSpec, storage: Any) -> Any:
    """Create or join the study (same name, same directions, same space).

    Raises:
        KdtoolError: the stored study of that name has other objectives or another space (its trials could
            not be compared with this sweep's): name a new study.
    """
    import optuna

    from benchmark.sweep.objectives import directions

    wanted = directions(spec.objectives, spec.lower_is_better)
    try:
        stored = optuna.load_study(study_name=spec.study_name, storage=storage)
    except KeyError:
        stored = None
    if stored is not None:
        _check_same_study(spec, stored, wanted)
    return optuna.create_study(study_name=spec.study_name, storage=storage, load_if_exists=True,
                               directions=wanted, sampler=sampler_for(spec))


def _check_same_study(spec: SweepSpec, stored: Any, wanted: list[str]) -> None:
    """Refuse to join a study made with other directions or other distributions for the searched keys."""
    have = [d.name.lower() for d in stored.directions]
    problem = None
    if have != wanted:
        problem = f"its directions are {', '.join(have)}, these objectives want {', '.join(wanted)}"
    ours = {p.path: p.distribution() for p in spec.params}
    for t in stored.get_trials(deepcopy=False):
        changed = next((k for k, d in t.distributions.items() if ours.get(k) != d), None)
        if problem is None and changed is not None:
            problem = (f"trial {t.number} searched {changed} over {t.distributions[changed]}, this space "
                       f"{'over ' + str(ours[changed]) if changed in ours else 'does not search it'}")
    if problem:
        raise KdtoolError(f"study {spec.study_name} in {masked(spec.storage_url)} was made by another sweep: "
                          f"{problem}", "name a new study with --study NAME (--force does not mix two sweeps' "
                          "trials in one study)")


def recover(study: Any, storage: Any) -> int:
    """Fail this machine's trials whose process is gone, queue every interrupted trial's parameters again.

    Returns:
        How many trials were queued again.
    """
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == HOST and not _alive(t.user_attrs.get("pid")):
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials} | {t.system_attrs.get("failed_trial") for t in trials}
    queued = 0
    for t in trials:
        if t.state == TrialState.FAIL and _interrupted(t) and t.number not in retried and t.params:
            kept = {"recipe_point": True} if t.user_attrs.get("recipe_point") else {}
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number, **kept})
            queued += 1
    return queued


def _interrupted(t: Any) -> bool:
    """A failed trial that did not fail for a reason of its own (killed, Ctrl-C): it runs again."""
    return bool(t.user_attrs.get("interrupted")) or ("reason" not in t.user_attrs and
                                                     "failed_trial" not in t.system_attrs)


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(study: Any) -> list[Any]:
    """The trials that count towards `--trials`: done, running or queued; not interrupted ones (their
    retry counts) nor surplus ones (asked for after the study was full)."""
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if not (t.state == TrialState.FAIL and (_interrupted(t) or t.user_attrs.get("surplus")))]


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (a file): two commands on one sweep folder train one teacher."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def shared_teacher(spec: SweepSpec, recipe: Any) -> Path:
    """The teacher every trial distils from: the recipe's checkpoint, else trained once into `<sweep>/teacher`."""
    if recipe.teacher.self_distill:
        raise KdtoolError("teacher.self_distill: each trial's teacher would be its own baseline, not one shared "
                          "teacher", "sweep a recipe with a teacher (a checkpoint or a train section)")
    if recipe.teacher.checkpoint is not None:
        return Path(recipe.teacher.checkpoint).resolve()
    from compress.context import Context
    from compress.core.atomic import sha256_json
    from compress.core.runfolder import RunFolder
    from compress.distill.stage import run_teacher

    with folder_lock(spec.sweep_dir / ".teacher.lock"):
        base = {k: v for k, v in spec.raw_recipe.items() if k != "sweep"}
        ctx = Context(recipe, RunFolder(spec.sweep_dir), recipe_sha=sha256_json(base))
        run_teacher(ctx)  # reused when `<sweep>/teacher` is already made from these inputs
    return (spec.sweep_dir / "teacher" / "best.safetensors").resolve()


def trial_recipe(spec: SweepSpec, values: dict[str, Any], number: int, teacher: Path) -> dict[str, Any]:
    """A trial's recipe: the trial's values, the shared teacher, the sweep's target only."""
    raw = apply_params(spec.raw_recipe, spec.params, values)
    raw["name"] = f"{spec.name}-trial{number:04d}"
    kept = {k: v for k, v in raw["teacher"].items() if k not in ("train", "pretrained", "pretrained_file")}
    raw["teacher"] = {**kept, "checkpoint": str(teacher)}  # the shared teacher, never trained again
    raw.setdefault("export", {})["targets"] = [spec.target]
    return raw


def suggest(trial: Any, param: Param) -> Any:
    """The trial's value of one searched key (as Optuna stores it)."""
    if param.choices:
        return trial.suggest_categorical(param.path, param.optuna_choices())
    if param.integer:
        return trial.suggest_int(param.path, int(param.low), int(param.high), step=int(param.step or 1),
                                 log=param.log)
    return trial.suggest_float(param.path, float(param.low), float(param.high), step=param.step, log=param.log)


def make_objective(spec: SweepSpec, teacher: Path, report: Any) -> Any:
    """The objective Optuna calls: one trial process; its point's numbers, or pruned, or failed."""
    import optuna

    def objective(trial: Any) -> tuple[float, ...]:
        trial.set_user_attr("host", HOST)
        trial.set_user_attr("pid", os.getpid())
        rank = sum(1 for t in counted(trial.study) if t.number < trial.number)
        if rank >= spec.trials:  # another process filled the study first
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("reason", "surplus: the study already had --trials trials")
            raise StudyFull("surplus")
        values = {p.path: suggest(trial, p) for p in spec.params}
        folder = spec.sweep_dir / "trials" / f"{trial.number:04d}"
        _new_folder(folder, trial.number, spec)
        trial.set_user_attr("folder", str(folder))
        write_text(folder / "recipe.yaml", yaml.safe_dump(trial_recipe(spec, values, trial.number, teacher),
                                                          sort_keys=False))
        write_json(folder / "trial.json", {
            "study": spec.study_name, "trial_id": trial._trial_id, "number": trial.number, "target": spec.target,
            "metric": spec.primary_metric, "lower_is_better": spec.lower_is_better, "pruner": spec.pruner,
            "startup": PRUNE_STARTUP, "warmup": prune_warmup(spec.extra.get("epochs", 1)),
            "epochs": spec.extra.get("epochs", 1),
            "teacher_cache_dir": str(spec.teacher_cache_dir) if spec.teacher_cache_dir else None})
        console.print(f"trial {trial.number}: started ({short_params(values)})")
        result = run_trial_process(folder, spec.storage_url)
        return _record(trial, result, spec, report, optuna)

    return objective


def _new_folder(folder: Path, number: int, spec: SweepSpec) -> None:
    """Make a trial's folder; one already there belongs to another study (its storage was replaced).

    Raises:
        KdtoolError: the folder exists (its files are kept).
    """
    try:
        folder.mkdir(parents=True, exist_ok=False)  # numbers are unique in the study: a folder is never shared
    except FileExistsError:
        raise KdtoolError(f"{folder} exists but trial {number} of study {spec.study_name} is new (was the study's "
                          "storage deleted or replaced?)", f"move {folder.parent} aside, or sweep into a new "
                          "--study NAME") from None


def _record(trial: Any, result: dict[str, Any], spec: SweepSpec, report: Any, optuna: Any) -> tuple[float, ...]:
    state, reason = result["state"], result.get("reason")
    if state == "interrupted":
        trial.set_user_attr("interrupted", True)
        raise Interrupted(trial.number)
    if reason:
        trial.set_user_attr("reason", reason)
    if result.get("point"):
        trial.set_user_attr("point", result["point"])
    report(trial.number, state, result)
    if state == "pruned":
        raise optuna.TrialPruned(reason)
    if state != "complete":
        raise TrialFailed(reason)
    point = result["point"]
    missing = [o for o in spec.objectives if point.get(o) is None]
    if missing:
        trial.set_user_attr("reason", f"{point['artifact']}: no {', '.join(missing)} measured")
        raise TrialFailed(missing)
    trial.set_user_attr("constraints", [c.violation(point.get(c.name)) for c in spec.constraints] or [0.0])
    return tuple(float(point[o]) for o in spec.objectives)


def short_params(values: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                     for k, v in values.items())


def run_local(spec: SweepSpec, storage: Any, recipe: Any) -> Any:
    """Train/load the shared teacher, recover interrupted trials, run trials until the study is full.

    Returns:
        The study (for the results).
    """
    import logging

    import optuna
    from optuna.trial import TrialState

    if logging.getLogger().level > logging.INFO:  # Optuna's per-trial lines only with -v (the card says it all)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
    with folder_lock(spec.sweep_dir / ".study.lock"):  # two commands on this folder start one at a time
        study = open_study(spec, storage)
        queued = recover(study, storage)
        point = recipe_point(spec.raw_recipe, spec.params)
        if point is not None and not study.get_trials(deepcopy=False):  # the recipe as written is trial 0
            study.enqueue_trial(point, user_attrs={"recipe_point": True}, skip_if_exists=True)
    if queued:
        console.print(f"resuming: {queued} interrupted trial(s) queued again with their parameters")
    todo = spec.trials - len([t for t in counted(study) if t.state != TrialState.WAITING])
    if todo <= 0:
        console.print(f"{spec.study_name}: the study already holds {spec.trials} trials")
        return study
    teacher = shared_teacher(spec, recipe)
    done = {"n": 0}

    def report(number: int, state: str, result: dict[str, Any]) -> None:
        done["n"] += 1
        p = result.get("point") or {}
        what = (f"retention {p['retention']:.4f}, p50 {p['p50_ms'] or float('nan'):.3f} ms ({p['artifact']})"
                if state == "complete" and p.get("retention") is not None else result.get("reason", ""))
        console.print(f"trial {number}: {state} ({done['n']}/{todo} here): {what}")

    console.print(f"{spec.study_name}: {todo} trial(s) to run, {spec.workers} at a time "
                  f"(storage {masked(spec.storage_url)})")
    run_workers(study, make_objective(spec, teacher, report), spec, todo)
    return study


def run_workers(study: Any, objective: Any, spec: SweepSpec, todo: int) -> None:
    """Run `todo` trials, `spec.workers` at a time, with Optuna's ask-and-tell.

    Asking is serialized, between this process's workers and any other process on this sweep folder
    (`.ask.lock`): a queued trial (the recipe's own point, a retry) is popped by `Study.ask` with a
    read-then-write that SQLite does not lock, so two workers asking at once both ran trial 0 in one
    folder. A trial that fails is told FAIL and the sweep goes on; anything else (an interruption)
    is told FAIL, as `Study.optimize` does, and stops the sweep.
    """
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import optuna
    from optuna.trial import TrialState

    lock, left = threading.Lock(), {"n": todo}

    def next_trial() -> Any:
        with lock, folder_lock(spec.sweep_dir / ".ask.lock"):
            if left["n"] <= 0 or len([t for t in counted(study) if t.state.is_finished()]) >= spec.trials:
                return None
            left["n"] -= 1
            return study.ask()

    def work() -> None:
        while (trial := next_trial()) is not None:
            try:
                values = objective(trial)
            except optuna.TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
            except TrialFailed as failed:
                study.tell(trial, state=TrialState.FAIL)
                if isinstance(failed, StudyFull):
                    with lock:
                        left["n"] = 0
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                with lock:
                    left["n"] = 0  # the other workers finish their trial and stop
                raise
            else:
                study.tell(trial, values)

    with ThreadPoolExecutor(max_workers=spec.workers) as pool:
        for future in [pool.submit(work) for _ in range(spec.workers)]:
            future.result()
