"""Exact resume: a run killed with SIGKILL at a random step, or stopped by SIGTERM, and resumed
with `--resume` ends with the same losses and bit-identical weights as an uninterrupted run.

Real signals: a small driver script registers a global optimizer-step hook that sends SIGKILL to its
own process after step N, then runs the CLI; SIGTERM is sent the same way in this process. Resumes
run in this process. Everything runs on CPU with one thread, as the promise states.
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from cli_fixtures import REPO, cli, error_lines, files_under, run_kdtool, write_recipe
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_post_hook

# teacher: 1 epoch x 4 steps, then student baseline: 3 epochs x 4 steps (120 samples, batch 32)
RESUME = {"teacher": {"train": {"epochs": 1, "lr": 0.01}}, "student": {"train": {"epochs": 3}},
          "data": {"augment": {"hflip": True, "crop_pad": 1}}}
TOTAL_STEPS = 4 + 12
SEED = int(os.environ.get("KDTOOL_TEST_SEED", random.SystemRandom().randrange(10**6)))

DRIVER = f"""
import os, signal, sys
sys.path.insert(0, {str(REPO)!r})
from torch.optim.optimizer import register_optimizer_step_post_hook

at, sig = int(os.environ["STOP_AT"]), getattr(signal, os.environ["STOP_SIGNAL"])
mode = os.environ.get("STOP_MODE", "step")
count = 0

def after_step(optimizer, args, kwargs):
    global count
    count += 1
    if mode == "step" and count == at:
        os.kill(os.getpid(), sig)

register_optimizer_step_post_hook(after_step)

if mode == "write":  # die half-way through writing the at-th resumable checkpoint
    import compress.distill.checkpoint as ck
    real_save, saves = ck.save_file, [0]

    def dying_save(tensors, path, metadata=None):
        saves[0] += ".last.safetensors." in str(path)  # count resumable states (not best.safetensors)
        real_save(tensors, path, metadata=metadata)
        if saves[0] == at and ".last.safetensors." in str(path):
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 2)
            os.kill(os.getpid(), sig)

    ck.save_file = dying_save

if mode == "between":  # die after the at-th resumable tensors file is in place, before its last.json
    import compress.distill.checkpoint as ck
    real_write_json, writes = ck.write_json, [0]

    def dying_write_json(path, obj):
        writes[0] += str(path).endswith("last.json")
        if writes[0] == at and str(path).endswith("last.json"):
            os.kill(os.getpid(), sig)
        real_write_json(path, obj)

    ck.write_json = dying_write_json

