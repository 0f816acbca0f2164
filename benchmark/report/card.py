"""The report card: `ReportRow`/`Report` (schema `kdtool.report/1`), recommendation, INT8 flags, writers.

Other tools (CI gates, dashboards, the next run's `--baseline`) read `report.json`, so its shape is
versioned and only ever grows optional fields. `report.md` is a compact table for a terminal or a
CI summary; `report.html` adds plots (see `benchmark.report.render`).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from benchmark.latency import LatencyStats
from compress.core.atomic import read_json
from compress.core.errors import KdtoolError
from export.artifact import Parity
from export.targets import TARGET_FORMATS

SCHEMA = "kdtool.report/1"

Stage = Literal["teacher", "student_baseline", "student_kd", "quantized", "export"]
Format = Literal["pytorch", "torchscript", "onnx", "coreml", "executorch", "tensorrt", "aoti"]
Precision = Literal["fp32", "fp16", "int8"]

INT8_TOLERANCE = 0.03
"""INT8 counts as slower than FP32 when its p50 is more than this fraction above (run-to-run noise)."""


class LatencyMs(BaseModel):
    """The latency summary kept in a report row (milliseconds)."""

    model_config = ConfigDict(frozen=True)

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    batch: int = 1
    threads: int
    runs: int | None = None
    load_ms: float | None = None
    overhead_ms: float | None = None

    @classmethod
    def from_stats(cls, stats: LatencyStats) -> LatencyMs:
        """Keep the report's fields of a `LatencyStats`."""
        return cls(**stats.model_dump(include=set(cls.model_fields)))


class ReportRow(BaseModel):
    """One model or artifact: what it is, what it costs, how good it is, and whether it matches PyTorch."""

    model_config = ConfigDict(frozen=True)

    name: str  # "student_kd.executorch.int8"
    stage: Stage
    format: Format = "pytorch"
    precision: Precision = "fp32"
    runtime: str = "torch"
    status: Literal["ok", "failed", "skipped"] = "ok"
    reason: str | None = None
    source: str | None = None  # the row (model) this artifact was made from, e.g. "student_kd"
    path: str | None = None
    params: int | None = None
    size_mb: float | None = None
    gflops: float | None = None
    peak_mem_mb: float | None = None
    latency_ms: LatencyMs | None = None  # the smallest batch measured (batch 1 by default)
    latency_by_batch: list[LatencyMs] = []  # the other batch sizes
    throughput: float | None = None  # samples/s at the largest batch measured
    metrics: dict[str, float] = {}
    retention: float | None = None  # primary metric vs the teacher's (fraction)
    retention_vs_student: float | None = None  # vs the FP32 PyTorch model it came from (quantized/export rows)
    parity: Parity | None = None

    def latency_at(self, batch: int = 1) -> LatencyMs | None:
        """The latency measured at `batch`, or None."""
        for lat in [self.latency_ms, *self.latency_by_batch]:
            if lat is not None and lat.batch == batch:
                return lat
        return None

    @property
    def origin(self) -> str:
        """The model this row derives from (`source`, else the first part of the name)."""
        return self.source or self.name.split(".")[0]


class RecipeRef(BaseModel):
    """Which recipe produced the report."""

    name: str
    sha256: str | None = None


