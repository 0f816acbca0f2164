"""The report card: schema round trip, table, HTML, recommendation and INT8 flags."""

from __future__ import annotations

import base64
import html
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from benchmark.latency import measure
from benchmark.report.card import (
    LatencyMs,
    Report,
    ReportRow,
    build_report,
    flag_int8_slowdowns,
    load_report,
    recommend,
    render_markdown,
    with_retention,
)
from benchmark.report.console import render_console
from benchmark.report.plots import (
    latency_vs_metric_figure,
    latency_vs_metric_png,
    pareto_front,
    retention_png,
    size_png,
)
from benchmark.report.render import render_html, write_report
from compress.core.atomic import write_json
from compress.core.errors import KdtoolError
from export.artifact import Parity


def lat(p50: float, batch: int = 1) -> LatencyMs:
    return LatencyMs(
        p50=p50, p90=p50 * 1.1, p99=p50 * 1.3, mean=p50 * 1.02, std=p50 * 0.05, batch=batch, threads=2
    )


PASSED = Parity(status="passed", max_abs=3e-6, agreement=1.0)


def sample_rows() -> list[ReportRow]:
    """A run like the quickstart's: teacher, two students, a quantized model and exports (accuracy)."""
    return [
        ReportRow(
            name="teacher",
            stage="teacher",
            params=11_200_000,
            size_mb=44.8,
            gflops=0.57,
            latency_ms=lat(9.0),
            metrics={"accuracy": 0.98, "f1": 0.979},
        ),
        ReportRow(
            name="student_baseline",
            stage="student_baseline",
            params=600_000,
            size_mb=2.4,
            gflops=0.02,
            latency_ms=lat(3.0),
            metrics={"accuracy": 0.90, "f1": 0.899},
        ),
        ReportRow(
            name="student_kd",
            stage="student_kd",
            params=600_000,
            size_mb=2.4,
            gflops=0.02,
            latency_ms=lat(3.0),
            metrics={"accuracy": 0.97, "f1": 0.969},
        ),
        ReportRow(
            name="quantized.dynamic",
            stage="quantized",
            precision="int8",
            source="student_kd",
            size_mb=0.9,
            latency_ms=lat(3.3),
            metrics={"accuracy": 0.968},
        ),
        ReportRow(
            name="student_kd.onnx.fp32",
            stage="export",
            format="onnx",
            runtime="onnxruntime",
            size_mb=2.41,
            latency_ms=lat(0.60),
            latency_by_batch=[lat(3.0, batch=8)],
            throughput=2667.0,
            metrics={"accuracy": 0.97},
            parity=PASSED,
        ),
        ReportRow(
            name="student_kd.onnx.int8",
            stage="export",
            format="onnx",
            precision="int8",
            runtime="onnxruntime",
            size_mb=0.7,
            latency_ms=lat(2.4),
            metrics={"accuracy": 0.966},
            parity=PASSED,
        ),
        ReportRow(
            name="student_kd.executorch.fp32",
            stage="export",
            format="executorch",
            runtime="executorch",
            size_mb=2.4,
            latency_ms=lat(0.70),
            metrics={"accuracy": 0.97},
            parity=PASSED,
        ),
        ReportRow(
            name="student_kd.executorch.int8",
            stage="export",
            format="executorch",
            precision="int8",
            runtime="executorch",
            size_mb=0.8,
            latency_ms=lat(0.50),
            metrics={"accuracy": 0.955},
            parity=PASSED,
        ),
        ReportRow(
            name="student_baseline.executorch.int8",
            stage="export",
            format="executorch",
            precision="int8",
            runtime="executorch",
            size_mb=0.8,
            latency_ms=lat(0.45),
            metrics={"accuracy": 0.89},
        ),
        ReportRow(
            name="student_kd.coreml.fp32",
            stage="export",
            format="coreml",
            runtime="coreml",
            size_mb=2.5,
            parity=Parity(status="not verified on this OS"),
        ),
        ReportRow(
            name="student_kd.coreml.int8",
            stage="export",
            format="coreml",
            precision="int8",
            runtime="coreml",
            size_mb=0.7,
            parity=Parity(status="not verified on this OS"),
        ),
        ReportRow(
            name="student_kd.tensorrt.fp16",
            stage="export",
            format="tensorrt",
            precision="fp16",
            runtime="tensorrt",
            status="skipped",
            reason="TensorRT needs CUDA",
        ),
    ]


