"""Real sweeps of tiny whole runs: a failing trial, resume after a kill, two workers on one study,
a local Ray cluster, a throwaway PostgreSQL server. The teacher is trained once per module."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from recipes.load import RECIPES_DIR

ROOT = Path(__file__).resolve().parents[2]
TINY = {"data": {"limit": 300, "batch_size": 16}, "teacher": {"train": {"epochs": 3, "lr": 0.01}},
        "student": {"train": {"epochs": 1}}, "distill": {"train": {"epochs": 2}},
        "quantize": {"modes": ["dynamic"], "backends": {"dynamic": ["onnx"]}, "calibration_samples": 16},
        "export": {"targets": ["server"], "formats": ["onnx"], "parity_samples": 16},
        "benchmark": {"min_runs": 5, "min_time_s": 0, "warmup": 1, "min_retention": 0.5}}


def _merge(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = _merge(base.get(k) or {}, v) if isinstance(v, dict) and k != "backends" else v
    return base


def _tiny_recipe(folder: Path, teacher: Path | None, space: dict) -> Path:
    raw = _merge(yaml.safe_load((RECIPES_DIR / "quickstart.yaml").read_text()), TINY)
    raw["name"] = "tiny"
    if teacher is not None:
        raw["teacher"] = {k: v for k, v in raw["teacher"].items() if k != "train"} | {"checkpoint": str(teacher)}
    raw["sweep"] = space
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _sweep(recipe: Path, out: Path, *extra: str, **popen) -> list[str]:
    return [sys.executable, str(ROOT / "kdtool.py"), "sweep", str(recipe), "--out", str(out), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "KDTOOL_QUIET": "1"}


def _run(cmd: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """The tiny recipe's teacher, trained once for the module (as a sweep trains it once for its trials)."""
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.distill.stage import run_teacher
    from recipes.load import load_recipe

    folder = tmp_path_factory.mktemp("teacher")
    recipe, _, _ = load_recipe(str(_tiny_recipe(folder, None, {"distill.alpha": [0.3, 0.5]})))
    run_teacher(Context(recipe, RunFolder(folder / "run")))
    return folder / "run" / "teacher" / "best.safetensors"