import kdtool
sys.argv[0] = "kdtool"
kdtool.main()
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    return write_recipe(tmp_path_factory.mktemp("recipe"), RESUME)


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must equal."""
    out = tmp_path_factory.mktemp("reference") / "runs"
    done = run_kdtool("distill", recipe, "--out", out, "--stage", "baseline")
    assert done.returncode == 0, done.stderr
    return out / "tiny"


def stop(driver: Path, recipe: Path, out: Path, at: int, sig: str, mode: str = "step", *extra: str):
    return run_kdtool("distill", recipe, "--out", out, "--stage", "baseline", *extra, driver=driver,
                      STOP_AT=str(at), STOP_SIGNAL=sig, STOP_MODE=mode)


def resume(recipe: Path, out: Path):
    """`kdtool distill --resume` in this process (one thread, like the subprocesses): saves a start-up."""
    done = cli("distill", recipe, "--out", out, "--stage", "baseline", "--resume")
    assert done.exit_code == 0, done.stderr
    return done


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_same_run(run: Path, reference: Path, why: str) -> None:
    """Same per-epoch losses and metrics, bit-identical best and resumable weights, same optimizer state."""
    for stage in ("teacher", "student_baseline"):
        got = json.loads((run / stage / "metrics.json").read_text())
        want = json.loads((reference / stage / "metrics.json").read_text())
        strip = [{k: v for k, v in h.items() if k != "train_seconds"} for h in got["history"]]
        assert strip == [{k: v for k, v in h.items() if k != "train_seconds"} for h in want["history"]], \
            f"{stage} losses differ ({why})"
        assert got["metrics"] == want["metrics"], why
        for name in ("best.safetensors", "last.safetensors"):
            a, b = load_file(run / stage / name), load_file(reference / stage / name)
            assert a.keys() == b.keys(), why
            different = [k for k in a if not torch.equal(a[k], b[k])]
            assert not different, f"{stage}/{name}: {different[:3]} differ ({why})"
    assert not [f for f in files_under(run) if f.endswith(".tmp")], "temporary files left behind"


def test_sigkill_at_a_random_step_then_resume_is_exact(driver, recipe, reference, tmp_path):
    at = random.Random(SEED).randrange(1, TOTAL_STEPS)
    why = f"SIGKILL after optimizer step {at} of {TOTAL_STEPS} (KDTOOL_TEST_SEED={SEED})"
    out = tmp_path / "runs"
    killed = stop(driver, recipe, out, at, "SIGKILL")
    assert killed.returncode == -signal.SIGKILL, (why, killed.stderr)
    resumed = resume(recipe, out)
    assert "Traceback" not in resumed.stderr
    assert_same_run(out / "tiny", reference, why)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly_then_resume_is_exact(recipe, reference, tmp_path):
    """SIGTERM (what schedulers send before preemption) is handled, so this runs in-process: a real signal."""
    at = 4 + 6  # the 2nd step of the student's 2nd epoch: a mid-epoch stop
    out = tmp_path / "runs"
    steps = [0]

    def after_step(*_):
        steps[0] += 1
        if steps[0] == at:
            os.kill(os.getpid(), signal.SIGTERM)

    handle = register_optimizer_step_post_hook(after_step)
    try:
        stopped = cli("distill", recipe, "--out", out, "--stage", "baseline")
    finally:
        handle.remove()
    assert stopped.exit_code == 128 + signal.SIGTERM, stopped.stderr
    assert "Traceback" not in stopped.stderr
    lines = error_lines(stopped.stderr)
    assert len(lines) == 1 and "interrupted (SIGTERM)" in lines[0] and "--resume" in lines[0], stopped.stderr
    state = json.loads((out / "tiny" / "student_baseline" / "last.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 2), "the checkpoint is taken at the step the signal came"
    assert not (out / "tiny" / "student_baseline" / "meta.json").exists(), "an interrupted stage is not done"
    resume(recipe, out)
    assert_same_run(out / "tiny", reference, "SIGTERM at the 2nd step of epoch 2")


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(driver, recipe, reference, tmp_path):
    """Killed half-way through writing the 3rd resumable state (teacher's, student epoch 1, student epoch 2):
    the student's epoch-1 state stays whole and resume is exact."""
    out = tmp_path / "runs"
    killed = stop(driver, recipe, out, 3, "SIGKILL", "write")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = out / "tiny" / "student_baseline"
    leftovers = [f for f in files_under(folder) if f.endswith(".tmp")]
    assert len(leftovers) == 1, files_under(folder)  # the half-written temporary, never renamed into place
    state = json.loads((folder / "last.json").read_text())
    assert state["epoch"] == 1, "last.* still hold the state after epoch 1"
    load_file(folder / "last.safetensors")  # whole and readable
    resume(recipe, out)
    assert_same_run(out / "tiny", reference, "SIGKILL while writing the epoch-2 checkpoint")


def test_sigkill_between_the_tensors_and_the_json_of_a_checkpoint(driver, recipe, reference, tmp_path):
    """Killed after the epoch-2 tensors are in place but before last.json is: the pair disagrees (and the
    sizes match: same shapes), yet resume must neither mix epoch-2 weights with the epoch-1 position nor
    lose the run."""
    out = tmp_path / "runs"
    killed = stop(driver, recipe, out, 3, "SIGKILL", "between")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = out / "tiny" / "student_baseline"
    assert json.loads((folder / "last.json").read_text())["epoch"] == 1
    resume(recipe, out)
    assert_same_run(out / "tiny", reference, "SIGKILL between last.safetensors and last.json of epoch 2")