@pytest.fixture
def report() -> Report:
    return build_report(
        "quickstart",
        sample_rows(),
        "accuracy",
        ["android", "ios", "server"],
        0.97,
        threads=2,
        recipe_sha256="ab" * 32,
    )


def test_retention_vs_teacher_and_student():
    rows = {r.name: r for r in with_retention(sample_rows(), "accuracy")}
    assert rows["teacher"].retention == pytest.approx(1.0)
    assert rows["student_kd"].retention == pytest.approx(0.97 / 0.98)
    assert rows["student_kd"].retention_vs_student is None  # a PyTorch model is its own reference
    assert rows["quantized.dynamic"].retention_vs_student == pytest.approx(0.968 / 0.97)
    assert rows["student_kd.executorch.int8"].retention_vs_student == pytest.approx(0.955 / 0.97)
    assert rows["student_kd.coreml.fp32"].retention is None


def test_recommendation_picks_fastest_over_the_floor(report):
    # executorch int8 (0.50 ms) keeps 97.4%; the baseline's int8 (0.45 ms) is faster but keeps 90.8%
    assert report.recommendation["android"] == "student_kd.executorch.int8"
    assert report.recommendation["server"] == "student_kd.onnx.fp32"
    # ios: the measured ExecuTorch artifact wins; CoreML (not runnable on Linux) is named as not compared
    assert report.recommendation["ios"] == "student_kd.executorch.int8"
    assert any(n.startswith("ios") and "not compared: student_kd.coreml.fp32" in n for n in report.notes)


def test_server_onnx_int8_is_not_recommended_for_phones():
    """The ONNX int8 file is tuned for x86 servers (U8S8): android keeps ExecuTorch's int8 even when
    the ONNX one timed faster on this host; the server gets it."""
    onnx_int8 = ReportRow(name="student_kd.onnx.int8", stage="export", format="onnx", precision="int8",
                          runtime="onnxruntime", origin="student_kd", size_mb=0.7, latency_ms=lat(0.10),
                          metrics={"accuracy": 0.97}, parity=PASSED)
    rows = with_retention(sample_rows() + [onnx_int8], "accuracy")
    picks, _ = recommend(rows, ["android", "server"], 0.97, "accuracy")
    assert picks == {"android": "student_kd.executorch.int8", "server": "student_kd.onnx.int8"}


def test_recommendation_without_latency_uses_retention_then_size():
    rows = [r for r in with_retention(sample_rows(), "accuracy") if r.format != "executorch"]
    picks, notes = recommend(rows, ["ios"], 0.97, "accuracy")
    # CoreML fp32 judged by its source's retention; CoreML int8 (quality unknown here) is left out
    assert picks == {"ios": "student_kd.coreml.fp32"}
    assert "latency not measured here" in notes[0] and "retention of its source student_kd" in notes[0]


def test_recommendation_with_a_higher_floor_skips_and_explains():
    rows = with_retention(sample_rows(), "accuracy")
    picks, notes = recommend(rows, ["android"], 0.99, "accuracy")
    assert picks == {}
    assert notes[0] == (
        "android: no artifact keeps >= 99% of the teacher's accuracy (best: student_kd.onnx.fp32 at 99.0%)."
    )
    with pytest.raises(KdtoolError, match="unknown target 'watch'"):
        recommend(rows, ["watch"], 0.9)


def test_int8_slower_than_fp32_is_flagged():
    notes = flag_int8_slowdowns(sample_rows())
    assert len(notes) == 2
    assert any("student_kd.onnx.int8 p50 2.40 ms vs student_kd.onnx.fp32 0.60 ms (4.00x)" in n for n in notes)
    assert any("quantized.dynamic" in n and "vs student_kd 3.00 ms" in n for n in notes)  # vs its source
    assert not any("executorch" in n for n in notes)  # int8 faster there