@pytest.fixture
def random_teacher(tmp_path) -> Path:
    """The quickstart teacher's architecture with random weights: enough for a trial that fails early."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1, channels=[16, 32, 64, 128])
    path = tmp_path / "teacher.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def test_a_failing_trial_is_recorded_with_its_reason(tmp_path, random_teacher):
    recipe = _tiny_recipe(tmp_path, random_teacher, {"student.arch": ["no_such_net_a", "no_such_net_b"]})
    proc = _run(_sweep(recipe, tmp_path / "runs", "--trials", "1"), timeout=900)
    data = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())
    (trial,) = data["trials"]
    assert trial["state"] == "failed" and "no_such_net" in trial["reason"], trial
    assert "failed" in proc.stdout and data["front"] == []
    assert (Path(trial["folder"]) / "trial.log").exists()


def _study_trials(out: Path, study: str = "tiny-sweep", url: str | None = None) -> list:
    import optuna

    from benchmark.sweep.storage import open_storage

    url = url or f"sqlite:///{out / study / 'study.db'}"
    return optuna.load_study(study_name=study, storage=open_storage(url)).get_trials(deepcopy=False)


@pytest.mark.slow
def test_resume_after_a_kill(tmp_path, teacher):
    recipe = _tiny_recipe(tmp_path, teacher, {"distill.temperature": [2.0, 4.0], "distill.alpha": [0.3, 0.5]})
    out = tmp_path / "runs"
    cmd = _sweep(recipe, out, "--trials", "3", "--workers", "1", "--pruner", "none")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = out / "tiny-sweep" / "trials" / "0001" / "trial.log"
    deadline = time.time() + 1800
    while not second.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(1)
    time.sleep(5)  # trial 1 is training
    proc.kill()  # SIGKILL: no handler runs; the trial process dies with it (PR_SET_PDEATHSIG)
    proc.wait()
    first = out / "tiny-sweep" / "trials" / "0000" / "result.json"
    stamp = first.stat().st_mtime_ns
    interrupted = {t.number: t for t in _study_trials(out)}[1]
    assert interrupted.state.name == "RUNNING"
    _run(cmd)
    trials = {t.number: t for t in _study_trials(out)}
    assert first.stat().st_mtime_ns == stamp  # the finished trial was kept, not run again
    assert trials[1].state.name == "FAIL" and trials[1].user_attrs["interrupted"]
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == 1)
    assert retry.params == interrupted.params and retry.state.name == "COMPLETE"
    data = json.loads((out / "tiny-sweep" / "sweep.json").read_text())
    numbers = sorted(t["number"] for t in data["trials"])
    assert len(numbers) == 3 and 0 in numbers and retry.number in numbers and 1 not in numbers
    assert all(t["state"] == "complete" for t in data["trials"])


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(tmp_path, teacher):
    recipe = _tiny_recipe(tmp_path, teacher, {"distill.temperature": {"low": 1.0, "high": 8.0},
                                              "distill.alpha": [0.3, 0.5]})
    out = tmp_path / "runs"
    cmd = _sweep(recipe, out, "--trials", "4", "--workers", "1", "--pruner", "none")
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=3600) == 0, p.stderr.read()[-3000:]
    data = json.loads((out / "tiny-sweep" / "sweep.json").read_text())
    numbers = [t["number"] for t in data["trials"]]
    assert len(numbers) == 4 and len(set(numbers)) == 4
    assert all(t["state"] == "complete" for t in data["trials"])
    folders = [t["folder"] for t in data["trials"]]
    assert len(set(folders)) == 4 and all((Path(f) / "result.json").exists() for f in folders)
    pids = {t.user_attrs["pid"] for t in _study_trials(out) if t.state.name == "COMPLETE"}
    assert len(pids) == 2  # both processes ran trials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_local_cluster_runs_the_trials(tmp_path, teacher):
    pytest.importorskip("ray.tune")
    port = _free_port()
    short = tempfile.mkdtemp(prefix="kdray-", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    start = subprocess.run(["ray", "start", "--head", "--num-cpus", "2", "--port", str(port), "--temp-dir", short,
                            "--include-dashboard", "false", "--disable-usage-stats"], capture_output=True, text=True,
                           env=_env())
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        recipe = _tiny_recipe(tmp_path, teacher, {"distill.temperature": [2.0, 4.0], "distill.alpha": [0.3, 0.5]})
        _run(_sweep(recipe, tmp_path / "runs", "--trials", "2", "--workers", "1", "--backend", "ray",
                    "--ray-address", f"127.0.0.1:{port}"))
    finally:
        subprocess.run(["ray", "stop", "--force"], capture_output=True)
        shutil.rmtree(short, ignore_errors=True)
    data = json.loads((tmp_path / "runs" / "tiny-sweep" / "sweep.json").read_text())
    assert len(data["trials"]) == 2 and all(t["state"] == "complete" for t in data["trials"]), \
        [(t["number"], t["state"], t["reason"]) for t in data["trials"]]
    assert all(t["retention"] is not None and t["p50_ms"] > 0 for t in data["trials"])


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL cluster in a temporary folder (as a non-root user when run as root)."""
    pytest.importorskip("psycopg2")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    home = Path(tempfile.mkdtemp(prefix="kdtool-pg-"))  # outside pytest's 0700 folders: the server user reads it
    data, port = home / "data", _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        as_user = ["runuser", "-u", "nobody", "--"]
        os.chmod(home, 0o777)
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "kd", "--auth=trust"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(home / "pg.log"), "-o",
                    f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://kd:not-a-secret@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_two_machines_join_one_postgres_study(tmp_path, teacher, postgres):
    recipe = _tiny_recipe(tmp_path, teacher, {"distill.temperature": [2.0, 4.0], "distill.alpha": [0.3, 0.5]})
    # what each machine runs: the same command and --storage, its own local folder
    cmds = [_sweep(recipe, tmp_path / f"machine{i}", "--trials", "3", "--workers", "1", "--pruner", "none",
                   "--storage", postgres) for i in (1, 2)]
    procs = [subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in cmds]
    outputs = [p.communicate(timeout=3600) for p in procs]
    for p, (so, se) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, se[-3000:]
        assert "not-a-secret" not in so + se
    trials = [t for t in _study_trials(tmp_path, url=postgres) if t.state.name == "COMPLETE"]
    assert len(trials) == 3 and len({t.number for t in trials}) == 3
    assert {Path(t.user_attrs["folder"]).parents[2].name for t in trials} <= {"machine1", "machine2"}
    data = json.loads((tmp_path / "machine2" / "tiny-sweep" / "sweep.json").read_text())
    assert "not-a-secret" not in json.dumps(data) and "***" in data["storage"]
