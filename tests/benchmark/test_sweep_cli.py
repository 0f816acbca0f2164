"""`kdtool sweep` bad input: one line, exit 2, before any training, nothing in the sweep folder lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.sweep.run import SweepArgs, run_sweep
from compress.core.errors import KdtoolError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def existing(tmp_path):
    """A sweep folder with results in it: every refused command must leave it byte for byte."""
    folder = tmp_path / "runs" / "quickstart-sweep"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text('{"kept": true}')
    (folder / "trials").mkdir()
    (folder / "trials" / "0000.txt").write_text("a finished trial")
    return tmp_path


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("extra, words", [
    (["--objective", "latency"], ["--objective 'latency'", "unknown metric"]),
    (["--constraint", "ms<=10"], ["--constraint 'ms'", "unknown metric"]),
    (["--storage", "postgresql://kd:s3cret-pw@127.0.0.1:1/kdtool"], ["127.0.0.1:1", "cannot reach"]),
    (["--backend", "ray", "--ray-address", "127.0.0.1:1"], ["--ray-address 127.0.0.1:1", "no Ray cluster"]),
])
def test_bad_arguments_exit_2_in_one_line(existing, extra, words):
    space = _space(existing, "distill.temperature: [2.0, 4.0]\n")
    before = _snapshot(existing / "runs")
    proc = subprocess.run([sys.executable, str(ROOT / "kdtool.py"), "sweep", "--space", str(space), "--trials", "2",
                           "--out", str(existing / "runs"), *extra], capture_output=True, text=True, cwd=existing,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kdtool: error:"), proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "s3cret" not in proc.stderr + proc.stdout
    assert _snapshot(existing / "runs") == before
    assert not (existing / "runs" / "quickstart-sweep" / "study.db").exists()


@pytest.mark.parametrize("text, words", [
    ("distill.temprature: [2.0, 4.0]\n", ["distill.temprature", "did you mean 'distill.temperature'"]),
    ("distill.temperature: {low: 4.0, high: 2.0}\n", ["empty range"]),
    ("distill.alpha: [0.5]\n", ["at least two values"]),
])
def test_bad_spaces_exit_2_before_anything_is_written(existing, text, words):
    before = _snapshot(existing / "runs")
    with pytest.raises(KdtoolError) as e:
        run_sweep(SweepArgs(space=_space(existing, text), out=existing / "runs", trials=2))
    assert e.value.exit_code == 2
    for w in words:
        assert w in e.value.message
    assert _snapshot(existing / "runs") == before


@pytest.mark.parametrize("args, words", [
    ({"target": "watch"}, ["--target 'watch'"]),
    ({"pruner": "hyperband"}, ["hyperband needs one objective"]),
    ({"constraints": ["size_mb<=1.2.3"]}, ["not a number"]),
    ({"trials": 0}, ["at least one trial"]),
])
def test_more_bad_arguments(existing, args, words):
    before = _snapshot(existing / "runs")
    with pytest.raises(KdtoolError) as e:
        run_sweep(SweepArgs(space=_space(existing, "distill.alpha: [0.3, 0.5]\n"), out=existing / "runs", **args))
    for w in words:
        assert w in str(e.value)
    assert _snapshot(existing / "runs") == before


def test_ray_missing_names_the_extra(existing, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(KdtoolError) as e:
        run_sweep(SweepArgs(space=_space(existing, "distill.alpha: [0.3, 0.5]\n"), out=existing / "runs",
                            backend="ray"))
    assert "not installed" in e.value.message and 'pip install "kdtool[ray]"' in e.value.hint


def test_another_space_in_the_same_folder_is_refused(existing):
    """A sweep folder holds one study: a second space there would mix trials; the first is kept."""
    from benchmark.sweep.run import build_spec

    spec, _ = build_spec(SweepArgs(space=_space(existing, "distill.alpha: [0.3, 0.5]\n"), out=existing / "runs"))
    folder = existing / "runs" / "quickstart-sweep"
    import json

    (folder / "sweep_spec.json").write_text(json.dumps(spec.fingerprint()))
    before = _snapshot(existing / "runs")
    with pytest.raises(KdtoolError, match="holds a sweep of another"):
        run_sweep(SweepArgs(space=_space(existing, "distill.alpha: [0.2, 0.5]\n"), out=existing / "runs"))
    assert _snapshot(existing / "runs") == before
