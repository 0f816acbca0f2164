"""`benchmark`: the report card for the user's own models, artifacts and DataLoader (`kdtool benchmark` builds
its card through `make_card` too).

```python
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from benchmark import benchmark
from benchmark.api import Card
from recipes.schema import BenchmarkConfig

x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
val = DataLoader(TensorDataset(x, y), batch_size=32)
teacher = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
card = benchmark([], val, teacher=teacher, student=nn.Linear(8, 3), task="multiclass",
                 config=BenchmarkConfig(min_runs=3, min_time_s=0.01, warmup=1))
assert isinstance(card, Card) and [r.name for r in card.rows] == ["teacher", "student_kd"]
assert card.row("student_kd").metrics["accuracy"] is not None and "| teacher |" in card.to_markdown()
```
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from benchmark.measure import ModelEntry, Scoring, measure_rows
from benchmark.report.card import Report, build_report, render_markdown
from compress.core.errors import KdtoolError
from compress.core.runfolder import is_finished
from compress.core.tasks import Task, as_task
from compress.data.batches import LoaderBatches, as_batches
from compress.models.build import BuiltModel, Preprocess, check_model_io, forward_checked
from export.artifact import Artifact
from export.index import ordered, read_index
from export.targets import TARGETS
from recipes.schema import BenchmarkConfig


class Card(Report):
    """The report card (`report.json`, schema `kdtool.report/1`): `rows`, `recommendation` (target → row
    name), `notes`, `row(name)`, `to_json()` (the JSON object), and the renderings below."""

    @classmethod
    def of(cls, report: Report) -> Card:
        """The card of a `Report` (e.g. `load_report("runs/x/report/report.json")`)."""
        return report if isinstance(report, Card) else cls.model_validate(report.to_json())

    def to_markdown(self) -> str:
        """The compact markdown card (report.md)."""
        return render_markdown(self)

    def to_html(self) -> str:
        """The self-contained HTML page with plots (report.html)."""
        from benchmark.report.render import render_html

        return render_html(self)

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write report.json, report.md and report.html into `out_dir` (atomically); returns their paths."""
        from benchmark.report.render import write_report

        return write_report(self, out_dir)

    def _repr_html_(self) -> str:
        """A notebook's view: the recommendation and the key columns (the page's CSS would restyle the notebook)."""
        from benchmark.report.notebook import render_fragment

        return render_fragment(self)


MODEL_ROWS = ("teacher", "student_baseline", "student_kd")
"""The names (and stages) a PyTorch model can have on the card."""


def benchmark(artifacts_or_run_dir: list[Artifact] | str | Path, val_loader: Iterable, teacher: nn.Module | None = None,
              task: Task | str | None = None, *, student: nn.Module | None = None,
              models: dict[str, nn.Module] | None = None, targets: list[str] | None = None,
              config: BenchmarkConfig | None = None, name: str = "python", out_dir: str | Path | None = None,
              input_key: str = "input", label_key: str = "label") -> Card:
    """Measure the user's models and artifacts on their validation loader and build the report card.

    Args:
        artifacts_or_run_dir: `export_model`'s artifacts, an export folder, or a kdtool run folder (its
            exported artifacts and quantized models).
        val_loader: batches of model inputs with labels: tuples `(input, label, ...)` or dicts
            (`input_key`, `label_key`); used as given (its collate_fn and batch size).
        teacher: the teacher (retention is measured against it); None: no retention.
        task: a `Task`, or its kind ("multiclass", ...; width from the first model's output).
        student: the fp32 student the artifacts came from (its row, params and GFLOPs).
        models: more PyTorch rows by name: "student_baseline" (or "teacher"/"student_kd").
        targets: deployment targets to recommend for (default: those the artifacts were made for).
        config: latency settings, thread count and `min_retention` (default `BenchmarkConfig()`).
        name: the card's title.
        out_dir: also write report.json, report.md and report.html there.
        input_key, label_key: where dict batches keep the input and the label.

    Returns:
        The `Card`.

    Raises:
        KdtoolError: at the loader's first batch, no labels or an input a model cannot take (one line naming
            the shapes); an unknown model name; a folder that holds no artifacts.
    """
    bench = config or BenchmarkConfig()
    batches = as_batches(val_loader, "val_loader", input_key, label_key)
    given = {"teacher": teacher, "student_kd": student, **(models or {})}
    unknown = sorted(set(given) - set(MODEL_ROWS))
    if unknown:
        raise KdtoolError(f"benchmark: unknown model name {unknown[0]!r}", f"use {', '.join(MODEL_ROWS)}")
    entries = [ModelEntry(n, n, m, _same) for n in MODEL_ROWS if (m := given.get(n)) is not None]
    artifacts, quantized, root = _artifacts(artifacts_or_run_dir)
    raw = first_samples(batches)
    check_models(entries, raw, None)  # a shape a model cannot take fails here, in one line, not inside torch
    scoring = Scoring(batches=lambda _size: batches, task=as_task(task, entries[0].module, raw[:2]) if entries
                      else _known_task(task), raw=raw, name="validation")
    check_models(entries, raw, scoring.task)
    targets = targets or [t for t in TARGETS if any(a.target == t and a.status == "ok" for a in artifacts)]
    card = make_card(entries, quantized, artifacts, scoring, bench, targets, name, root=root,
                     student=next((e for e in entries if e.name == "student_kd"), None))
    if out_dir is not None:
        card.save(out_dir)
    return card


