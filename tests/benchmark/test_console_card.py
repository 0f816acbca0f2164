"""The terminal card: fits 80 and 120 columns, names whole, reasons as footnotes; `kdtool report` reprints it."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
from cli_fixtures import REPO, cli, cli_env
from rich.console import Console

from benchmark.report.card import LatencyMs, ReportRow, build_report
from benchmark.report.console import print_card, render_console
from benchmark.report.render import write_report
from export.artifact import Parity

LONG_REASON = ("TensorRT needs an NVIDIA GPU and `pip install \"kdtool[tensorrt]\"` (tensorrt is not installed); "
               "the ONNX it would consume is exported beside it")


def _lat(p50: float) -> LatencyMs:
    return LatencyMs(p50=p50, p90=p50 * 1.1, p99=p50 * 1.3, mean=p50, std=0.01, threads=2)


def _row(name: str, fmt: str, precision: str, runtime: str, p50: float | None, acc: float | None,
         parity: str | None = "passed", **extra) -> ReportRow:
    stage = name if "." not in name else "export"
    return ReportRow(name=name, stage=stage, format=fmt, precision=precision, runtime=runtime, source="student_kd",
                     params=48_010, size_mb=0.21, gflops=0.004, latency_ms=_lat(p50) if p50 else None,
                     metrics={"accuracy": acc} if acc is not None else {}, peak_mem_mb=0.0,
                     parity=Parity(status=parity, max_abs=1e-6) if parity else None, **extra)


@pytest.fixture(scope="module")
def report():
    rows = [
        _row("teacher", "pytorch", "fp32", "torch", 0.61, 0.998, None),
        _row("student_kd", "pytorch", "fp32", "torch", 0.53, 0.996, None),
        _row("student_kd.static.executorch", "pytorch", "int8", "torch", None, 0.995, None,
             reason="PT2E reference model (simulated int8); timed as its ExecuTorch artifact"),
        _row("student_kd.executorch.int8", "executorch", "int8", "executorch", 0.03, 0.995),
        _row("student_kd.executorch-coreml.fp16", "executorch", "fp16", "executorch", None, None,
             "not verified on this OS", status="skipped", reason="CoreML delegate: needs macOS"),
        _row("student_kd.onnx.fp32", "onnx", "fp32", "onnxruntime", 0.06, 0.996),
        _row("student_kd.onnx.int8", "onnx", "int8", "onnxruntime", 0.04, 0.991, "failed", status="failed",
             reason="parity: decisions differ on 3 of 64 samples"),
        _row("student_kd.tensorrt.fp16", "tensorrt", "fp16", "tensorrt", None, None, None, status="skipped",
             reason=LONG_REASON),
        _row("student_kd.torchscript.fp32", "torchscript", "fp32", "torchscript", 0.33, 0.996),
    ]
    return build_report("quickstart", rows, "accuracy", ["android", "server"], 0.9, threads=2)


def _text(report, width: int, wide: bool = False) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(render_console(report, width, wide=wide), soft_wrap=False)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
def test_card_fits_the_width_with_every_name_whole(report, width):
    text = _text(report, width)
    lines = text.splitlines()
    assert max(len(ln) for ln in lines) <= width
    table = lines[:next(i for i, ln in enumerate(lines) if ln.startswith("Recommended"))]  # notes may name rows
    table_lines = [ln for ln in table if ln.split() and ln.split()[0] in {r.name for r in report.rows}]
    assert len(table_lines) == len(report.rows)  # one line per row: no cell wrapped
    for row in report.rows:
        assert any(ln.split()[0] == row.name for ln in table_lines), row.name
    assert "…" not in "\n".join(table_lines)  # nothing cut


def test_compact_card_has_the_essentials_and_footnotes(report):
    text = _text(report, 80)
    header = next(ln for ln in text.splitlines() if ln.startswith("Name"))
    assert header.split() == ["Name", "MB", "p50", "ms", "accuracy", "Ret", "%", "Parity"]
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.strip()}
    assert "✓" in lines["student_kd.onnx.fp32"] and "✗" in lines["student_kd.onnx.int8"]
    assert "n/v" in lines["student_kd.executorch-coreml.fp16"]
    assert lines["student_kd.tensorrt.fp16"].rstrip().endswith("[4]")
    footnote = text[text.index("[4] student_kd.tensorrt.fp16: skipped:"):]
    assert "tensorrt is not installed" in " ".join(footnote.split())
    assert "Recommended:" in text and "android → student_kd.executorch.int8" in text


def test_wider_terminals_get_secondary_columns_and_wide_gets_all(report):
    header_120 = next(ln for ln in _text(report, 120).splitlines() if ln.startswith("Name"))
    assert "Format" in header_120 and "Runtime" in header_120
    console = Console(width=80, file=io.StringIO(), color_system=None, record=True)
    print_card(report, console, wide=True)
    wide = console.export_text()
    assert console.width == 80  # restored after printing wider
    assert all(h in wide for h in ("Precision", "GFLOPs", "p90 ms", "Peak MB", "vs FP32 %"))
    assert "…" not in wide and "student_kd.executorch-coreml.fp16" in wide


def test_unmeasurable_peak_memory_and_small_param_counts_read_right(report):
    from compress.core.progress import count_text

    wide_row = next(ln for ln in _text(report, 300, wide=True).splitlines() if ln.startswith("student_kd.onnx.fp32"))
    assert " 0.0 " not in wide_row and "48.0K" in wide_row
    assert [count_text(n) for n in (900, 48_010, 342_130, 2_200_000)] == ["900", "48.0K", "0.34M", "2.20M"]


def test_kdtool_report_reprints_the_card_piped_at_columns(report, tmp_path):
    write_report(report, tmp_path / "runs" / "quickstart" / "report")
    out = subprocess.run([sys.executable, str(REPO / "kdtool.py"), "report", str(tmp_path / "runs" / "quickstart")],
                         env=cli_env(COLUMNS="80"), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kdtool report: quickstart" in out.stdout
    assert max(len(ln) for ln in out.stdout.splitlines()) <= 80  # piped, COLUMNS honoured
    missing = cli("report", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_progress_console_honours_columns_when_piped():
    code = "from compress.core.progress import console; print(console.width)"
    for columns, expected in (("80", "80"), (None, "120")):
        env = cli_env()
        env.pop("COLUMNS", None)
        if columns:
            env["COLUMNS"] = columns
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL, cwd=os.fspath(REPO))
        assert out.stdout.strip() == expected, out.stderr


def test_export_table_fits_80_columns(monkeypatch):
    import export.stage

    console = Console(width=80, file=io.StringIO(), color_system=None, record=True)
    monkeypatch.setattr(export.stage, "console", console)
    rows = [{"name": "student_kd.executorch-coreml.fp16", "target": "ios", "status": "ok", "reason": None,
             "size_mb": 0.21, "parity": "not verified on this OS", "max_abs": None, "agreement": None,
             "delegated": 1.0, "quantized_ops": None},
            {"name": "student_kd.tensorrt.fp16", "target": "server", "status": "skipped", "reason": LONG_REASON,
             "size_mb": None, "parity": None, "max_abs": None, "agreement": None, "delegated": None,
             "quantized_ops": None}]
    export.stage._print_export_table(rows)
    lines = console.export_text().splitlines()
    assert max(len(ln) for ln in lines) <= 80 and "…" not in "\n".join(lines)
    assert any(ln.startswith("student_kd.executorch-coreml.fp16 ") and " n/v " in ln for ln in lines)
    assert any(ln.startswith("[1] student_kd.tensorrt.fp16: TensorRT needs") for ln in lines)


def test_kd_progress_line_keeps_bar_count_and_eta_at_80_columns(monkeypatch):
    import compress.core.progress as progress

    monkeypatch.delenv("KDTOOL_QUIET", raising=False)
    monkeypatch.setattr(progress, "console", Console(width=80, file=io.StringIO(), color_system=None))
    with progress.epoch_progress("student_kd", 12, 40) as bar:
        bar.start_epoch(3)
        for _ in range(7):
            bar.advance({"hard": 0.123456, "soft": 1.234567, "total": 2.345678, "feature": 0.5, "crd": 0.25})
        rows = Console(width=80, file=io.StringIO(), color_system=None, record=True)
        rows.print(bar.progress.make_tasks_table(bar.progress.tasks))
    line = rows.export_text().rstrip("\n")
    assert "\n" not in line and len(line) <= 80
    assert line.startswith("student_kd 3/12") and "7/40" in line and "0:00:0" in line
    assert "hard=0.123" in line and line.endswith("…")  # the loss terms are cut, not the bar
