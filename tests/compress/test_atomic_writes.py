"""Atomic writes, full disks and existing outputs: a failed write leaves the previous file
byte-identical and no temporary behind; a full disk is one line with exit code 2; nothing a user made
is overwritten without --force."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from cli_fixtures import cli, error_lines, files_under, umask, write_recipe
from safetensors.torch import load_file

from compress.core import atomic
from compress.core.atomic import DiskWriteError, atomic_path, write_bytes, write_json
from compress.distill import checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Boom(RuntimeError):
    """A failure in the middle of a write that is not the disk's fault (a bug, a bad value, Ctrl-C...)."""


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _half_then(exc: BaseException):
    """A stand-in for safetensors' save_file that writes half a file, then fails with `exc`."""
    real = checkpoint.save_file

    def save(tensors, path, metadata=None):
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise exc

    return save


WRITERS = ["write_bytes", "write_json", "save_weights", "save_training_state", "artifact folder"]


def _write(kind: str, target: Path, version: int) -> None:
    """Write version `version` of `target` with one of kdtool's writers."""
    torch.manual_seed(version)
    if kind == "write_bytes":
        write_bytes(target, f"version {version}\n".encode() * 1000)
    elif kind == "write_json":
        write_json(target, {"version": version, "values": list(range(1000))})
    elif kind == "save_weights":
        checkpoint.save_weights(_model(), target, {"version": str(version)})
    elif kind == "save_training_state":
        model = _model()
        opt = torch.optim.AdamW(model.parameters())
        model(torch.randn(2, 8)).sum().backward()
        opt.step()
        checkpoint.save_training_state(target.with_suffix(""), model, None, opt, None, {"version": version})
    else:
        with atomic_path(target, is_dir=True) as tmp:
            (tmp / "model.bin").write_bytes(os.urandom(4096))
            write_json(tmp / "manifest.json", {"version": version})


