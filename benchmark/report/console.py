"""The report card in a terminal: a compact table that fits the width and never wraps a cell.

One line per model and artifact: name, MB, p50 ms, the primary metric, retention and parity
(✓ passed, ✗ failed, n/v not verified), then the recommendation and the notes. Reasons (why a row
was skipped or failed) become footnotes `[n]` below the table. From 100 columns on, secondary
columns (format/precision, runtime, vs FP32, params, GFLOPs, p99) are added while they fit;
`wide=True` prints every column of the Markdown/HTML card instead. The files keep every column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from benchmark.report.card import Report, ReportRow, table
from compress.core.progress import count_text

COMPACT_BELOW = 100
"""Below this many columns only the essential columns are shown."""


@dataclass(frozen=True)
class Column:
    """One column of the compact card: its header, how a row fills it, and its alignment."""

    header: str
    cell: Callable[[ReportRow], str]
    right: bool = True


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _p50(r: ReportRow) -> float | None:
    lat = r.latency_at(1) or r.latency_ms
    return lat.p50 if lat else None


def _p99(r: ReportRow) -> float | None:
    lat = r.latency_at(1) or r.latency_ms
    return lat.p99 if lat else None


def parity_mark(r: ReportRow) -> str:
    """✓ passed, ✗ failed, n/v not verified here (e.g. CoreML on Linux), - no parity check (PyTorch rows)."""
    if r.parity is None:
        return "-"
    return {"passed": "✓", "failed": "✗"}.get(r.parity.status, "n/v")


SECONDARY = ("Format", "Runtime", "vs FP32 %", "Params", "GFLOPs", "p99 ms")
"""Secondary columns, added in this order while they fit (from `COMPACT_BELOW` columns on)."""


def _columns(report: Report, notes: dict[str, int]) -> list[Column]:
    """Every compact-card column in display order (the essential ones and `SECONDARY`)."""
    metric = report.primary_metric or ""
    return [
        Column("Name", lambda r: r.name, right=False),
        Column("Format", lambda r: f"{r.format} {r.precision}", right=False),
        Column("Runtime", lambda r: r.runtime, right=False),
        Column("Params", lambda r: "-" if r.params is None else count_text(r.params)),
        Column("GFLOPs", lambda r: _num(r.gflops, ".3f")),
        Column("MB", lambda r: _num(r.size_mb, ".2f")),
        Column("p50 ms", lambda r: _num(_p50(r), ".2f")),
        Column("p99 ms", lambda r: _num(_p99(r), ".2f")),
        Column(metric or "metric", lambda r: _num(r.metrics.get(metric), ".4f")),
        Column("Ret %", lambda r: _num(None if r.retention is None else 100 * r.retention, ".1f")),
        Column("vs FP32 %", lambda r: _num(None if r.retention_vs_student is None
                                            else 100 * r.retention_vs_student, ".1f")),
        Column("Parity", parity_mark, right=False),
        Column("", lambda r: f"[{notes[r.name]}]" if r.name in notes else "", right=False),
    ]


def _table(report: Report, columns: list[Column], picks: set[str]) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True)
    for c in columns:
        t.add_column(escape(c.header), justify="right" if c.right else "left", no_wrap=True, overflow="ellipsis")
    for r in report.rows:
        style = {"failed": "red", "skipped": "dim"}.get(r.status, "bold" if r.name in picks else None)
        t.add_row(*(escape(c.cell(r)) for c in columns), style=style)
    return t


def _wide_table(report: Report, notes: dict[str, int]) -> Table:
    """Every column of the Markdown/HTML card; reasons stay footnotes so no cell is a paragraph."""
    headers, cells = table(report)
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1), collapse_padding=True)
    for h in headers:
        t.add_column(escape(h), no_wrap=True,
                      justify="right" if h not in ("Name", "Format", "Precision", "Runtime", "Status", "Parity")
                      else "left")
    status = headers.index("Status")
    for row, r in zip(cells, report.rows, strict=True):
        row = [*row[:status], r.status + (f" [{notes[r.name]}]" if r.name in notes else ""), *row[status + 1:]]
        t.add_row(*(escape(c) for c in row))
    return t


def fitted_table(report: Report, width: int, notes: dict[str, int]) -> Table:
    """The compact table with as many secondary columns as fit in `width` (none below `COMPACT_BELOW`)."""
    columns = _columns(report, notes)
    picks = set(report.recommendation.values())
    kept: set[str] = set()
    best = _table(report, [c for c in columns if c.header not in SECONDARY], picks)
    if width < COMPACT_BELOW:
        return best
    measure = Console(width=10_000, file=_Null(), color_system=None)
    for name in SECONDARY:
        candidate = _table(report, [c for c in columns if c.header not in SECONDARY or c.header in {*kept, name}],
                           picks)
        if measure.measure(candidate).maximum > width:
            break
        kept.add(name)
        best = candidate
    return best


def render_console(report: Report, width: int = 80, wide: bool = False) -> RenderableType:
    """The card for a terminal of `width` columns: title, table, recommendation, footnotes and notes.

    Args:
        report: the report card.
        width: the terminal's width (the table never exceeds it in compact mode).
        wide: print every column of the full card (it may be wider than the terminal).
    """
    reasons = [(r.name, f"{r.status}: {r.reason}") for r in report.rows if r.reason]
    footnotes = {name: i for i, (name, _) in enumerate(reasons, 1)}
    m = report.machine
    parts: list[RenderableType] = [
        Text(f"kdtool report: {report.recipe.name}", style="bold"),
        Text(f"primary metric {report.primary_metric or '-'} · p50 at batch 1 · {m.get('threads', '?')} threads "
             f"· {m.get('cpu', '?')}", style="dim", overflow="ellipsis", no_wrap=True),
        _wide_table(report, footnotes) if wide else fitted_table(report, width, footnotes),
    ]
    parts += [Text(f"{'Recommended:' if i == 0 else '':<12} {t} → {n}", style="green")
              for i, (t, n) in enumerate(report.recommendation.items())]
    parts += [Text(f"[{footnotes[name]}] {name}: {why}", style="dim") for name, why in reasons]
    parts += [Text(f"note: {n}", style="yellow") for n in report.notes]
    return Group(*parts)


def print_card(report: Report, console: Console, wide: bool = False) -> None:
    """Print the card sized to `console`'s width (notes wrap at that width, also when piped).

    `wide` prints every column unshrunk, wider than the terminal when it must (the terminal wraps)."""
    width = console.width
    if not wide:
        console.print(render_console(report, width), soft_wrap=False)
        return
    measure = Console(width=10_000, file=_Null(), color_system=None)
    needed = measure.measure(_wide_table(report, {r.name: 0 for r in report.rows})).maximum
    console.width = max(width, needed)  # rich never prints wider than the console's width
    try:
        console.print(render_console(report, console.width, wide=True), soft_wrap=False)
    finally:
        console.width = width


class _Null:
    """A file that discards what is written (for measuring tables)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None: ...
