"""The study's housekeeping without running trials: seeded sampling, resume after a dead process, the median rule."""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from benchmark.sweep.space import parse_space
from benchmark.sweep.storage import open_storage
from benchmark.sweep.study import HOST, SweepSpec, counted, open_study, recover, sampler_for, suggest
from benchmark.sweep.trial import EpochPruner, Pruned
from recipes.load import RECIPES_DIR


@pytest.fixture
def spec(tmp_path):
    raw = yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text())
    params = parse_space({"distill.temperature": {"low": 1.0, "high": 8.0, "log": True},
                          "distill.alpha": {"low": 0.1, "high": 0.9, "step": 0.1},
                          "student.kwargs.channels": [[4, 8, 16, 32], [8, 16, 32, 64]]}, raw)
    return SweepSpec(raw_recipe=raw, name="quickstart", params=params, sweep_dir=tmp_path, study_name="s",
                     storage_url=f"sqlite:///{tmp_path / 'study.db'}", target="android",
                     objectives=("retention", "p50_ms"), constraints=(), trials=6)


def _proposals(spec, n=5):
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler_for(spec))
    out = []
    for i in range(n):
        trial = study.ask()
        out.append({p.path: suggest(trial, p) for p in spec.params})
        study.tell(trial, [0.9 + 0.01 * i, 1.0 - 0.1 * i])
    return out


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_same_seed_proposes_the_same_trials(spec, sampler):
    spec.sampler = sampler
    first, again = _proposals(spec), _proposals(spec)
    assert first == again
    spec.seed = 1
    assert _proposals(spec) != first
    assert all(0.1 <= p["distill.alpha"] <= 0.9 and round(p["distill.alpha"] * 10, 6).is_integer() for p in first)


def test_a_dead_process_trials_are_failed_and_queued_again(spec):
    storage = open_storage(spec.storage_url)
    study = open_study(spec, storage)
    done = study.ask()
    [suggest(done, p) for p in spec.params]
    done.set_user_attr("host", HOST)
    study.tell(done, [0.95, 1.0])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now: the process that "ran" the next trial is gone
    lost = study.ask()
    values = {p.path: suggest(lost, p) for p in spec.params}
    lost.set_user_attr("host", HOST)
    lost.set_user_attr("pid", dead.pid)
    alive = study.ask()  # a trial of a live process (this one) is left alone
    [suggest(alive, p) for p in spec.params]
    alive.set_user_attr("host", HOST)
    alive.set_user_attr("pid", __import__("os").getpid())
    assert recover(study, storage) == 1
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == TrialState.COMPLETE and trials[2].state == TrialState.RUNNING
    assert trials[1].state == TrialState.FAIL and trials[1].user_attrs["interrupted"]
    retry = trials[3]
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == 1
    nxt = study.ask()
    assert nxt.number == 3 and {p.path: suggest(nxt, p) for p in spec.params} == values  # the retry, same values
    assert recover(study, storage) == 0  # queued once only
    assert [t.number for t in counted(study)] == [0, 2, 3]  # the interrupted trial counts through its retry


def test_median_rule_prunes_a_multi_objective_trial_below_the_median(spec):
    storage = open_storage(spec.storage_url)
    study = open_study(spec, storage)
    for curve in ([0.5, 0.8], [0.6, 0.85], [0.55, 0.9]):
        t = study.ask()
        t.set_user_attr("epoch_values", curve)
        study.tell(t, [curve[-1], 1.0])
    running = study.ask()
    pruner = EpochPruner({"study": "s", "trial_id": running._trial_id, "metric": "accuracy",
                          "lower_is_better": False, "pruner": "median", "startup": 3, "warmup": 1, "epochs": 2},
                         spec.storage_url)
    pruner("student_baseline", {"val_accuracy": 0.0})  # only the distillation stage is judged
    pruner("student_kd", {"val_accuracy": 0.1})  # epoch 1: warm-up, never pruned
    with pytest.raises(Pruned, match=r"val accuracy 0.8000 worse than the median 0.8500 of 3 completed"):
        pruner("student_kd", {"val_accuracy": 0.8})
    assert study.get_trials(deepcopy=False)[-1].user_attrs["epoch_values"] == [0.1, 0.8]