class Report(BaseModel):
    """The whole report card (`report.json`)."""

    model_config = ConfigDict(populate_by_name=True)

    schema_id: Literal["kdtool.report/1"] = Field(SCHEMA, alias="schema")
    recipe: RecipeRef
    created: str | None = None
    primary_metric: str | None = None
    min_retention: float | None = None
    machine: dict[str, Any] = {}
    versions: dict[str, str] = {}
    rows: list[ReportRow] = []
    recommendation: dict[str, str] = {}
    notes: list[str] = []

    def row(self, name: str) -> ReportRow | None:
        """The row called `name`, or None."""
        return next((r for r in self.rows if r.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to report.json."""
        return self.model_dump(mode="json", by_alias=True)


def higher_is_better(metric: str) -> bool:
    """False for error metrics (MAE, MSE, loss), whose lower values are better."""
    from compress.core.tasks import lower_is_better

    return not lower_is_better(metric)


def with_retention(rows: list[ReportRow], primary_metric: str) -> list[ReportRow]:
    """Fill `retention` (vs the teacher) and `retention_vs_student` (vs the FP32 model it came from).

    The teacher reference is the first ok PyTorch row of stage `teacher`; a quantized or exported
    row is also compared with the PyTorch row of its source model (e.g. `student_kd`): what INT8
    or the export cost. For error metrics (MAE, ...) retention is reference / value
    (see `compress.core.tasks.retention`).
    """
    from compress.core.tasks import retention

    pytorch = {r.name: r.metrics.get(primary_metric) for r in rows
               if r.format == "pytorch" and r.status == "ok" and r.stage != "quantized"}
    teacher = next((r.metrics.get(primary_metric) for r in rows if r.stage == "teacher" and r.format == "pytorch"
                    and r.status == "ok"), None)
    out = []
    for r in rows:
        value = r.metrics.get(primary_metric)
        source = pytorch.get(r.origin) if r.stage in ("quantized", "export") else None
        out.append(r.model_copy(update={
            "retention": retention(primary_metric, value, teacher) if value is not None and teacher else None,
            "retention_vs_student": retention(primary_metric, value, source) if value is not None and source
            else None,
        }))
    return out


def _effective_retention(row: ReportRow, rows: list[ReportRow]) -> tuple[float | None, bool]:
    """Measured retention, else (for an unquantized artifact whose parity did not fail) its source's."""
    if row.retention is not None:
        return row.retention, False
    if row.precision == "int8" or (row.parity is not None and row.parity.status == "failed"):
        return None, False
    source = next((r for r in rows if r.name == row.origin and r.retention is not None), None)
    return (source.retention, True) if source else (None, False)


def recommend(rows: list[ReportRow], targets: list[str], min_retention: float,
              primary_metric: str | None = None) -> tuple[dict[str, str], list[str]]:
    """Pick, per target, the fastest artifact (p50 at batch 1) that keeps `min_retention` of the teacher.

    Candidates are ok exported artifacts (stage `export`: files with a manifest) of the target's
    formats and precisions (`TARGET_FORMATS`), artifacts of the teacher excluded. An
    artifact that cannot run here (CoreML on Linux) and was not quantized is judged by its source
    model's retention. When no candidate of a target has a latency measured on this machine, the
    pick is the highest retention, then the smallest file, and the note says so.

    Returns:
        `{target: row name}` and notes explaining each pick (or why there is none).
    """
    picks: dict[str, str] = {}
    notes: list[str] = []
    what = primary_metric or "metric"
    for target in targets:
        formats = TARGET_FORMATS.get(target)
        if formats is None:
            raise KdtoolError(f"unknown target {target!r}", f"known: {', '.join(TARGET_FORMATS)}")
        candidates = [r for r in rows if r.status == "ok" and r.format in formats
                      and (formats[r.format] is None or r.precision in formats[r.format])
                      and r.stage == "export" and r.origin != "teacher"]
        if not candidates:
            notes.append(f"{target}: no {'/'.join(formats)} artifact was made or ran; nothing to recommend.")
            continue
        scored = [(r, *_effective_retention(r, rows)) for r in candidates]
        eligible = [(r, ret, proxy) for r, ret, proxy in scored if ret is not None and ret >= min_retention]
        if not eligible:
            known = [(r, ret) for r, ret, _ in scored if ret is not None]
            best = max(known, key=lambda t: t[1], default=None)
            why = f" (best: {best[0].name} at {best[1]:.1%})" if best else " (quality not measured here)"
            notes.append(f"{target}: no artifact keeps >= {min_retention:.0%} of the teacher's {what}{why}.")
            continue
        timed = [(r, ret, proxy) for r, ret, proxy in eligible if r.latency_at(1) is not None]
        if timed:
            r, ret, proxy = min(timed, key=lambda t: (t[0].latency_at(1).p50, -t[1]))
            note = (f"{target}: {r.name}, fastest at batch 1 ({r.latency_at(1).p50:.2f} ms p50) "
                    f"with {ret:.1%} retention")
        else:
            r, ret, proxy = min(eligible, key=lambda t: (-t[1], t[0].size_mb or float("inf")))
            note = (f"{target}: {r.name} by retention ({ret:.1%}) and size "
                    f"({r.size_mb or 0:.2f} MB); latency not measured here")
        untimed = [c.name for c, _, _ in eligible if c.latency_at(1) is None]
        if timed and untimed:
            note += f"; not compared: {', '.join(untimed)} (latency not measured here)"
        picks[target] = r.name
        notes.append(note + (f" (retention of its source {r.origin}; the artifact cannot run here)." if proxy
                             else "."))
    return picks, notes


INT8_CAUSES = {
    "onnxruntime": "Common causes: ONNX Runtime's QDQ path on x86 (QuantizeLinear/DequantizeLinear around "
                   "every op), reduce_range, no VNNI/AMX int8 kernels, quantize/dequantize overhead on small models.",
    "torch": "Common causes: eager int8 (torchao tensor subclasses) runs reference kernels without "
             "torch.compile, and only nn.Linear is quantized while convolutions stay fp32.",
    "*": "Common causes: missing int8 kernels for this CPU (VNNI/AMX), quantize/dequantize overhead on small "
         "models, ops the delegate did not take.",
}


def flag_int8_slowdowns(rows: list[ReportRow], tolerance: float = INT8_TOLERANCE) -> list[str]:
    """Notes for every INT8 row slower (p50, batch 1) than the FP32 row of the same format, runtime and model.

    The FP32 partner has the same format and runtime and either the same origin, or is the origin
    itself (a `quantized` PyTorch row made from `student_kd` is compared with `student_kd`).
    """
    notes = []
    ok = [r for r in rows if r.status == "ok" and r.latency_at(1) is not None]
    for q in (r for r in ok if r.precision == "int8"):
        partner = next((r for r in ok if r.precision == "fp32" and r.format == q.format
                        and r.runtime == q.runtime and q.origin in (r.origin, r.name)), None)
        if partner is None:
            continue
        slow, fast = q.latency_at(1).p50, partner.latency_at(1).p50
        if slow > fast * (1 + tolerance):
            notes.append(f"INT8 slower than FP32: {q.name} p50 {slow:.2f} ms vs {partner.name} {fast:.2f} ms "
                         f"({slow / fast:.2f}x) on {q.runtime}. {INT8_CAUSES.get(q.runtime, INT8_CAUSES['*'])}")
    return notes


def build_report(recipe_name: str, rows: list[ReportRow], primary_metric: str, targets: list[str],
                 min_retention: float, threads: int, recipe_sha256: str | None = None,
                 notes: list[str] | None = None) -> Report:
    """Assemble a report: retention, environment fingerprint, recommendation and INT8 flags.

    Args:
        recipe_name: the recipe's name.
        rows: one row per model/artifact (retention is recomputed here).
        primary_metric: the task's primary metric (defines retention).
        targets: deployment targets to recommend for (android, ios, server).
        min_retention: the retention floor for a recommendation.
        threads: the intra-op thread count used for latency.
        recipe_sha256: hash of the resolved recipe.
        notes: extra notes to keep (e.g. skipped stages).
    """
    from benchmark.environment import fingerprint

    rows = with_retention(rows, primary_metric)
    picks, pick_notes = recommend(rows, targets, min_retention, primary_metric)
    env = fingerprint(threads)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Report(recipe=RecipeRef(name=recipe_name, sha256=recipe_sha256), created=created,
                  primary_metric=primary_metric,
                  min_retention=min_retention, machine=env["machine"], versions=env["versions"], rows=rows,
                  recommendation=picks, notes=[*(notes or []), *pick_notes, *flag_int8_slowdowns(rows)])


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _parity(p: Parity | None) -> str:
    if p is None:
        return "-"
    return f"{p.status} ({p.max_abs:.1e})" if p.max_abs is not None else p.status


def metric_names(report: Report, limit: int = 3) -> list[str]:
    """The metrics shown as columns: the primary metric first, then others in first-seen order."""
    names = [report.primary_metric] if report.primary_metric else []
    for r in report.rows:
        names += [m for m in r.metrics if m not in names]
    return [n for n in names if any(n in r.metrics for r in report.rows)][:limit]


def table(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells of the report table (shared by markdown, console and HTML)."""
    metrics = metric_names(report)
    headers = ["Name", "Format", "Precision", "Runtime", "Status", "Params", "Size MB", "GFLOPs",
               "p50 ms", "p90 ms", "p99 ms", "Peak MB", *metrics, "Retention %", "vs FP32 %", "Parity"]
    cells = []
    for r in report.rows:
        lat = r.latency_at(1) or r.latency_ms
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        cells.append([r.name, r.format, r.precision, r.runtime, status, _params(r.params),
                      _num(r.size_mb, ".2f"), _num(r.gflops, ".3f"), _num(lat.p50 if lat else None, ".2f"),
                      _num(lat.p90 if lat else None, ".2f"), _num(lat.p99 if lat else None, ".2f"),
                      _num(r.peak_mem_mb, ".1f"), *[_num(r.metrics.get(m), ".4f") for m in metrics],
                      _num(None if r.retention is None else 100 * r.retention, ".1f"),
                      _num(None if r.retention_vs_student is None else 100 * r.retention_vs_student, ".1f"),
                      _parity(r.parity)])
    return headers, cells


def render_markdown(report: Report) -> str:
    """The compact markdown report: header, table, recommendation, notes, machine and versions."""
    headers, cells = table(report)
    m = report.machine
    lines = [f"# kdtool report: {report.recipe.name}", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('threads', '?')} threads, {m.get('os', '?')}. "
             f"Latency at batch 1; primary metric: {report.primary_metric or '-'}.", "",
             "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    if report.recommendation:
        picks = ", ".join(f"{t}: `{n}`" for t, n in report.recommendation.items())
        lines += ["", f"**Recommended:** {picks}"]
    if report.notes:
        lines += ["", "Notes:", *[f"- {n}" for n in report.notes]]
    installed = ", ".join(f"{k} {v}" for k, v in report.versions.items() if v != "not installed")
    lines += ["", f"Versions: {installed}"]
    return "\n".join(lines) + "\n"


def render_console(report: Report) -> Any:
    """The report table as a `rich.table.Table` (print it with `rich.console.Console().print`)."""
    from rich.markup import escape
    from rich.table import Table

    headers, cells = table(report)
    t = Table(title=f"kdtool report: {report.recipe.name}", caption=" · ".join(
        f"{k}: {v}" for k, v in report.recommendation.items()) or None)
    for h in headers:
        t.add_column(h, justify="left" if h in ("Name", "Format", "Precision", "Runtime", "Status", "Parity")
                     else "right", overflow="fold")
    for row, r in zip(cells, report.rows, strict=True):
        t.add_row(*(escape(cell) for cell in row), style={"failed": "red", "skipped": "dim"}.get(r.status))
    return t


def load_report(path: str | os.PathLike) -> Report:
    """Read and validate a report.json (e.g. a `--baseline`).

    Raises:
        KdtoolError: the file is missing, not JSON, of another schema, or malformed.
    """
    data = read_json(path)
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema != SCHEMA:
        raise KdtoolError(f"{path}: schema is {schema!r}, expected {SCHEMA!r}",
                          "pass a report.json written by this kdtool version")
    try:
        return Report.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise KdtoolError(f"{path}: invalid report at {where}: {err['msg']}",
                          "regenerate it with kdtool benchmark") from e
