"""A full disk while a checkpoint, an artifact or the report is written (issue 34): one line naming the
file and "no space left", exit 2 or 4, the previous good file intact, and the next run completes."""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from cli_fixtures import cli, error_lines
from crash_harness import _cwd, differences, unloadable

import compress.core.atomic as atomic

pytestmark = pytest.mark.usefixtures("one_thread")


def _full() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class _FullFile:
    """A file open for writing on a disk that fills up at the first write."""

    def __init__(self, f) -> None:
        self.f = f

    def write(self, data: bytes) -> int:
        raise _full()

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def fill_disk_on(monkeypatch, name: str) -> None:
    """Writes (through `compress.core.atomic`) of files called `name` fail with ENOSPC."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)  # noqa: SIM115  (wrapped, closed by the wrapper)
        return _FullFile(f) if "w" in mode and Path(path).name.startswith(f".{name}.") else f

    monkeypatch.setattr(atomic, "open", fake_open, raising=False)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line(result, name: str) -> str:
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert name in lines[0] and "no space left" in lines[0], lines[0]
    return lines[0]


def test_full_disk_while_saving_a_checkpoint(crash_reference, tmp_path, monkeypatch):
    """The 2nd training state of the baseline cannot be written: the 1st stays, a plain rerun continues."""
    import compress.distill.checkpoint as checkpoint

    real, calls = checkpoint.save_file, []

    def save_file(tensors, path, metadata=None):
        if ".last.safetensors." in str(path) and "student_baseline" in str(path):
            calls.append(path)
            if len(calls) == 2:
                raise _full()
        return real(tensors, path, metadata=metadata)

    with _cwd(tmp_path):
        monkeypatch.setattr(checkpoint, "save_file", save_file)
        failed = cli("distill", crash_reference.recipe, "--out", "runs")
        monkeypatch.undo()
        assert failed.exit_code == 2, failed.stderr
        _one_line(failed, "last.safetensors")
        folder = Path("runs/tiny/student_baseline")
        assert json.loads((folder / "last.json").read_text())["epoch"] == 1, "the epoch-1 state is kept"
        assert not unloadable(folder)
        again = cli("distill", crash_reference.recipe, "--out", "runs")
        assert again.exit_code == 0, again.stderr
        assert not differences(Path("runs/tiny"), crash_reference.after["distill"] / "tiny")


def test_full_disk_while_writing_an_artifact(crash_reference, tmp_path, monkeypatch):
    shutil.copytree(crash_reference.after["export"], tmp_path / "runs")
    artifact = tmp_path / "runs/tiny/export/server/torchscript/fp32/student_kd.torchscript.pt"
    before = _sha(artifact)
    with _cwd(tmp_path):
        fill_disk_on(monkeypatch, artifact.name)
        failed = cli("export", crash_reference.recipe, "--out", "runs", "--format", "torchscript", "--force")
        monkeypatch.undo()
        assert failed.exit_code in (2, 4), failed.stderr
        _one_line(failed, artifact.name)
        assert _sha(artifact) == before, "the previous artifact is intact"
        again = cli("export", crash_reference.recipe, "--out", "runs")
        assert again.exit_code == 0, again.stderr
    assert not differences(tmp_path / "runs/tiny", crash_reference.after["export"] / "tiny")
    assert not unloadable(tmp_path / "runs/tiny")


def test_full_disk_while_writing_the_report(crash_reference, tmp_path, monkeypatch):
    shutil.copytree(crash_reference.after["benchmark"], tmp_path / "runs")
    report = tmp_path / "runs/tiny/report/report.json"
    before = _sha(report)
    with _cwd(tmp_path):
        fill_disk_on(monkeypatch, report.name)
        failed = cli("benchmark", crash_reference.recipe, "--out", "runs")
        monkeypatch.undo()
        assert failed.exit_code == 2, failed.stderr
        _one_line(failed, str(Path("runs/tiny/report/report.json")))
        assert _sha(report) == before, "the previous report is intact"
        again = cli("benchmark", crash_reference.recipe, "--out", "runs")
        assert again.exit_code == 0, again.stderr
    assert not differences(tmp_path / "runs/tiny", crash_reference.after["benchmark"] / "tiny")
    assert not unloadable(tmp_path / "runs/tiny")