def test_importances_per_objective_and_too_few_trials(spec):
    from benchmark.sweep.results import importances

    study = open_study(spec, open_storage(spec.storage_url))
    assert "need at least 3" in importances(study, ["retention", "p50_ms"])["note"]
    for _ in range(6):
        t = study.ask()
        values = {p.path: suggest(t, p) for p in spec.params}
        study.tell(t, [values["distill.alpha"], 1.0 / values["distill.temperature"]])
    imp = importances(study, ["retention", "p50_ms"])
    assert set(imp["retention"]) == {p.path for p in spec.params}
    assert max(imp["retention"], key=imp["retention"].get) == "distill.alpha"
    assert max(imp["p50_ms"], key=imp["p50_ms"].get) == "distill.temperature"



def test_pruner_waits_for_five_completed_trials_and_a_third_of_the_epochs(spec):
    from benchmark.sweep.study import PRUNE_STARTUP, prune_warmup

    storage = open_storage(spec.storage_url)
    study = open_study(spec, storage)
    rule = {"study": "s", "metric": "accuracy", "lower_is_better": False, "pruner": "median",
            "startup": PRUNE_STARTUP, "warmup": prune_warmup(10), "epochs": 10}

    def judge(values: list[float]) -> None:
        running = study.ask()
        pruner = EpochPruner({**rule, "trial_id": running._trial_id}, spec.storage_url)
        for v in values:
            pruner("student_kd", {"val_accuracy": v})
        study.tell(running, [values[-1], 1.0])

    for _ in range(PRUNE_STARTUP - 1):
        judge([0.9] * 10)
    judge([0.0] * 10)  # far below, but only 4 trials completed: not judged
    judge([0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])  # 5 completed now; the first 3 epochs are warm-up
    with pytest.raises(Pruned, match="at epoch 4"):
        judge([0.9, 0.9, 0.9, 0.0])


def _two_workers_with_a_queued_trial(spec, run, name):
    """Two workers on one SQLite study whose trial 0 is queued (the recipe's point); the trial numbers run."""
    import dataclasses
    import threading
    import time

    spec = dataclasses.replace(spec, workers=2, trials=4, study_name=name)
    study = open_study(spec, open_storage(spec.storage_url))
    study.enqueue_trial({"distill.temperature": 4.0, "distill.alpha": 0.3, "student.kwargs.channels": "[4, 8, 16, 32]"})
    ran, guard = [], threading.Lock()

    def objective(trial):
        values = {p.path: suggest(trial, p) for p in spec.params}
        with guard:
            ran.append(trial.number)
        time.sleep(0.2)
        return values["distill.alpha"], 1.0

    run(study, objective, spec)
    return ran


def test_two_workers_never_run_one_queued_trial_twice(spec):
    from benchmark.sweep.study import run_workers

    for attempt in range(3):  # unserialized asks collided on the queued trial in most attempts
        ran = _two_workers_with_a_queued_trial(spec, lambda study, objective, s: run_workers(study, objective, s, 4),
                                               f"s{attempt}")
        assert sorted(ran) == [0, 1, 2, 3]


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
@pytest.mark.parametrize(("objective", "lower_is_better"),
                         [("p50_ms", False), ("size_mb", False), ("retention", True), ("retention", False)])
def test_single_objective_pruning_keeps_the_better_metric(spec, objective, lower_is_better, pruner):
    spec.objectives, spec.lower_is_better = (objective,), lower_is_better
    study = open_study(spec, open_storage(spec.storage_url))
    good, bad = (0.1, 0.9) if lower_is_better else (0.9, 0.1)
    rule = {"study": "s", "metric": "accuracy", "lower_is_better": lower_is_better, "pruner": pruner,
            "startup": 2, "warmup": 0, "epochs": 4}

    def judge(values: list[float]) -> None:
        running = study.ask()
        pruner = EpochPruner({**rule, "trial_id": running._trial_id}, spec.storage_url)
        try:
            for v in values:
                pruner("student_kd", {"val_accuracy": v})
        except Pruned:
            study.tell(running, state=TrialState.PRUNED)
            raise
        study.tell(running, [1.0])

    for i in range(3):
        judge([0.5 + (0.01 * i if good > bad else -0.01 * i)] * 4)
    judge([good] * 4)  # better than every completed trial at every epoch: never pruned
    with pytest.raises(Pruned):
        judge([bad] * 4)


