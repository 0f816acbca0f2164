"""The run folder: where each stage finds its inputs and leaves its outputs.

```
runs/<recipe name>/
  teacher/ student_baseline/ student_kd/   best.safetensors + last.* + meta.json (+ metrics.json)
  student_pruned/                          best.safetensors + shapes.json + meta.json (with a prune section)
  quantized/<mode>/                        model + meta.json
  export/<target>/<format>/                artifact + manifest.json
  report/report.json|md|html
```

A stage is reused when its `meta.json` says it completed from the same inputs hash (config
sections + upstream outputs). A stage folder made from other inputs is never overwritten
without `--force`.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.core.atomic import read_json, sha256_json, write_json
from compress.core.errors import KdtoolError

TEACHER, BASELINE, KD_STUDENT = "teacher", "student_baseline", "student_kd"
TRAINING_STAGES = (TEACHER, BASELINE, KD_STUDENT)
"""The training stages, in order: their run-folder directories and the report rows' `stage`.
`KD_STUDENT` is the model every later stage (quantize, export, benchmark) starts from, unless the recipe
prunes it: then `PRUNED` is (`Context.final_student`)."""
PRUNED = "student_pruned"
"""The structurally pruned (and recovered) student: `best.safetensors` + `shapes.json` (compress/prune)."""


@dataclass(frozen=True)
class RunFolder:
    """Paths of one run (`--out`/<recipe name>)."""

    root: Path

    @classmethod
    def for_recipe(cls, out: Path, name: str) -> RunFolder:
        return cls(Path(out) / name)

    def stage(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def report(self) -> Path:
        return self.root / "report"


def check_writable(out: Path) -> None:
    """Fail early, in one line, when the runs folder cannot be written; nothing is created here.

    The nearest existing folder of `out` is probed with a temporary file that is removed at once
    (`os.access` would pass for root on a read-only mount).

    Raises:
        KdtoolError: `out` (or a parent) is a file, or its folder cannot be written.
    """
    out = Path(out)
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise KdtoolError(f"--out {out}: {existing} is a file, not a folder", "choose another --out")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise KdtoolError(f"--out {out} is not writable ({existing}: {e.strerror})",
                          "choose a folder you can write, e.g. --out ./runs") from None


def inputs_hash(*parts: Any) -> str:
    """Hash of a stage's inputs: recipe sections (as JSON) and upstream stage hashes.

    Unset optional settings (None) are left out, so adding a new optional setting to the schema does
    not invalidate the stages of existing runs.
    """
    return sha256_json([p.model_dump(mode="json", exclude_none=True) if hasattr(p, "model_dump") else p
                        for p in parts])


def stage_state(folder: Path, expected_hash: str) -> str:
    """'done' (same inputs, complete), 'partial' (same inputs, not complete: resumable),
    'stale' (made from other inputs), or 'missing'."""
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        resumable = (folder / "last.safetensors").exists() or (folder / "last.json").exists()
        return "partial" if resumable else "missing"
    meta = read_json(meta_path)
    if meta.get("inputs_hash") != expected_hash:
        return "stale"
    return "done" if meta.get("complete") else "partial"


def prepare_stage(folder: Path, expected_hash: str, force: bool, resume: bool = False,
                  redo_partial: bool = False) -> str:
    """Decide what to do with a stage folder before running it.

    Args:
        redo_partial: an unfinished run of the same inputs is kdtool's own leftover (e.g. an export
            with failed artifacts): redo it without asking for --force.

    Returns:
        'skip' when the stage is done with the same inputs (and not forced), 'resume' when a partial
        run of the same inputs exists and `resume` is set, else 'run'. A finished stage that --force
        replaces is moved aside to `.<name>.previous` (see `previous_of`) and deleted only when the
        rerun finishes: a rerun that fails or is killed loses nothing.

    Raises:
        KdtoolError: the folder holds outputs of other inputs and `force` is not set.
    """
    state = stage_state(folder, expected_hash)
    if state == "done" and not force:
        return "skip"
    if state == "partial" and resume:
        for leftover in folder.glob(".*.tmp"):  # a writer killed mid-write (SIGKILL, power loss) left it
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return "resume"
    if state == "partial" and redo_partial:
        force = True
    if state in ("stale", "partial") and not force and any(folder.iterdir()):
        reason = ("was made from a different recipe or upstream model" if state == "stale"
                  else "holds an unfinished run")
        resume_hint = ", --resume to continue it," if state == "partial" else ""
        raise KdtoolError(f"{folder} {reason}",
                          f"pass --force to overwrite it{resume_hint} or --out another folder")
    if folder.exists() and state in ("done", "stale") and any(folder.iterdir()):
        backup = previous_of(folder)
        if backup.exists():
            shutil.rmtree(backup)
        folder.rename(backup)
        from compress.core.progress import console

        console.print(f"[dim]{folder.name}: the outputs --force replaces are kept in {backup} until the rerun "
                      "finishes[/]")
    elif folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return "run"


def previous_of(folder: Path) -> Path:
    """Where a forced rerun keeps the stage it replaces until it finishes: `<parent>/.<name>.previous`."""
    return folder.parent / f".{folder.name}.previous"


def finish_stage(folder: Path, expected_hash: str, meta: dict[str, Any], complete: bool = True) -> None:
    """Record a stage's outputs; `complete` marks them whole (written last, atomically)."""
    path = folder / "meta.json"
    existing = read_json(path) if path.exists() else {}
    write_json(path, {**existing, **meta, "inputs_hash": expected_hash, "complete": complete})
    backup = previous_of(folder)
    if complete and backup.exists():
        shutil.rmtree(backup, ignore_errors=True)
