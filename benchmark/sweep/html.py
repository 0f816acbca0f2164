"""`sweep.html`: one self-contained page: the Pareto plot (retention vs p50, size as the marker, the
recipe's own point marked), parameter importances, and every trial."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from benchmark.report.plots import figure_png, new_figure
from benchmark.report.render import CSS, img_tag
from compress.core.atomic import write_text


def pareto_png(data: dict[str, Any]) -> bytes | None:
    """Retention (%) against p50 ms of every complete trial; marker area ∝ MB; front joined; recipe starred;
    the legend below the axes."""
    done = [t for t in data["trials"] if t["state"] == "complete" and t["retention"] is not None
            and t["p50_ms"] is not None]
    if not done:
        return None
    fig, ax = new_figure(7.5, 4.6)
    sizes = [t["size_mb"] or 0.0 for t in done]
    scale = 400.0 / max(max(sizes), 1e-9)
    front = set(data["front"])
    for t, mb in zip(done, sizes, strict=True):
        on = t["number"] in front
        ax.scatter(t["p50_ms"], 100 * t["retention"], s=30 + scale * mb, alpha=0.8 if on else 0.35,
                   color="#55a868" if on else ("#8c8c8c" if t["feasible"] else "#dd8452"), edgecolor="black",
                   linewidth=0.5, zorder=3)
        ax.annotate(str(t["number"]), (t["p50_ms"], 100 * t["retention"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)
    line = sorted((t for t in done if t["number"] in front), key=lambda t: t["p50_ms"])
    if line:
        ax.plot([t["p50_ms"] for t in line], [100 * t["retention"] for t in line], color="#55a868", lw=1, zorder=2,
                label="Pareto front")
    own = next((t for t in done if t["recipe_point"]), None)
    if own is not None:
        ax.scatter(own["p50_ms"], 100 * own["retention"], marker="*", s=260, color="#c44e52", edgecolor="black",
                   zorder=4, label=f"the recipe as written (trial {own['number']})")
    ax.set_xlabel(f"p50 latency at batch 1 (ms), {data['target']}")
    ax.set_ylabel("retention of the teacher's metric (%)")
    ax.set_title("trials: marker area ∝ size on disk (MB); orange: constraint not met", fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # below the axes, as the report's plot: it hides no point
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=max(len(labels), 1), frameon=False)
    return figure_png(fig)


def _importances(data: dict[str, Any]) -> str:
    imp = data.get("importances") or {}
    rows = [(obj, name, value) for obj, values in imp.items() if isinstance(values, dict)
            for name, value in values.items()]
    note = f"<p class='sub'>{html.escape(imp['note'])}</p>" if imp.get("note") else ""
    if not rows:
        return note or "<p class='sub'>no importances</p>"
    cells = "".join(f"<tr><td class='l'>{html.escape(o)}</td><td class='l'>{html.escape(n)}</td>"
                    f"<td>{v:.3f}</td></tr>" for o, n, v in rows)
    return (f"<table><thead><tr><th class='l'>objective</th><th class='l'>parameter</th><th>importance "
            f"(fANOVA)</th></tr></thead><tbody>{cells}</tbody></table>{note}")


def _trials(data: dict[str, Any]) -> str:
    keys = sorted({k for t in data["trials"] for k in t["params"]})
    head = "".join(f"<th class='l'>{html.escape(h)}</th>" for h in ["#", "state", "artifact"]) + "".join(
        f"<th>{h}</th>" for h in ("ret %", "p50 ms", "MB")) + "".join(
        f"<th class='l'>{html.escape(k)}</th>" for k in keys) + "<th class='l'>reason</th>"
    front = set(data["front"])
    body = []
    for t in data["trials"]:
        nums = [None if t["retention"] is None else 100 * t["retention"], t["p50_ms"], t["size_mb"]]
        cells = [str(t["number"]) + (" *" if t["number"] in front else ""), t["state"], t["artifact"] or ""]
        tds = "".join(f"<td class='l'>{html.escape(c)}</td>" for c in cells)
        tds += "".join(f"<td>{'-' if v is None else f'{v:.3f}'}</td>" for v in nums)
        tds += "".join(f"<td class='l'>{html.escape(str(t['params'].get(k, '')))}</td>" for k in keys)
        tds += f"<td class='l'>{html.escape(t['reason'] or '')}</td>"
        body.append(f"<tr class='{'failed' if t['state'] == 'failed' else ''}'>{tds}</tr>")
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"


def write_html(data: dict[str, Any], path: Path) -> Path:
    """Write the sweep page atomically; returns its path."""
    own, better = data.get("recipe_point"), data.get("dominates_recipe") or []
    verdict = ("the recipe as written was not a trial (its values lie outside the space)" if own is None else
               f"trial(s) {', '.join(map(str, better))} dominate the recipe as written (trial {own})" if better
               else f"no trial dominates the recipe as written (trial {own})")
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>kdtool sweep: {html.escape(data['study'])}</title><style>{CSS}</style></head><body>",
             f"<h1>kdtool sweep: {html.escape(data['study'])}</h1>",
             f"<div class='sub'>target {html.escape(data['target'])} · objectives "
             f"{html.escape(', '.join(data['objectives']))} · constraints "
             f"{html.escape(', '.join(data.get('constraints') or []) or 'none')} · front: trials "
             f"{html.escape(', '.join(map(str, data['front'])) or 'none')}</div>",
             f"<p class='rec'>{html.escape(verdict)}</p>",
             "<h2>Pareto front</h2><div class='plots'>", img_tag(pareto_png(data), "Pareto plot"), "</div>",
             "<h2>Parameter importances</h2>", _importances(data), "<h2>Trials</h2>", _trials(data),
             "</body></html>"]
    write_text(path, "\n".join(parts) + "\n")
    return path
