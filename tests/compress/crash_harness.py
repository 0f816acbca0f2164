"""Fault-injection harness (issue 34): kill a stage with SIGKILL at an atomic rename, rerun it, compare.

A stage command runs in a child process with `KDTOOL_FAULT=<before|after>-rename:N`
(`compress.core.faults`), which SIGKILLs it just before or after its Nth rename into place. The same
command then runs again, in this process, and the run folder must match one made without a kill:
the same shippable files, parity passed, the same metrics, and every file loads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cli_fixtures import cli, run_kdtool, write_recipe

STAGES = ("distill", "quantize", "export", "benchmark")
"""The stage commands, in the order a run makes them."""

UPDATE: dict[str, Any] = {
    "distill": {"train": {"epochs": 2, "lr": 0.01, "init": "scratch"}},
    "quantize": {"modes": ["dynamic"], "backends": {"dynamic": ["onnx"]}, "calibration_samples": 32},
    "export": {"targets": ["server"], "formats": ["onnx", "torchscript"], "int8": True, "parity_samples": 8},
    "benchmark": {"min_runs": 3, "min_time_s": 0.01, "warmup": 1, "threads": 1},
}
"""The reliability tests' tiny recipe (120 digits at 16 px, 0.1 M-parameter student), with an int8 ONNX."""


@dataclass
class Reference:
    """A run made without a kill: its recipe, and the run folder as it was after each stage."""

    recipe: Path
    after: dict[str, Path]  # stage → a copy of `runs/` once that stage finished

    def before(self, stage: str) -> Path | None:
        i = STAGES.index(stage)
        return self.after[STAGES[i - 1]] if i else None


def make_reference(root: Path) -> Reference:
    """Run every stage once, cleanly (in this process, `--out runs` relative to `root`), keeping copies."""
    recipe = write_recipe(root, UPDATE)
    after = {}
    with _cwd(root / "work"):
        for stage in STAGES:
            result = cli(stage, recipe, "--out", "runs")
            assert result.exit_code == 0, result.stderr
            after[stage] = root / f"after-{stage}"
            shutil.copytree("runs", after[stage], symlinks=True)
    return Reference(recipe, after)


@dataclass
class Outcome:
    """One kill point: whether the kill landed, and how the rerun ended."""

    killed: bool
    exit_code: int
    stderr: str
    run: Path
    file: str  # the name being renamed into place at the kill point (relative to the run folder)


def kill_and_rerun(ref: Reference, stage: str, when: str, n: int, work: Path) -> Outcome:
    """Run `kdtool <stage>` from the state before it, SIGKILLed at rename `n` (`when`: before/after),
    then the same command again without the fault."""
    work.mkdir(parents=True, exist_ok=True)
    start = ref.before(stage)
    if start is not None:
        shutil.copytree(start, work / "runs", symlinks=True)
    trace = work / "renames.txt"
    first = run_kdtool(stage, ref.recipe, "--out", "runs", cwd=work, KDTOOL_FAULT=f"{when}-rename:{n}",
                       KDTOOL_FAULT_TRACE=str(trace))
    killed = first.returncode == -signal.SIGKILL
    lines = trace.read_text().splitlines() if trace.exists() else []
    file = lines[-1].split("\t", 1)[1].removeprefix("runs/tiny/") if lines else ""
    assert killed or first.returncode == 0, first.stderr[-2000:]
    with _cwd(work):
        again = cli(stage, ref.recipe, "--out", "runs")
    return Outcome(killed, again.exit_code, again.stderr, work / "runs" / "tiny", file)


def shippable(run: Path) -> list[str]:
    """Files under a shippable name: no hidden part (temporaries, replaced folders), relative, sorted."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run).parts))


def differences(run: Path, want: Path) -> list[str]:
    """What differs between a rerun's folder and the reference's: files, parity, metrics (empty: none)."""
    out = []
    got_files, want_files = shippable(run), shippable(want)
    if got_files != want_files:
        out.append(f"files: extra {sorted(set(got_files) - set(want_files))}, "
                   f"missing {sorted(set(want_files) - set(got_files))}")
        return out
    for rel in want_files:
        if rel.endswith("meta.json") and rel.count("/") == 1 and not rel.startswith(("export", "report")):
            if _load(run / rel).get("metrics") != _load(want / rel).get("metrics"):
                out.append(f"{rel}: metrics differ")
        elif rel.startswith("quantized/") and rel.endswith("meta.json"):
            if (_load(run / rel).get("evaluation") or {}).get("metrics") != \
                    (_load(want / rel).get("evaluation") or {}).get("metrics"):
                out.append(f"{rel}: int8 metrics differ")
        elif rel.endswith("manifest.json"):
            got, ref = _load(run / rel), _load(want / rel)
            if _verdict(got) != _verdict(ref):
                out.append(f"{rel}: status/parity {_verdict(got)} vs {_verdict(ref)}")
            elif got["status"] == "ok" and got["parity"]["status"] != "passed":
                out.append(f"{rel}: parity {got['parity']['status']}")
        elif rel == "report/report.json":
            if _rows(run / rel) != _rows(want / rel):
                out.append("report rows (name, status, metrics) differ")
    return out


def unloadable(run: Path) -> list[str]:
    """Files under a shippable name that fail to load in the library that reads them."""
    bad = []
    for rel in shippable(run):
        try:
            _open(run / rel)
        except Exception as e:  # noqa: BLE001  (any failure to load is the finding)
            bad.append(f"{rel}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return bad


def _open(path: Path) -> None:
    suffix = path.suffix
    if suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".safetensors":
        from safetensors.torch import load_file

        load_file(path)
    elif suffix == ".onnx":
        import onnxruntime as ort

        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    elif suffix == ".pt":
        import torch

        torch.jit.load(str(path))
    elif suffix == ".md":
        assert path.read_text().strip(), "empty"
    elif suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), "truncated"
    else:
        raise AssertionError(f"no loader for {suffix} files: add one to the harness")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _verdict(manifest: dict[str, Any]) -> tuple[str, str | None]:
    return manifest["status"], (manifest.get("parity") or {}).get("status")


def _rows(path: Path) -> list[tuple[Any, ...]]:
    return [(r["name"], r["status"], r.get("metrics")) for r in _load(path)["rows"]]


class _cwd:
    """Change the working folder for a block (the run folder is `runs/`, relative, as a user types it)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.old = Path(folder), None

    def __enter__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.old = os.getcwd()
        os.chdir(self.folder)

    def __exit__(self, *exc: object) -> None:
        os.chdir(self.old)
