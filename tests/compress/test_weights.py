"""Safe loading: checkpoints load weights-only; a pickle that would run code is refused with exit
code 2 naming the file and the object, and its code never runs; bad checkpoint files are named in one
line; kdtool's own checkpoints are safetensors + JSON."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
from pathlib import Path

import pytest
import timm
import torch
from cli_fixtures import REPO, cli, error_lines, files_under, umask, write_recipe
from safetensors.torch import load_file, save_file

from compress.core.errors import KdtoolError
from compress.models.weights import read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")


class MarkerOnLoad:
    """Unpickling this calls os.system: a real payload, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class ExecOnLoad:
    """Unpickling this calls builtins.exec (a plain-pickle payload, not a torch zip)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _teacher_state(num_classes: int = 10) -> dict[str, torch.Tensor]:
    return timm.create_model("test_resnet", num_classes=num_classes, in_chans=1).state_dict()


def _malicious(path: Path, marker: Path, kind: str) -> Path:
    if kind == "torch zip":  # what a downloaded .pt usually is: torch.save of a dict with a payload inside
        torch.save({"state_dict": _teacher_state(), "extra": MarkerOnLoad(marker)}, path)
    else:  # a plain pickle file named .pth
        with open(path, "wb") as f:
            pickle.dump({"state_dict": {"w": torch.zeros(1)}, "x": ExecOnLoad(marker)}, f)
    return path


@pytest.mark.parametrize("kind, obj", [("torch zip", "posix.system"), ("plain pickle", "builtins.exec")])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind, obj):
    marker = tmp_path / "PWNED"
    checkpoint = _malicious(tmp_path / "teacher.pth", marker, kind)
    recipe = write_recipe(tmp_path, {"teacher": {"checkpoint": str(checkpoint), "train": None}})
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"teacher.checkpoint {checkpoint} was refused: it references {obj}" in lines[0]
    assert "nothing in it was run" in lines[0] and "state_dict" in lines[0]
    assert "weights_only` set to `False`" not in result.stderr, "never advise the unsafe load"
    assert "Traceback" not in result.stderr
    assert not marker.exists(), "the payload ran"
    assert not (tmp_path / "runs").exists()


def test_benign_non_tensor_objects_are_named_too(tmp_path):
    """Training scripts often pickle their argparse Namespace into the checkpoint: named, not run."""
    path = tmp_path / "trained.pt"
    torch.save({"model": _teacher_state(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(KdtoolError, match=r"references argparse\.Namespace, which a weights-only load"):
        read_state_dict(path, "teacher")


def test_the_weights_only_loader_is_the_one_used(tmp_path, monkeypatch):
    """Every torch.load kdtool makes passes weights_only=True (checked on the call, not on the docs)."""
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = tmp_path / "ok.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in _teacher_state().items()}}, path)
    state = read_state_dict(path, "teacher")
    assert calls == [True]
    assert "fc.weight" in state and not any(k.startswith("module.") for k in state)


def test_no_unsafe_loads_anywhere_in_the_code():
    """No `torch.load` without weights_only=True, and no pickle.load, in kdtool's own code."""
    offenders = []
    for folder in ("compress", "export", "benchmark", "recipes"):
        for path in (REPO / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if ("torch.load(" in code and "weights_only=True" not in code) or "pickle.load" in code:
                    offenders.append(f"{path.relative_to(REPO)}:{n}")
    assert (REPO / "kdtool.py").read_text().count("torch.load(") == 0
    assert offenders == []


# ---------------------------------------------------------------- bad checkpoint files


def _bad_checkpoint(tmp_path: Path, kind: str) -> Path:
    if kind.endswith("safetensors"):
        path = tmp_path / "teacher.safetensors"
        save_file(_teacher_state(), str(path))
    else:
        path = tmp_path / "teacher.pt"
        torch.save(_teacher_state(), path)
    data = path.read_bytes()
    if kind.startswith("missing"):
        path.unlink()
    elif kind.startswith("empty"):
        path.write_bytes(b"")
    elif kind.startswith("truncated"):
        path.write_bytes(data[: len(data) // 2])
    elif kind.startswith("random"):
        # seeded: seed 0 fails as UnpicklingError, 2 as IndexError, 20 as KeyError, 195 as UnicodeDecodeError
        last = kind.split()[-1]
        seed = int(last) if last.isdigit() else 0
        path.write_bytes(random.Random(seed).randbytes(4096))
    return path


BAD_FILES = {
    "missing .pt": "does not exist",
    "empty .pt": "is empty (0 bytes)",
    "truncated .pt": "is not a readable torch checkpoint (truncated or corrupt archive)",
    "random bytes .pt": "is not a torch checkpoint (neither a torch zip archive nor a readable pickle)",
    "random bytes .pt 2": "is not a torch checkpoint (neither a torch zip archive nor a readable pickle)",
    "random bytes .pt 20": "is not a torch checkpoint (neither a torch zip archive nor a readable pickle)",
    "random bytes .pt 195": "is not a torch checkpoint (neither a torch zip archive nor a readable pickle)",
    "missing safetensors": "does not exist",
    "empty safetensors": "is empty (0 bytes)",
    "truncated safetensors": "is not a valid safetensors file",
    "random bytes safetensors": "is not a valid safetensors file",
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_checkpoint_file(tmp_path, kind):
    checkpoint = _bad_checkpoint(tmp_path, kind)
    recipe = write_recipe(tmp_path, {"teacher": {"checkpoint": str(checkpoint), "train": None}})
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")
    assert result.exit_code == 2, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and f"teacher.checkpoint {checkpoint} {BAD_FILES[kind]}" in lines[0], result.stderr
    assert "(hint: " in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_head_with_another_number_of_classes(tmp_path):
    checkpoint = tmp_path / "teacher.safetensors"
    save_file(_teacher_state(num_classes=5), str(checkpoint))
    recipe = write_recipe(tmp_path, {"teacher": {"checkpoint": str(checkpoint), "train": None}})
    result = cli("distill", recipe, "--out", tmp_path / "runs", "--stage", "baseline")
    assert result.exit_code == 2
    line = error_lines(result.stderr)[0]
    assert f"teacher.checkpoint {checkpoint} does not fit teacher.arch: its head has 5 outputs, the " \
           "recipe's 10: fc.weight (5, 96) vs model (10, 96) (+1 more)" in line
    assert "task.num_classes" in line
    assert not (tmp_path / "runs").exists()


def test_a_damaged_resume_state_is_named(tmp_path):
    """`--resume` on a damaged last.safetensors: one line naming it, exit 2, nothing else touched."""
    recipe = write_recipe(tmp_path, {"student": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    assert cli("distill", recipe, "--out", out, "--stage", "baseline").exit_code == 0
    folder = out / "tiny" / "student_baseline"
    (folder / "meta.json").unlink()  # as if the run had stopped before finishing
    last = folder / "last.safetensors"
    last.write_bytes(last.read_bytes()[:1000])
    before = {f: (folder / f).read_bytes() for f in files_under(folder)}
    result = cli("distill", recipe, "--out", out, "--stage", "baseline", "--resume")
    assert result.exit_code == 2
    line = error_lines(result.stderr)[0]
    assert f"cannot resume: {last} is unreadable" in line and "--force" in line
    assert {f: (folder / f).read_bytes() for f in files_under(folder)} == before


# ---------------------------------------------------------------- kdtool's own checkpoints


def test_own_checkpoints_are_safetensors_and_json(tmp_path):
    recipe = write_recipe(tmp_path, {"teacher": {"train": {"epochs": 1}},
                                     "student": {"train": {"epochs": 1}}})
    out = tmp_path / "runs"
    assert cli("distill", recipe, "--out", out, "--stage", "baseline").exit_code == 0
    files = files_under(out)
    assert files and {Path(f).suffix for f in files} == {".safetensors", ".json"}, files
    for f in files:
        head = (out / f).read_bytes()[:2]
        assert head not in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05"), f"{f} is a zip/pickle"
        if f.endswith(".safetensors"):
            assert load_file(out / f)
        else:
            json.loads((out / f).read_text())
    state = load_file(out / "tiny" / "student_baseline" / "last.safetensors")
    assert any(k.startswith("optim.") for k in state) and "rng.torch" in state
    modes = {oct((out / f).stat().st_mode & 0o777) for f in files}
    assert modes == {oct(0o666 & ~umask())}, "written like any new file (not mkstemp's private 0600)"