def test_int8_is_compared_with_the_fp32_file_of_its_own_target():
    def onnx(name, target, precision, p50):
        return ReportRow(name=name, stage="export", format="onnx", precision=precision, runtime="onnxruntime",
                         source="student_kd", target=target, latency_ms=lat(p50), metrics={"accuracy": 0.97})

    android_b1 = onnx("student_kd.onnx-b1.fp32", "android", "fp32", 1.0)
    server = onnx("student_kd.onnx.fp32", "server", "fp32", 3.0)
    server_int8 = onnx("student_kd.onnx.int8", "server", "int8", 2.0)
    assert flag_int8_slowdowns([android_b1, server, server_int8]) == []  # 2.0 ms beats the server's 3.0 ms
    notes = flag_int8_slowdowns([android_b1, server.model_copy(update={"latency_ms": lat(1.0)}), server_int8])
    assert len(notes) == 1 and "vs student_kd.onnx.fp32 1.00 ms (2.00x)" in notes[0]


def test_json_round_trip(report, tmp_path):
    paths = write_report(report, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["schema"] == "kdtool.report/1"
    assert set(data["machine"]) >= {"cpu", "threads", "os"} and data["machine"]["threads"] == 2
    assert data["versions"]["torch"] == torch.__version__.split("+")[0]
    assert data["rows"][4]["latency_ms"]["p50"] == 0.6 and data["rows"][4]["parity"]["status"] == "passed"
    loaded = load_report(paths["json"])
    assert loaded == report
    assert not list(tmp_path.glob(".*tmp"))  # no temporaries left


def test_load_report_rejects_other_schemas(tmp_path, report):
    write_json(tmp_path / "old.json", {"schema": "kdtool.report/0", "rows": []})
    with pytest.raises(KdtoolError, match="schema is 'kdtool.report/0'"):
        load_report(tmp_path / "old.json")
    bad = report.to_json()
    bad["rows"][0]["status"] = "exploded"
    write_json(tmp_path / "bad.json", bad)
    with pytest.raises(KdtoolError, match=r"rows\.0\.status"):
        load_report(tmp_path / "bad.json")


def test_markdown_has_a_row_per_artifact(report):
    md = render_markdown(report)
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(report.rows)
    assert table[0].startswith(
        "| Name | Format | Precision | Runtime | Status | Params | Size MB | GFLOPs | p50 ms"
    )
    assert "| p99 ms | Peak MB | accuracy | f1 | Retention % | vs FP32 % | Parity |" in table[0]
    onnx = next(line for line in table if line.startswith("| student_kd.onnx.fp32 "))
    assert "| 0.60 | 0.66 | 0.78 | - | 0.9700 |" in onnx and "| 99.0 | 100.0 | passed (3.0e-06) |" in onnx
    assert "skipped: TensorRT needs CUDA" in md
    assert "**Recommended:** android: `student_kd.executorch.int8`" in md
    assert "INT8 slower than FP32" in md


def test_console_table(report):
    from rich.console import Console

    console = Console(width=250, record=True)
    console.print(render_console(report, 250, wide=True))
    text = console.export_text()
    assert "student_kd.executorch.int8" in text and "Retention %" in text


def test_html_is_self_contained_with_plots(report, tmp_path):
    page = write_report(report, tmp_path)["html"].read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:)?//", page)  # nothing fetched from outside
    assert "<link" not in page and "<script" not in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert page.count("<tr class=") == len(report.rows)  # one main-table row per model and artifact
    assert "Xeon" in page or report.machine["cpu"] in page


def _table_headers(page: str, cls: str) -> list[str]:
    head = re.search(rf"<table class='{cls}'><thead><tr>(.*?)</tr></thead>", page).group(1)
    return [html.unescape(h) for h in re.findall(r"<th[^>]*>(.*?)</th>", head)]


