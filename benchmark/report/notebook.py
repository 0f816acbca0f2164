"""The card in a notebook (`Card._repr_html_`): the recommendation and the key columns, styled inline.

`report.html` is a whole page whose CSS styles `body`; inside a notebook that would restyle the notebook
itself, so the notebook gets this fragment instead.
"""

from __future__ import annotations

import html

from benchmark.report.card import Report, metric_names, table

KEY_COLUMNS = ("Name", "Format", "Precision", "Status", "Size MB", "p50 ms", "Retention %", "Parity")
"""The columns shown, plus the metrics (the full table is in `to_html()` / report.html)."""
LEFT = {"Name", "Format", "Precision", "Status", "Parity"}


def render_fragment(report: Report) -> str:
    """An HTML fragment: title, recommendation, and one table row per model/artifact."""
    headers, cells = table(report)
    metrics = metric_names(report)
    keep = [i for i, h in enumerate(headers) if h in KEY_COLUMNS or h in metrics]
    cell = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:{}"
    head = "".join(f"<th style='{cell.format('left')}'>{html.escape(headers[i])}</th>" for i in keep)
    body = "".join("<tr>" + "".join(f"<td style='{cell.format('left' if headers[i] in LEFT else 'right')}'>"
                                    f"{html.escape(row[i])}</td>" for i in keep) + "</tr>" for row in cells)
    picks = ", ".join(f"<b>{html.escape(t)}</b>: <code>{html.escape(n)}</code>"
                      for t, n in report.recommendation.items()) or "none"
    return (f"<div><h4>kdtool report: {html.escape(report.recipe.name)}</h4><p>Recommended: {picks}</p>"
            f"<table style='border-collapse:collapse;font-size:12px'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div>")
