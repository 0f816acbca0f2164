"""`report.html`: one self-contained page (inline CSS, plots as inline base64 PNG, no external refs)."""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from benchmark.report.card import Report, render_markdown, table
from benchmark.report.plots import STAGE_COLORS, latency_vs_metric_png, retention_png, size_png
from compress.core.atomic import write_json, write_text

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.sub{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;width:100%}
th,td{border:1px solid #ddd;padding:4px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3} td.l,th.l{text-align:left}
tr.failed td{background:#fdecea} tr.skipped td{color:#999}
tr.pick td:first-child{font-weight:600}
.rec{background:#eef7ee;border:1px solid #b9dfb9;padding:8px 12px;border-radius:4px}
.notes li{margin:3px 0} .plots img{max-width:100%;margin:8px 0;border:1px solid #eee}
.kv td{text-align:left;white-space:normal} .wide{overflow-x:auto}
.swatch{display:inline-block;width:10px;height:10px;margin:0 3px 0 10px}
"""

LEFT = {"Name", "Format", "Precision", "Runtime", "Status", "Parity"}


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f"<p class='sub'>{html.escape(alt)}: no data to plot.</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _kv(data: dict) -> str:
    cells = "".join(f"<tr><td>{html.escape(str(k))}</td>"
                    f"<td>{html.escape(' '.join(map(str, v)) if isinstance(v, list) else str(v))}</td></tr>"
                    for k, v in data.items())
    return f"<table class='kv'>{cells}</table>"


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page: summary, table, plots, notes, machine, versions."""
    headers, cells = table(report)
    picks = set(report.recommendation.values())
    head = "".join(f"<th class='{'l' if h in LEFT else ''}'>{html.escape(h)}</th>" for h in headers)
    body = []
    for row, r in zip(cells, report.rows, strict=True):
        cls = " ".join(c for c in (r.status if r.status != "ok" else "", "pick" if r.name in picks else "")
                       if c)
        tds = "".join(f"<td class='{'l' if h in LEFT else ''}'>{html.escape(c)}</td>"
                      for h, c in zip(headers, row, strict=True))
        body.append(f"<tr class='{cls}'>{tds}</tr>")
    rec = ", ".join(f"<b>{html.escape(t)}</b>: <code>{html.escape(n)}</code>"
                    for t, n in report.recommendation.items())
    legend = "".join(f"<span class='swatch' style='background:{c}'></span>{s}"
                     for s, c in STAGE_COLORS.items())
    m = report.machine
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>kdtool report: {html.escape(report.recipe.name)}</title><style>{CSS}</style></head><body>",
        f"<h1>kdtool report: {html.escape(report.recipe.name)}</h1>",
        f"<div class='sub'>{html.escape(str(m.get('cpu', '?')))} · "
        f"{html.escape(str(m.get('threads', '?')))} threads"
        f" · primary metric {html.escape(report.primary_metric or '-')} · latency at batch 1"
        f"{' · ' + html.escape(report.created) if report.created else ''}</div>",
        f"<p class='rec'>Recommended: {rec}</p>" if rec else "<p class='rec'>No recommendation.</p>",
        f"<h2>Artifacts</h2><div class='wide'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>",
        f"<h2>Plots</h2><div class='sub'>Stages:{legend}</div><div class='plots'>",
        _img(latency_vs_metric_png(report), "Latency vs metric"),
        _img(size_png(report), "Size per artifact"),
        _img(retention_png(report), "Retention per stage"),
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