@pytest.mark.parametrize("change", ["objectives", "choices", "dropped key"])
def test_joining_a_study_of_other_objectives_or_space_is_refused(spec, change):
    from compress.core.errors import KdtoolError

    storage = open_storage(spec.storage_url)
    study = open_study(spec, storage)
    t = study.ask()
    [suggest(t, p) for p in spec.params]
    study.tell(t, [0.9, 1.0])
    if change == "objectives":
        spec.objectives = ("retention", "size_mb", "p50_ms")
    elif change == "choices":
        spec.params[2] = parse_space({"student.kwargs.channels": [[4, 8, 16, 32], [16, 32, 64, 128]]},
                                     spec.raw_recipe)[0]
    else:
        spec.params = spec.params[:2]
    with pytest.raises(KdtoolError, match=r"^study s in .*study.db was made by another sweep") as e:
        open_study(spec, storage)
    assert "--study NAME" in e.value.hint
    assert len(open_study(SweepSpec(**{**spec.__dict__, "study_name": "s2"}), storage).trials) == 0


def test_a_retried_recipe_point_is_still_the_recipe_point(spec):
    storage = open_storage(spec.storage_url)
    study = open_study(spec, storage)
    study.enqueue_trial({"distill.temperature": 2.0, "distill.alpha": 0.5,
                         "student.kwargs.channels": spec.params[2].optuna_choices()[0]},
                        user_attrs={"recipe_point": True})
    lost = study.ask()
    [suggest(lost, p) for p in spec.params]
    lost.set_user_attr("host", HOST)
    lost.set_user_attr("pid", 0)  # no such process: interrupted
    assert recover(study, storage) == 1
    retry = study.get_trials(deepcopy=False)[-1]
    assert retry.user_attrs == {"retry_of": 0, "recipe_point": True}


def test_a_leftover_trial_folder_is_one_line_naming_it(spec, tmp_path):
    from benchmark.sweep.study import make_objective
    from compress.core.errors import KdtoolError

    (tmp_path / "trials" / "0000").mkdir(parents=True)  # left by a study whose study.db was deleted
    study = open_study(spec, open_storage(spec.storage_url))
    objective = make_objective(spec, tmp_path / "teacher.safetensors", lambda *a: None)
    with pytest.raises(KdtoolError, match=r"trials/0000 exists but trial 0 of study s is new") as e:
        objective(study.ask())
    assert "--study NAME" in e.value.hint


def test_a_trial_failure_reason_names_its_kind_then_the_error():
    from benchmark.sweep.trial import failure_reason
    from compress.core.errors import ExportError, NonFiniteLossError

    assert failure_reason(NonFiniteLossError("student_kd: loss nan at epoch 1", "lower the lr")) == \
        "non-finite loss: student_kd: loss nan at epoch 1 (lower the lr)"
    assert failure_reason(ExportError("android: parity 0.3 > 0.01")) == "export/parity: android: parity 0.3 > 0.01"
    assert failure_reason(MemoryError()) == "out of memory: MemoryError"
    assert failure_reason(ValueError("bad\nsecond line")) == "ValueError: bad"


def test_the_sweep_line_never_prints_the_storage_password(spec, monkeypatch):
    from benchmark.sweep import study as study_mod

    lines = []
    storage = open_storage(spec.storage_url)
    spec.storage_url = "postgresql://kd:hunter2@db-host:5432/kd"  # what the trials would be given
    monkeypatch.setattr(study_mod.console, "print", lambda text, *a, **k: lines.append(str(text)))
    monkeypatch.setattr(study_mod, "shared_teacher", lambda spec, recipe: spec.sweep_dir / "teacher.safetensors")

    def fails(*_):
        def objective(trial):
            raise study_mod.TrialFailed("not run here")
        return objective

    monkeypatch.setattr(study_mod, "make_objective", fails)
    spec.trials = 1
    study_mod.run_local(spec, storage, None)
    started = next(line for line in lines if "trial(s) to run" in line)
    assert "db-host" in started and "hunter2" not in started
