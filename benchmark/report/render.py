"""`report.html`: one self-contained page (inline CSS, plots as inline base64 PNG, no external refs).

Laid out as the terminal card is (`benchmark.report.console`), so it reads at laptop width: the key
columns first (name, MB, p50 ms, the primary metric, retention, parity), the reasons a row was
skipped or failed as numbered footnotes below the table, and every other column of the card
(format, runtime, params, GFLOPs, p90/p99, peak memory, other metrics, vs FP32, parity error) in a
second table folded under "All columns".
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from benchmark.report.card import Report, ReportRow, render_markdown, table
from benchmark.report.console import parity_mark
from benchmark.report.plots import STAGE_COLORS, latency_vs_metric_png, retention_png, size_png
from compress.core.atomic import write_json, write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
.sub,.rec,.notes,.footnotes,.plots{max-width:1100px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left}
tr.failed td{background:#fdecea} tr.skipped td{color:#999}
tr.pick td:first-child{font-weight:600}
.rec{background:#eef7ee;border:1px solid #b9dfb9;padding:8px 12px;border-radius:4px}
.notes li,.footnotes li{margin:3px 0} .footnotes{font-size:13px;color:#555}
.plots img{max-width:100%;margin:8px 0;border:1px solid #eee}
.kv td{text-align:left;white-space:normal} .wide{overflow-x:auto;max-width:100%}
.all td:last-child{white-space:normal;min-width:6em} .all{font-size:12px}
details{margin-top:12px} summary{cursor:pointer;color:#444;font-size:13px}
.swatch{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}
"""

KEY = ("Name", "Size MB", "p50 ms", "Retention %", "Parity")
"""The main table's columns from the card's `table`; the primary metric goes after p50 ms."""
LEFT = {"Name", "Format", "Precision", "Runtime", "Status", "Parity"}


def img_tag(png: bytes | None, alt: str) -> str:
    """An inline <img> of the PNG, or a line saying there was nothing to plot."""
    if png is None:
        return f"<p class='sub'>{html.escape(alt)}: no data to plot.</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _kv(data: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td>"
                    f"<td>{html.escape(' '.join(map(str, v)) if isinstance(v, list) else str(v))}</td></tr>"
                    for k, v in data.items())
    return f"<table class='kv'>{cells}</table>"


def _cell(header: str, text: str, title: str = "") -> str:
    attr = f" title='{html.escape(title)}'" if title else ""
    return f"<td class='{'l' if header in LEFT else ''}'{attr}>{html.escape(text)}</td>"


def _head(headers: list[str]) -> str:
    return "".join(f"<th class='{'l' if h in LEFT else ''}'>{html.escape(h)}</th>" for h in headers)


def _row_class(r: ReportRow, picks: set[str]) -> str:
    return " ".join(c for c in (r.status if r.status != "ok" else "", "pick" if r.name in picks else "") if c)


def _tables(report: Report, footnotes: dict[int, int]) -> tuple[str, str]:
    """The key-column table, and the other columns folded under a `<details>` (reasons as footnote marks)."""
    headers, cells = table(report)
    metric = report.primary_metric
    key = [*KEY[:3], *([metric] if metric in headers else []), *KEY[3:]]
    rest = [h for h in headers if h not in key or h in ("Name", "Parity")]  # Parity in full: "passed (3.0e-06)"
    picks = set(report.recommendation.values())
    main, other = [], []
    for i, (row, r) in enumerate(zip(cells, report.rows, strict=True)):
        by = dict(zip(headers, row, strict=True))
        by["Status"] = r.status + (f" [{footnotes[i]}]" if i in footnotes else "")
        n = footnotes.get(i)
        mark = f"<td class='l'><a href='#note-{n}'>[{n}]</a></td>" if n else "<td></td>"
        tds = "".join(_cell(h, parity_mark(r), title=by[h]) if h == "Parity" else _cell(h, by[h]) for h in key)
        main.append(f"<tr class='{_row_class(r, picks)}'>{tds}{mark}</tr>")
        other.append("<tr>" + "".join(_cell(h, by[h]) for h in rest) + "</tr>")
    return (f"<table class='key'><thead><tr>{_head(key)}<th></th></tr></thead><tbody>{''.join(main)}</tbody>"
            "</table>",
            f"<details><summary>All columns ({', '.join(map(html.escape, rest[1:-1]))}, parity error)</summary>"
            f"<div class='wide'><table class='all'><thead><tr>{_head(rest)}</tr></thead>"
            f"<tbody>{''.join(other)}</tbody></table></div></details>")


def _footnotes(report: Report, footnotes: dict[int, int]) -> str:
    """Why each row was skipped or failed, numbered as the marks in the table."""
    if not footnotes:
        return ""
    items = "".join(f"<li id='note-{n}'><code>{html.escape(report.rows[i].name)}</code> "
                    f"{html.escape(report.rows[i].status)}: {html.escape(report.rows[i].reason or '')}</li>"
                    for i, n in footnotes.items())
    return f"<ol class='footnotes'>{items}</ol>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: summary, table, plots, notes, machine, versions."""
    reasons = [i for i, r in enumerate(report.rows) if r.reason]
    footnotes = {row: n for n, row in enumerate(reasons, 1)}  # row index -> footnote number
    key, folded = _tables(report, footnotes)
    rec = ", ".join(f"<b>{html.escape(t)}</b>: <code>{html.escape(n)}</code>"
                    for t, n in report.recommendation.items())
    legend = "".join(f"<span class='swatch' style='background:{c}'></span>{s}"
                     for s, c in STAGE_COLORS.items())
    m = report.machine
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>kdtool report: {html.escape(report.recipe.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>kdtool report: {html.escape(report.recipe.name)}</h1>",
        f"<div class='sub'>{html.escape(str(m.get('cpu', '?')))} · "
        f"{html.escape(str(m.get('threads', '?')))} threads"
        f" · primary metric {html.escape(report.primary_metric or '-')} · latency at batch 1"
        f" · parity ✓ passed, ✗ failed, n/v not verified here"
        f"{' · ' + html.escape(report.created) if report.created else ''}</div>",
        f"<p class='rec'>Recommended: {rec}</p>" if rec else "<p class='rec'>No recommendation.</p>",
        "<h2>Artifacts</h2>", key, _footnotes(report, footnotes), folded,
        f"<h2>Plots</h2><div class='sub'>Stages:{legend}</div><div class='plots'>",
        img_tag(latency_vs_metric_png(report), "Latency vs metric"),
        img_tag(size_png(report), "Size per artifact"),
        img_tag(retention_png(report), "Retention per stage"),
        "</div>",
    ]
    if report.notes:
        parts.append("<h2>Notes</h2><ul class='notes'>" +
                     "".join(f"<li>{html.escape(n)}</li>" for n in report.notes) + "</ul>")
    parts += ["<h2>Machine</h2>", _kv(m), "<h2>Versions</h2>", _kv(report.versions),
              f"<p class='sub'>schema {html.escape(report.schema_id)}"
              f"{' · recipe sha256 ' + html.escape(report.recipe.sha256) if report.recipe.sha256 else ''}"
              "</p>",
              "</body></html>"]
    return "\n".join(parts) + "\n"


def write_report(report: Report, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `out_dir`, each atomically.

    Returns:
        `{"json": path, "md": path, "html": path}`.
    """
    out = Path(out_dir)
    paths = {"json": out / "report.json", "md": out / "report.md", "html": out / "report.html"}
    write_text(paths["html"], render_html(report))
    write_text(paths["md"], render_markdown(report))
    write_json(paths["json"], report.to_json())
    return paths