def test_html_main_table_holds_the_key_columns_and_reasons_are_footnotes(report):
    rows = [*report.rows, ReportRow(name="student_kd.onnx.fp16", stage="export", format="onnx", precision="fp16",
                                    runtime="onnxruntime", status="failed", reason="x" * 300)]
    page = render_html(report.model_copy(update={"rows": rows}))
    assert _table_headers(page, "key") == ["Name", "Size MB", "p50 ms", "accuracy", "Retention %", "Parity", ""]
    folded = _table_headers(page, "all")  # every other column of the card, under <details>
    assert {"Format", "Runtime", "Params", "GFLOPs", "p90 ms", "p99 ms", "Peak MB", "vs FP32 %"} <= set(folded)
    assert page.index("<table class='all'>") > page.index("<details>")
    main = page[page.index("<table class='key'>"):page.index("</table>")]
    assert "x" * 300 not in main and "TensorRT needs CUDA" not in main  # reasons are not cells
    notes = re.findall(r"<li id='note-(\d+)'><code>(.*?)</code> (\w+): (.*?)</li>", page)
    assert notes == [("1", "student_kd.tensorrt.fp16", "skipped", "TensorRT needs CUDA"),
                     ("2", "student_kd.onnx.fp16", "failed", "x" * 300)]
    assert re.findall(r"<a href='#note-(\d+)'>", main) == ["1", "2"]  # the marks in the main table
    kd_int8 = re.search(r"<tr class='pick'><td class='l'>student_kd.executorch.int8</td>(.*?)</tr>", main).group(1)
    assert re.findall(r">([^<]*)</td>", kd_int8)[:5] == ["0.80", "0.50", "0.9550", "97.4", "✓"]


def test_latency_plot_legend_hides_no_point(report):
    fig = latency_vs_metric_figure(report)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = fig.legends[0].get_window_extent()
    points = [ax.transData.transform(p) for c in ax.collections for p in c.get_offsets()]
    assert len(points) == len(report.rows) - 3  # every measured row (CoreML and TensorRT have no latency)
    assert not any(legend.contains(x, y) for x, y in points)
    assert not legend.overlaps(ax.get_window_extent())  # outside the axes: no later point can fall under it


def test_plots_render_and_skip_without_data(report):
    for png in (latency_vs_metric_png(report), size_png(report), retention_png(report)):
        assert png is not None and png.startswith(b"\x89PNG") and len(png) > 5000
    empty = Report(recipe={"name": "empty"})
    assert latency_vs_metric_png(empty) is None and size_png(empty) is None and retention_png(empty) is None


def test_pareto_front():
    points = [(1.0, 0.90), (2.0, 0.95), (1.5, 0.89), (3.0, 0.94), (0.5, 0.80)]
    assert pareto_front(points) == [4, 0, 1]
    assert pareto_front([(1.0, 0.3), (2.0, 0.2), (3.0, 0.4)], higher_is_better=False) == [0, 1]


def test_a_measured_eager_row_fits_the_schema():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    x = [np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32) for _ in range(4)]

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    stats = measure(run, x, warmup=2, min_runs=10, min_time_s=0.0, threads=1)
    row = ReportRow(
        name="student_kd",
        stage="student_kd",
        latency_ms=LatencyMs.from_stats(stats),
        throughput=stats.throughput,
    )
    assert row.latency_at(1).p50 == stats.p50 and row.latency_ms.runs == stats.runs
    assert row.latency_at(8) is None


def test_each_target_is_recommended_its_own_file_of_a_shared_format():
    """android's batch-1 ONNX and the server's dynamic ONNX: each target picks among its own files,
    even when the other target's file timed faster here; an untargeted (shared) file stays for all."""
    def onnx(name, target, ms):
        return ReportRow(name=name, stage="export", format="onnx", precision="fp32", runtime="onnxruntime",
                         origin="student_kd", target=target, size_mb=1.0, latency_ms=lat(ms),
                         metrics={"accuracy": 0.99}, parity=PASSED)

    own = [onnx("student_kd.onnx-b1.fp32", "android", 0.30), onnx("student_kd.onnx.fp32", "server", 0.01)]
    rows = with_retention([r for r in sample_rows() if r.format != "onnx"] + own, "accuracy")
    picks, _ = recommend(rows, ["android", "server"], 0.9, "accuracy")
    assert picks["server"] == "student_kd.onnx.fp32"
    assert picks["android"] != "student_kd.onnx.fp32"  # the server's file is not android's, however fast
    shared = with_retention([r for r in sample_rows() if r.format != "executorch"], "accuracy")
    assert all(r.target is None for r in shared if r.format == "onnx")
    assert recommend(shared, ["android"], 0.9, "accuracy")[0]["android"].startswith("student_kd.onnx")