def _failing(kind: str, monkeypatch, exc: BaseException) -> None:
    """Make the next write of `kind` fail half-way with `exc`."""
    if kind in ("write_bytes", "write_json"):
        def fsync(fd):  # the data is in the temporary, half of it on disk, when the OS reports the error
            raise exc

        monkeypatch.setattr(atomic.os, "fsync", fsync)
    elif kind in ("save_weights", "save_training_state"):
        monkeypatch.setattr(checkpoint, "save_file", _half_then(exc))
    else:
        real = atomic.write_bytes

        def manifest_fails(path, data):
            real(path, data[: len(data) // 2])
            raise exc

        monkeypatch.setattr(atomic, "write_bytes", manifest_fails)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {f: (folder / f).read_bytes() for f in files_under(folder)}


@pytest.mark.parametrize("failure", ["full disk", "crash"])
@pytest.mark.parametrize("kind", WRITERS)
def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch, kind, failure):
    names = {"write_bytes": "model.bin", "write_json": "report.json", "save_weights": "best.safetensors",
             "save_training_state": "last.safetensors", "artifact folder": "student.onnx.fp32"}
    target = tmp_path / "out" / names[kind]
    _write(kind, target, 1)
    before = _snapshot(tmp_path / "out")
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if failure == "full disk" else Boom("mid-write")
    _failing(kind, monkeypatch, exc)
    with pytest.raises(DiskWriteError if failure == "full disk" else Boom) as raised:
        _write(kind, target, 2)
    assert _snapshot(tmp_path / "out") == before, "the previous version changed"
    assert not [f for f in files_under(tmp_path / "out") if ".tmp" in f], "a temporary was left behind"
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    if failure == "full disk":
        assert raised.value.exit_code == 2
        assert "no space left on the device; the previous file, if any, is unchanged" in raised.value.message
        assert target.name in raised.value.message


def test_full_disk_reported_inside_a_library_error(tmp_path, monkeypatch):
    """safetensors reports ENOSPC as its own error type with the OS's text: still a full disk."""
    from safetensors import SafetensorError

    target = tmp_path / "best.safetensors"
    monkeypatch.setattr(checkpoint, "save_file", _half_then(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")))
    with pytest.raises(DiskWriteError, match="best.safetensors: no space left on the device"):
        checkpoint.save_weights(_model(), target)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_on_an_almost_full_disk_counts_as_full(tmp_path, monkeypatch):
    """torch's zip writer says only 'unexpected pos' when the disk fills: the free space tells."""
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(DiskWriteError, match="model.pt: no space left"):
        with atomic_path(tmp_path / "model.pt") as tmp:
            tmp.write_bytes(b"PK")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 42624 vs 42520")
    assert list(tmp_path.iterdir()) == []


def test_atomic_files_get_the_usual_mode(tmp_path):
    """mkstemp makes 0600 files; kdtool's outputs are shared like any new file (0666 minus the umask)."""
    write_bytes(tmp_path / "a.bin", b"x")
    with atomic_path(tmp_path / "artifact", is_dir=True) as tmp:
        (tmp / "f").write_bytes(b"y")
    assert oct((tmp_path / "a.bin").stat().st_mode & 0o777) == oct(0o666 & ~umask())
    assert oct((tmp_path / "artifact").stat().st_mode & 0o777) == oct(0o777 & ~umask())
    (tmp_path / "a.bin").chmod(0o600)  # a mode the user chose is kept across rewrites
    write_bytes(tmp_path / "a.bin", b"z")
    assert oct((tmp_path / "a.bin").stat().st_mode & 0o777) == "0o600"


# ---------------------------------------------------------------- through the CLI


def test_full_disk_during_training_is_one_line_exit_2(tmp_path, monkeypatch):
    """The first checkpoint write finds the disk full: exit 2, one line naming the file, nothing left."""
    from safetensors import SafetensorError

    monkeypatch.setattr(checkpoint, "save_file", _half_then(
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")))
    out = tmp_path / "runs"
    result = cli("distill", write_recipe(tmp_path), "--out", out, "--stage", "baseline")
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    best = out / "tiny" / "teacher" / "best.safetensors"
    assert f"cannot write {best}: no space left on the device" in lines[0]
    assert "(hint: free space" in lines[0]
    assert not out.exists(), files_under(out)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A finished tiny distillation (teacher, baseline, KD) to export from."""
    folder = tmp_path_factory.mktemp("distilled")
    recipe = write_recipe(folder, {"student": {"train": {"epochs": 1}}})
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = cli("distill", recipe, "--out", folder / "runs")
    finally:
        torch.set_num_threads(old)
    assert done.exit_code == 0, done.stderr
    return recipe, folder / "runs"


def test_full_disk_during_export_is_one_line_exit_2(distilled, monkeypatch):
    """Simulated: from the export on, every write the OS makes fails with ENOSPC (as a full disk does)."""
    recipe, out = distilled
    before = _snapshot(out)
    monkeypatch.setattr(atomic.os, "fsync", _full_disk)
    result = cli("export", recipe, "--out", out, "--format", "torchscript")
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "no space left on the device" in lines[0] and str(out / "tiny" / "export") in lines[0]
    assert _snapshot(out) == before, "the export left files behind"
    assert not (out / "tiny" / "export").exists()


def _baseline_then_changed_recipe(tmp_path):
    """A finished baseline stage (runs folder, stage folder, its bytes) and a recipe that changes its inputs."""
    recipe = write_recipe(tmp_path, {"student": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    assert cli("distill", recipe, "--out", out, "--stage", "baseline").exit_code == 0
    stage = out / "tiny" / "student_baseline"
    before = _snapshot(stage)
    changed = write_recipe(tmp_path, {"student": {"train": {"epochs": 1, "lr": 0.003}}}, name="changed.yaml")
    return out, stage, before, changed


def test_outputs_of_other_inputs_are_not_overwritten_without_force(tmp_path):
    out, stage, before, changed = _baseline_then_changed_recipe(tmp_path)
    refused = cli("distill", changed, "--out", out, "--stage", "baseline")
    assert refused.exit_code == 2
    line = error_lines(refused.stderr)[0]
    assert f"{stage} was made from a different recipe or upstream model" in line and "--force" in line
    assert _snapshot(stage) == before
    forced = cli("distill", changed, "--out", out, "--stage", "baseline", "--force")
    assert forced.exit_code == 0
    assert _snapshot(stage) != before, "--force replaces the stage"
    assert load_file(stage / "best.safetensors")


def test_failed_forced_rerun_keeps_the_replaced_stage(tmp_path, monkeypatch):
    """--force moves the old stage aside; a rerun that fails leaves it whole, one that finishes drops it."""
    import compress.distill.stage
    from compress.core.errors import KdtoolError
    from compress.core.runfolder import previous_of

    out, stage, before, changed = _baseline_then_changed_recipe(tmp_path)

    def broken_fit(*args, **kwargs):
        raise KdtoolError("training broke", "fix it")

    monkeypatch.setattr(compress.distill.stage, "fit", broken_fit)
    failed = cli("distill", changed, "--out", out, "--stage", "baseline", "--force")
    assert failed.exit_code == 2 and "training broke" in error_lines(failed.stderr)[0]
    assert _snapshot(previous_of(stage)) == before, "the replaced stage must survive a failed rerun"
    monkeypatch.undo()
    forced = cli("distill", changed, "--out", out, "--stage", "baseline", "--force")
    assert forced.exit_code == 0, forced.stderr
    assert not previous_of(stage).exists(), "a finished rerun drops the replaced stage"
    assert _snapshot(stage) != before and load_file(stage / "best.safetensors")


def test_unchanged_stage_is_reused_not_rewritten(tmp_path):
    recipe = write_recipe(tmp_path, {"student": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    assert cli("distill", recipe, "--out", out, "--stage", "baseline").exit_code == 0
    times = {f: (out / f).stat().st_mtime_ns for f in files_under(out)}
    again = cli("distill", recipe, "--out", out, "--stage", "baseline")
    assert again.exit_code == 0 and "reused" in again.stderr
    assert {f: (out / f).stat().st_mtime_ns for f in files_under(out)} == times
