"""Render the study results files into docs/benchmarks/<study>.md, between the results markers.

    python -m tests.perf.render_docs            # rewrite every docs/benchmarks/*.md from docs/benchmarks/results/
    python -m tests.perf.render_docs --check    # exit 1 when a page differs from its results files

Each page holds `<!-- BEGIN RESULTS -->` and `<!-- END RESULTS -->`; between them go, for every
`results/<study>-<cpu kind>.csv`, a header naming the machine (CPU and flags, cores, OS, versions,
date, command), the table of its rows and the plots its study wrote beside it
(`results/<study>-<cpu kind>-*.png`). `tests/test_docs.py` runs the check.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tests.perf.results import RESULTS, read

PAGES = RESULTS.parent
BEGIN, END = "<!-- BEGIN RESULTS: python -m tests.perf.render_docs -->", "<!-- END RESULTS -->"


def _cell(value: str) -> str:
    return value.replace("|", "\\|") or "-"


def render_file(path: Path) -> str:
    """One results file as a machine header and a Markdown table."""
    meta, columns, rows = read(path)
    lines = [f"#### {meta.get('cpu', '?')} (`{meta.get('cpu_kind', path.stem)}`)", "",
             f"- CPU flags: {meta.get('flags', '?')}; {meta.get('cores', '?')} cores; OS: {meta.get('os', '?')}",
             f"- versions: {meta.get('versions', '?')}",
             f"- measured {meta.get('date', '?')} with `{meta.get('command', '?')}`"]
    lines += [f"- load: {meta['load']}"] if meta.get("load") else []
    lines += [f"- {meta['source']}"] if meta.get("source") else []
    lines += [f"- {meta['note']}"] if meta.get("note") else []
    lines += ["", "| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    for plot in sorted(path.parent.glob(f"{path.stem}-*.png")):
        lines += ["", f"![{plot.stem}]({path.parent.name}/{plot.name})"]
    return "\n".join(lines)


def render_page(text: str, study: str) -> str:
    """The page with its results block rebuilt from `results/<study>-*.csv`."""
    if BEGIN not in text or END not in text:
        return text
    files = sorted(RESULTS.glob(f"{study}-*.csv"))
    body = "\n\n".join(render_file(p) for p in files) if files else "No results file yet: run the command above."
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n\n{body}\n\n{END}{rest.split(END, 1)[1]}"


def stale_pages() -> list[Path]:
    """Pages whose results block differs from what their results files render to."""
    return [p for p in sorted(PAGES.glob("*.md")) if render_page(p.read_text(), p.stem) != p.read_text()]


def main(argv: list[str]) -> int:
    """Rewrite (or with --check, list) the pages that differ from their results files."""
    stale = stale_pages()
    if "--check" in argv:
        for page in stale:
            print(f"{page}: stale, run python -m tests.perf.render_docs")
        return 1 if stale else 0
    for page in stale:
        page.write_text(render_page(page.read_text(), page.stem))
        print(f"rendered {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
