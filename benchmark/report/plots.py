"""The report's plots as PNG bytes (matplotlib's Agg canvas, no pyplot global state, no display).

- `latency_vs_metric_png`: p50 at batch 1 vs the primary metric, with the Pareto front (legend
  below the axes, clear of the points);
- `size_png`: size on disk per artifact;
- `retention_png`: retention vs the teacher per row, grouped and coloured by stage, with the floor.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from benchmark.report.card import Report, ReportRow, higher_is_better

STAGE_COLORS = {"teacher": "#4c72b0", "student_baseline": "#8c8c8c", "student_kd": "#55a868",
                "student_pruned": "#64b5cd",
                "quantized": "#dd8452", "export": "#8172b3"}
RUNTIME_MARKERS = {"torch": "o", "torchscript": "s", "onnxruntime": "D", "executorch": "^", "coreml": "P",
                   "tensorrt": "X", "litert": "v", "openvino": "h"}


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and metric, by latency.

    Args:
        points: (latency, metric) pairs.
        higher_is_better: False for error metrics (MAE), where a lower metric is better.
    """
    from benchmark.pareto import pareto_front as front

    return sorted(front(points, ["minimize", "maximize" if higher_is_better else "minimize"]),
                  key=lambda i: (points[i][0], i))


def new_figure(width: float, height: float):  # -> (Figure, Axes)
    """A figure of `width` × `height` inches drawn off-screen (no display needed), and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def figure_png(fig) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _label_points(ax, names: list[str], points: list[tuple[float, float]]) -> None:
    """Name every point, moving a label down while it would overlap one already placed (screen space)."""
    ax.autoscale_view()
    pt = ax.figure.dpi / 72  # pixels per point
    placed: list[tuple[float, float, float]] = []  # label left x, baseline y, width (pixels)
    for i in sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0])):
        px, py = ax.transData.transform(points[i])
        width, dy = 4.2 * pt * len(names[i]), 4.0
        while any(px < qx + qw and qx < px + width and abs(py + dy * pt - qy) < 10 * pt
                  for qx, qy, qw in placed):
            dy -= 10
        placed.append((px, py + dy * pt, width))
        ax.annotate(names[i], points[i], textcoords="offset points", xytext=(6, dy), fontsize=7,
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.5} if dy < 0 else None)


def latency_vs_metric_png(report: Report) -> bytes | None:
    """Scatter of p50 latency (batch 1) vs the primary metric, Pareto front drawn; None without data."""
    fig = latency_vs_metric_figure(report)
    return None if fig is None else figure_png(fig)


def latency_vs_metric_figure(report: Report):  # -> Figure | None
    """The figure of `latency_vs_metric_png`; its legend sits below the axes, where it hides no point."""
    metric = report.primary_metric
    rows = [r for r in report.rows if r.status == "ok" and r.latency_at(1) and r.metrics.get(metric) is not None]
    if not metric or not rows:
        return None
    points = [(r.latency_at(1).p50, r.metrics[metric]) for r in rows]
    fig, ax = new_figure(7.5, 4.6)
    for r, (x, y) in zip(rows, points, strict=True):
        ax.scatter(x, y, s=60, color=STAGE_COLORS.get(r.stage, "#333"),
                   marker=RUNTIME_MARKERS.get(r.runtime, "o"), edgecolor="black", linewidth=0.5, zorder=3)
    front = pareto_front(points, higher_is_better(metric))
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="#c44e52",
            label="Pareto front", zorder=2)
    xs = [p[0] for p in points]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    _label_points(ax, [r.name for r in rows], points)
    for runtime in sorted({r.runtime for r in rows}):
        ax.scatter([], [], marker=RUNTIME_MARKERS.get(runtime, "o"), color="white", edgecolor="black",
                   label=runtime)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=len(labels), frameon=False)
    ax.set_xlabel("p50 latency at batch 1 (ms, lower is better)")
    ax.set_ylabel(metric)
    ax.set_title(f"Latency vs {metric}")
    ax.grid(alpha=0.3)
    return fig


def _barh(rows: list[ReportRow], values: list[float], xlabel: str, title: str, fmt: str,
          floor: float | None = None, zoom: bool = False) -> bytes:
    fig, ax = new_figure(7.5, 0.9 + 0.32 * len(rows))
    names = [r.name for r in rows]
    bars = ax.barh(names, values, color=[STAGE_COLORS.get(r.stage, "#333") for r in rows])
    ax.bar_label(bars, labels=[format(v, fmt) for v in values], fontsize=7, padding=2)
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(x=0.12)
    if floor is not None:
        ax.axvline(floor, color="#c44e52", linestyle="--")
        ax.annotate(f"floor {floor:g}", (floor, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -10),
                    textcoords="offset points", fontsize=8, color="#c44e52",
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    if zoom:  # retention differences of a few percent are invisible on a 0-100 axis
        low = min([*values, floor if floor is not None else 100.0])
        ax.set_xlim(max(0.0, low - 0.25 * (max(values) - low + 4)), max(values) * 1.025)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return figure_png(fig)


def size_png(report: Report) -> bytes | None:
    """Bar chart of size on disk (MB) per row; None when no row has a size."""
    rows = [r for r in report.rows if r.size_mb is not None]
    if not rows:
        return None
    return _barh(rows, [r.size_mb for r in rows], "size on disk (MB)", "Size per artifact", ".2f")


def retention_png(report: Report) -> bytes | None:
    """Bar chart of retention vs the teacher (%) per row, ordered by stage; None without retention."""
    order = list(STAGE_COLORS)
    rows = sorted((r for r in report.rows if r.retention is not None), key=lambda r: order.index(r.stage))
    if not rows:
        return None
    floor = 100 * report.min_retention if report.min_retention is not None else None
    return _barh(rows, [100 * r.retention for r in rows], "retention of the teacher's metric (%)",
                 "Retention per stage (axis zoomed)", ".1f", floor, zoom=True)