def make_card(models: list[ModelEntry], quantized: list[Path], artifacts: list[Artifact], scoring: Scoring,
              bench: BenchmarkConfig, targets: list[str], name: str, *, student: ModelEntry | None,
              root: Path | None = None, min_retention: float | None = None, recipe_sha256: str | None = None,
              notes: list[str] | None = None, rescore_quantized: bool = True) -> Card:
    """Measure every row and assemble the card: the one path of `benchmark` and `kdtool benchmark`.

    Args:
        models, quantized, artifacts, scoring, bench, student, root, rescore_quantized: see
            `benchmark.measure.measure_rows`.
        targets: targets to recommend for.
        name: the card's title (the recipe's name).
        min_retention: the recommendation's floor (default `bench.min_retention`).
        recipe_sha256: the resolved recipe's hash (CLI).
        notes: notes to put first (where the teacher came from, which split is scored).
    """
    from compress.core import determinism

    rows = measure_rows(models, quantized, artifacts, scoring, bench, student, root, rescore_quantized)
    card = build_report(name, rows, scoring.task.primary_metric, targets,
                        bench.min_retention if min_retention is None else min_retention, bench.threads,
                        recipe_sha256=recipe_sha256, chance=scoring.chance(), scored_split=scoring.name,
                        selection_split=None, notes=notes)
    return Card.of(card.model_copy(update={"versions": {**card.versions, "kdtool": determinism.commit()}}))


def first_samples(batches: LoaderBatches, n: int = 32) -> torch.Tensor:
    """Up to `n` inputs from the loader's first batches (the latency inputs).

    Raises:
        KdtoolError: the loader yields no labels, or nothing.
    """
    raw, seen = [], 0
    for x, _, _ in batches:
        raw.append(x)
        seen += len(x)
        if seen >= n:
            break
    if not raw:
        raise KdtoolError(f"{batches.name} yields no batches", "give it a dataset with samples")
    return torch.cat(raw)[:n]


def check_models(entries: list[ModelEntry], raw: torch.Tensor, task: Task | None) -> None:
    """Each model takes the loader's input (and, with `task`, gives (N, num_outputs)); else one line naming both.

    Raises:
        KdtoolError: "val_loader: student_kd.arch Net cannot take input of shape (2, 5) (it expects ...)".
    """
    for entry in entries:
        built = BuiltModel(entry.module, Preprocess(kind="tensor"), type(entry.module).__name__)
        try:
            if task is None:
                forward_checked(built, raw[:2], entry.name)
            else:
                check_model_io(built, raw[:2], task, entry.name)
        except KdtoolError as e:
            raise KdtoolError(f"val_loader: {e.message}", e.hint) from e.__cause__


def _known_task(task: Task | str | None) -> Task:
    if not isinstance(task, Task):
        raise KdtoolError("benchmark: without a model the task's width is unknown",
                          "pass task=Task(kind, num_outputs), or a teacher or student")
    return task


def _same(x: torch.Tensor) -> torch.Tensor:
    return x


def _artifacts(source: list[Artifact] | str | Path) -> tuple[list[Artifact], list[Path], Path | None]:
    """(artifacts, quantized-model folders, run folder) from a list or from an export or run folder."""
    if not isinstance(source, str | Path):
        return list(source), [], None
    folder = Path(source)
    run = folder if (folder / "export").is_dir() else None
    # the artifacts' manifests are the truth; the folder's meta.json is only their cache (after a kill)
    entries = ordered(read_index(folder / "export" if run is not None else folder))
    if not entries:
        raise KdtoolError(f"{folder} holds no exported artifacts (no export/meta.json or meta.json listing them)",
                          "pass export_model's list, or a run or export folder kdtool wrote")
    quantized = sorted(p.parent for p in (run / "quantized").glob("*/*/meta.json")
                       if is_finished(p.parent)) if run is not None else []
    return [Artifact.model_validate(a) for a in entries], quantized, run if run is not None else folder.parent
