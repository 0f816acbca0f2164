"""The report card: `ReportRow`/`Report` (schema `kdtool.report/1`), recommendation, INT8 flags, writers.

Other tools (CI gates, dashboards, the next run's `--baseline`) read `report.json`, so its shape is
versioned and only ever grows optional fields. `report.md` is a compact table for a terminal or a
CI summary; `report.html` adds plots (see `benchmark.report.render`); the terminal gets a compact
card sized to its width (`benchmark.report.console`).
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from benchmark.latency import LatencyMs
from compress.core.atomic import read_json
from compress.core.errors import KdtoolError
from export.artifact import Parity
from export.targets import TARGET_FORMATS

SCHEMA = "kdtool.report/1"

Stage = Literal["teacher", "student_baseline", "student_kd", "student_pruned", "quantized", "export"]
Format = Literal["pytorch", "torchscript", "onnx", "coreml", "executorch", "tensorrt", "aoti", "litert", "openvino"]
Precision = Literal["fp32", "fp16", "int8"]

INT8_TOLERANCE = 0.03
"""INT8 counts as slower than FP32 when its p50 is more than this fraction above (run-to-run noise)."""


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
    target: str | None = None  # the export target the artifact was made for (android, ios, server)
    path: str | None = None
    params: int | None = None
    size_mb: float | None = None
    gflops: float | None = None
    peak_mem_mb: float | None = None
    latency_ms: LatencyMs | None = None  # the smallest batch measured (batch 1 by default)
    latency_by_batch: list[LatencyMs] = []  # the other batch sizes
    throughput: float | None = None  # samples/s at the largest batch measured
    metrics: dict[str, float | None] = {}  # None: undefined here, the reason in metric_notes
    metric_notes: dict[str, str] = {}  # why a metric is null, or how it was averaged
    retention: float | None = None  # primary metric vs the teacher's (fraction)
    retention_vs_student: float | None = None  # vs the FP32 PyTorch model it came from (quantized/export rows)
    retention_reason: str | None = None  # why retention is null
    parity: Parity | None = None
    accuracy_aware: dict[str, Any] | None = None  # int8: float layers, int8 compute share, retention before/after
    notes: list[str] = []  # what the export did that a reader should know (ops decomposed for a converter)
    pruning: dict[str, Any] | None = None  # student_pruned: ratio asked, channels/params/GFLOPs removed, importance

    @model_validator(mode="before")
    @classmethod
    def _no_nan(cls, data: Any) -> Any:
        """A NaN/Inf metric or retention becomes null with a reason: report.json never holds NaN."""
        from benchmark.report.sanity import finite_or_null

        return finite_or_null(data)

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
    training: dict[str, Any] = {}  # per trained stage: the commit, versions and determinism settings it ran with
    rows: list[ReportRow] = []
    recommendation: dict[str, str] = {}
    notes: list[str] = []
    scored_split: str = "validation"  # the split every row's metrics come from ("test" with a test split)

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


def with_retention(rows: list[ReportRow], primary_metric: str, chance: float | None = None) -> list[ReportRow]:
    """Fill `retention` (vs the teacher) and `retention_vs_student` (vs the FP32 model it came from).

    The teacher reference is the first ok PyTorch row of stage `teacher`; a quantized or exported
    row is also compared with the PyTorch row of its source model (e.g. `student_kd`): what INT8
    or the export cost. Retention follows `compress.core.tasks.retention_with_reason`: per metric
    kind, and null with `retention_reason` when the teacher is at or below `chance` (a constant
    predictor's score on the validation split) or a value is missing.
    """
    from compress.core.tasks import retention_with_reason

    pytorch = {r.name: r.metrics.get(primary_metric) for r in rows
               if r.format == "pytorch" and r.status == "ok" and r.stage != "quantized"}
    teacher = next((r.metrics.get(primary_metric) for r in rows if r.stage == "teacher" and r.format == "pytorch"
                    and r.status == "ok"), None)
    out = []
    for r in rows:
        value = r.metrics.get(primary_metric)
        source = pytorch.get(r.origin) if r.stage in ("quantized", "export") else None
        kept, why = retention_with_reason(primary_metric, value, teacher, chance)
        if teacher is None:
            why = "no teacher row with a measured metric"
        vs_student = retention_with_reason(primary_metric, value, source, chance)[0] if source is not None else None
        out.append(r.model_copy(update={"retention": kept, "retention_vs_student": vs_student,
                                        "retention_reason": None if r.status != "ok" or r.stage == "teacher"
                                        else why}))
    return out


def _effective_retention(row: ReportRow, rows: list[ReportRow]) -> tuple[float | None, bool]:
    """Measured retention, else (for an unquantized artifact whose parity did not fail) its source's."""
    if row.retention is not None:
        return row.retention, False
    if row.precision == "int8" or (row.parity is not None and row.parity.status == "failed"):
        return None, False
    source = next((r for r in rows if r.name == row.origin and r.retention is not None), None)
    return (source.retention, True) if source else (None, False)


def _own_files(candidates: list[ReportRow], target: str) -> list[ReportRow]:
    """Where a format and precision was made for `target` itself (android's batch-1 ONNX), drop the
    other targets' files of it (the server's dynamic ONNX); a file shared by targets stays for all."""
    own = {(r.format, r.precision) for r in candidates if r.target == target}
    return [r for r in candidates if r.target in (None, target) or (r.format, r.precision) not in own]


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
        candidates = _own_files([r for r in rows if r.status == "ok" and r.format in formats
                                 and (formats[r.format] is None or r.precision in formats[r.format])
                                 and r.stage == "export" and r.origin != "teacher"], target)
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
    itself (a `quantized` PyTorch row made from `student_kd` is compared with `student_kd`). Among
    several, the one made for the same target (a server int8 ONNX file is compared with the server's
    fp32 file, not android's batch-1 one).
    """
    notes = []
    ok = [r for r in rows if r.status == "ok" and r.latency_at(1) is not None]
    for q in (r for r in ok if r.precision == "int8"):
        partners = [r for r in ok if r.precision == "fp32" and r.format == q.format
                    and r.runtime == q.runtime and q.origin in (r.origin, r.name)]
        if not partners:
            continue
        partner = min(partners, key=lambda r: r.target != q.target)  # the same target's file first
        slow, fast = q.latency_at(1).p50, partner.latency_at(1).p50
        if slow > fast * (1 + tolerance):
            notes.append(f"INT8 slower than FP32: {q.name} p50 {slow:.2f} ms vs {partner.name} {fast:.2f} ms "
                         f"({slow / fast:.2f}x) on {q.runtime}. {INT8_CAUSES.get(q.runtime, INT8_CAUSES['*'])}")
    return notes


def build_report(recipe_name: str, rows: list[ReportRow], primary_metric: str, targets: list[str],
                 min_retention: float, threads: int, recipe_sha256: str | None = None,
                 notes: list[str] | None = None, chance: float | None = None, scored_split: str = "validation",
                 selection_split: str | None = "validation") -> Report:
    """Assemble a report: retention, environment fingerprint, recommendation, INT8 flags and sanity notes.

    Args:
        recipe_name: the recipe's name.
        rows: one row per model/artifact (retention is recomputed here).
        primary_metric: the task's primary metric (defines retention).
        targets: deployment targets to recommend for (android, ios, server).
        min_retention: the retention floor for a recommendation.
        threads: the intra-op thread count used for latency.
        recipe_sha256: hash of the resolved recipe.
        notes: extra notes to keep (e.g. skipped stages, the teacher check made before distilling).
        chance: the best constant predictor's primary metric on the scored split (None: textbook chance).
        scored_split: the data split the rows' metrics come from ("validation" or "test").
        selection_split: the split whose metric also chose the checkpoints (noted); None for a test split
            or when the caller notes it itself.
    """
    from benchmark.environment import fingerprint
    from benchmark.report.sanity import chance_notes, null_notes, selection_note, size_notes

    rows = with_retention(rows, primary_metric, chance)
    picks, pick_notes = recommend(rows, targets, min_retention, primary_metric)
    env = fingerprint(threads, rows)
    sanity = [*chance_notes(rows, primary_metric, chance), *size_notes(rows), *null_notes(rows)]
    if selection_split:
        sanity.append(selection_note(primary_metric, selection_split))
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    return Report(recipe=RecipeRef(name=recipe_name, sha256=recipe_sha256), created=created,
                  primary_metric=primary_metric,
                  min_retention=min_retention, machine=env["machine"], versions=env["versions"], rows=rows,
                  recommendation=picks, notes=[*(notes or []), *sanity, *pick_notes, *flag_int8_slowdowns(rows),
                                               *accuracy_aware_notes(rows), *row_notes(rows), *env["warnings"]],
                  scored_split=scored_split)


def row_notes(rows: list[ReportRow]) -> list[str]:
    """The rows' own notes (`ReportRow.notes`, from their artifact's `info["notes"]`), each under its row name."""
    return [f"{row.name}: {note}" for row in rows for note in row.notes]


def accuracy_aware_notes(rows: list[ReportRow]) -> list[str]:
    """One line per int8 row whose accuracy-aware step kept layers in float or missed its floor."""
    notes = []
    for row in rows:
        facts = row.accuracy_aware or {}
        floor, status = facts.get("min_retention"), facts.get("status") or ""
        if not facts.get("float_modules") and not status.startswith("not met"):
            continue
        share = facts.get("int8_compute_share")
        notes.append(f"{row.name}: int8 retention floor {floor} {status}; kept in float: "
                     f"{', '.join(facts.get('float_modules') or []) or 'none'} (int8 share of conv/linear "
                     f"compute {'-' if share is None else f'{share:.0%}'}); retention vs fp32 "
                     f"{_num(facts.get('retention_before'), '.4f')} -> {_num(facts.get('retention_after'), '.4f')}"
                     + _agreement(facts))
    return notes


def _agreement(facts: dict[str, Any]) -> str:
    """", decision agreement a -> b" where the report has it (reports before it was checked do not)."""
    if facts.get("agreement_before") is None and facts.get("agreement_after") is None:
        return ""
    return (f", decision agreement {_num(facts.get('agreement_before'), '.3f')} -> "
            f"{_num(facts.get('agreement_after'), '.3f')}")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _params(n: int | None) -> str:
    from compress.core.progress import count_text

    return "-" if n is None else count_text(n)


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
    metrics = metric_names(report)  # Peak MB 0 means "under an earlier peak": not measurable, shown as "-"
    headers = ["Name", "Format", "Precision", "Runtime", "Status", "Params", "Size MB", "GFLOPs",
               "p50 ms", "p90 ms", "p99 ms", "Peak MB", *metrics, "Retention %", "vs FP32 %", "Parity"]
    cells = []
    for r in report.rows:
        lat = r.latency_at(1) or r.latency_ms
        status = r.status if not r.reason else f"{r.status}: {r.reason}"
        cells.append([r.name, r.format, r.precision, r.runtime, status, _params(r.params),
                      _num(r.size_mb, ".2f"), _num(r.gflops, ".3f"), _num(lat.p50 if lat else None, ".2f"),
                      _num(lat.p90 if lat else None, ".2f"), _num(lat.p99 if lat else None, ".2f"),
                      _num(r.peak_mem_mb or None, ".1f"), *[_num(r.metrics.get(m), ".4f") for m in metrics],
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
