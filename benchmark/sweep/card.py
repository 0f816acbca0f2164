"""The sweep card in the terminal: one line per trial (front first), under 80 columns; the front's values below."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _value(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def print_sweep_card(data: dict[str, Any], console: Console, limit: int = 20) -> None:
    """Print the card of a sweep.json object: trials on the front first, then the best others, then counts.

    Args:
        data: the sweep.json object.
        console: where to print (its width is honoured; the table needs at most 78 columns).
        limit: at most this many trial lines.
    """
    trials = data["trials"]
    front = set(data["front"])
    by_state: dict[str, int] = {}
    for t in trials:
        by_state[t["state"]] = by_state.get(t["state"], 0) + 1
    console.print(f"[bold]kdtool sweep: {data['study']}[/] · target {data['target']} · "
                  f"{', '.join(f'{n} {s}' for s, n in by_state.items())}")
    goals = " · ".join(f"{d[:3]} {o}" for o, d in zip(data["objectives"], data["directions"], strict=True))
    console.print(f"objectives {goals}" + (f" · constraints {', '.join(data['constraints'])}"
                                           if data.get("constraints") else ""))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for col, just in (("#", "right"), ("", "left"), ("State", "left"), ("Ret %", "right"), ("p50 ms", "right"),
                      ("MB", "right"), ("Artifact / reason", "left")):
        table.add_column(col, justify=just, no_wrap=True, max_width=34 if col.startswith("Artifact") else None,
                         overflow="ellipsis")
    def order(t: dict[str, Any]) -> tuple:
        return t["number"] not in front, t["state"] != "complete", -(t["retention"] or 0), t["p50_ms"] or 0

    for t in sorted(trials, key=order)[:limit]:
        mark = ("*" if t["number"] in front else "") + ("R" if t["recipe_point"] else "")
        ret = None if t["retention"] is None else 100 * t["retention"]
        table.add_row(str(t["number"]), mark, t["state"], _num(ret, ".1f"), _num(t["p50_ms"], ".3f"),
                      _num(t["size_mb"], ".2f"), t["artifact"] if t["state"] == "complete" else (t["reason"] or ""))
    console.print(table)
    if len(trials) > limit:
        console.print(f"({len(trials) - limit} more in trials.csv)")
    console.print("* on the Pareto front · R the recipe as written")
    for number in data["front"][:8]:
        t = next(x for x in trials if x["number"] == number)
        console.print(Text(f"  {number}: " + " ".join(f"{k}={_value(v)}" for k, v in t["params"].items())))
    own = data.get("recipe_point")
    if own is not None:
        better = data.get("dominates_recipe") or []
        console.print(f"recipe's own point (trial {own}): " + (
            f"dominated by trial(s) {', '.join(map(str, better))}" if better else "no trial dominates it"))
    note = (data.get("importances") or {}).get("note")
    if note:
        console.print(f"importances: {note}")
