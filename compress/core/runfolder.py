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
without `--force`. A stage writes `started.json` (its inputs hash) before anything else and removes
it after its complete `meta.json`: a run killed in between is recognised as unfinished work of
those inputs, which the same command continues or redoes (docs/crash-consistency.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.core.atomic import sha256_json, write_json
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


STARTED = "started.json"
"""A stage's begin marker (`begin_stage`): the inputs it is being made from; gone once it finishes."""


def stage_state(folder: Path, expected_hash: str) -> str:
    """'done' (same inputs, complete), 'partial' (same inputs, not complete: resumable, or kdtool's
    own unfinished work, e.g. a killed run), 'stale' (made from other inputs), 'corrupt' (meta.json
    unreadable: a damaged disk, never a kill, as it is written atomically), or 'missing'."""
    meta_path = folder / "meta.json"
    meta = read_meta(folder)
    if meta_path.exists() and meta is None:
        return "corrupt"
    if meta is not None and meta.get("complete"):
        return "done" if meta.get("inputs_hash") == expected_hash else "stale"
    started = _started_hash(folder)
    if started is not None:  # begun by kdtool and not finished (killed, interrupted, failed)
        return "partial" if started == expected_hash else "stale"
    if meta is None:
        resumable = (folder / "last.safetensors").exists() or (folder / "last.json").exists()
        return "partial" if resumable else "missing"
    return "partial" if meta.get("inputs_hash") == expected_hash else "stale"


def read_meta(folder: Path) -> dict[str, Any] | None:
    """A stage folder's meta.json, or None when it is missing or unreadable (the index is a cache)."""
    try:
        meta = json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _started_hash(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / STARTED).read_text()).get("inputs_hash")
    except (OSError, ValueError, AttributeError):
        return None


def is_finished(folder: Path) -> bool:
    """True when a stage folder holds finished outputs: a meta.json, and no begin marker of a run that
    did not finish (a stage killed after its writer's own meta.json, before `finish_stage`)."""
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        return False
    return not (folder / STARTED).exists() or bool((read_meta(folder) or {}).get("complete"))


def unfinished(folder: Path) -> bool:
    """True when a stage was begun (`begin_stage`) and has not finished: its outputs are not to be used."""
    return (Path(folder) / STARTED).exists() and not (read_meta(folder) or {}).get("complete")


def begin_stage(folder: Path, expected_hash: str) -> None:
    """Record, before a stage writes anything, which inputs it is made from (`started.json`).

    A run killed at any instant then leaves a folder a plain rerun recognises as its own unfinished
    work (state 'partial', same inputs): it resumes or redoes it without --force. `finish_stage`
    removes the marker."""
    write_json(folder / STARTED, {"inputs_hash": expected_hash})


@contextlib.contextmanager
def lone_marker_removed(folder: Path) -> Iterator[None]:
    """On an error, remove the begin marker of a stage that wrote nothing else: a failed command leaves
    no trace (a kill, which runs no Python, leaves the marker, and the next run continues)."""
    try:
        yield
    except BaseException:
        if folder.is_dir() and [p.name for p in folder.iterdir()] == [STARTED]:
            (folder / STARTED).unlink()
        raise


def unfinished_here(folder: Path, expected_hash: str) -> bool:
    """True when `begin_stage` recorded these very inputs and the stage has not finished."""
    return unfinished(folder) and _started_hash(folder) == expected_hash


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
        (folder / STARTED).unlink(missing_ok=True)  # killed after its complete meta.json, before this went
        return "skip"
    if state == "partial" and resume:
        for leftover in folder.glob(".*.tmp"):  # a writer killed mid-write (SIGKILL, power loss) left it
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        return "resume"
    if state == "partial" and redo_partial:
        force = True
    if state in ("stale", "partial", "corrupt") and not force and any(folder.iterdir()):
        reason = {"stale": "was made from a different recipe or upstream model",
                  "corrupt": "has an unreadable meta.json (a damaged disk?)"}.get(state, "holds an unfinished run")
        resume_hint = ", --resume to continue it," if state == "partial" else ""
        raise KdtoolError(f"{folder} {reason}",
                          f"pass --force to overwrite it{resume_hint} or --out another folder")
    if folder.exists() and state in ("done", "stale", "corrupt") and any(folder.iterdir()):
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
    existing = read_meta(folder) or {}
    write_json(path, {**existing, **meta, "inputs_hash": expected_hash, "complete": complete})
    if complete:
        (folder / STARTED).unlink(missing_ok=True)
    backup = previous_of(folder)
    if complete and backup.exists():
        shutil.rmtree(backup, ignore_errors=True)
