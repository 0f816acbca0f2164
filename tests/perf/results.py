"""Study results as data files named by the CPU kind they were measured on, as timm's results/ are.

Every study script in tests/perf ends with `write(study, columns, rows)`: it writes
`docs/benchmarks/results/<study>-<cpu kind>.csv`, a CSV whose first lines are `# key: value` comments
recording the machine (CPU model, its flags of interest, cores, OS), the versions (torch,
onnxruntime, executorch, ...), the date and the command. `python -m tests.perf.render_docs` renders
these files into docs/benchmarks/<study>.md; nobody types the numbers.

The CPU kind is the vendor and family plus the widest vector ISA the kernels can use (`avx2`,
`avx512`, `avx512-vnni`, `avx512-vnni-amx`): CPU float sums, and so trained weights and latencies,
differ between kinds, so a number is compared only with one made on the same kind.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchmark.environment import cpu_flags, cpu_model, usable_cores
from compress.core.atomic import write_text
from compress.core.versions import package_versions

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "results"
FLAGS = ("avx2", "avx512f", "avx512_vnni", "amx_tile")
"""The CPU flags recorded: the ones that change which kernels torch, ONNX Runtime and XNNPACK run."""
VERSIONS = ("torch", "onnxruntime", "executorch", "timm", "torchao", "numpy")


def isa_tier(flags: Iterable[str]) -> str:
    """The widest vector ISA of these flags: `avx512-vnni-amx`, `avx512-vnni`, `avx512`, `avx2` or the arch."""
    have = set(flags)
    if "avx512f" in have:
        tier = "avx512"
        tier += "-vnni" if "avx512_vnni" in have else ""
        return tier + ("-amx" if "amx_tile" in have else "")
    return "avx2" if "avx2" in have else platform.machine().lower()


def cpu_kind(model: str | None = None, flags: Iterable[str] | None = None) -> str:
    """A file-name slug for a CPU kind, e.g. `intel-xeon-avx512-vnni-amx` or `amd-epyc-avx2`."""
    model = cpu_model() if model is None else model
    words = re.sub(r"\((R|TM|r|tm)\)|\bCPU\b|\bProcessor\b|@.*$", " ", model).split()
    family = "-".join(w.lower() for w in words[:2]) or "cpu"
    return f"{re.sub(r'[^a-z0-9-]', '', family)}-{isa_tier(cpu_flags() if flags is None else flags)}"


def machine() -> dict[str, str]:
    """This machine and its versions, as the `# key: value` header of a results file."""
    flags = [f for f in cpu_flags() if f in FLAGS]
    versions = package_versions(VERSIONS)
    return {
        "cpu": cpu_model(), "cpu_kind": cpu_kind(), "flags": " ".join(flags) or "none of " + " ".join(FLAGS),
        "cores": str(usable_cores()), "os": platform.platform(),
        "versions": " ".join(f"{k} {v}" for k, v in versions.items()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python -m", _main_module(), *sys.argv[1:]]),
        "load": f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores when written",
    }


def _main_module() -> str:
    """The module run with `python -m` (e.g. tests.perf.peers)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else Path(sys.argv[0]).stem


def path_for(study: str, kind: str) -> Path:
    """Where a study's results for one CPU kind live."""
    return RESULTS / f"{study}-{kind}.csv"


def write(study: str, columns: Sequence[str], rows: Iterable[Sequence[object]], note: str = "",
          header: dict[str, str] | None = None) -> Path:
    """Write a study's rows, headed by the machine it ran on, to `docs/benchmarks/results/<study>-<kind>.csv`.

    Args:
        study: the study's name (its docs page is docs/benchmarks/<study>.md).
        columns: column names.
        rows: one sequence of values per row (None is written as an empty cell).
        note: one line on how to read the numbers, kept in the header.
        header: the machine header; default this machine (`machine()`).

    Returns:
        The path written (atomically).
    """
    meta = dict(machine() if header is None else header)
    if note:
        meta["note"] = note
    buf = io.StringIO()
    for key, value in meta.items():
        buf.write(f"# {key}: {value}\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    path = path_for(study, meta["cpu_kind"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, buf.getvalue())
    print(f"results: {path}", file=sys.stderr)
    return path


def read(path: Path) -> tuple[dict[str, str], list[str], list[list[str]]]:
    """A results file's header, columns and rows (cells as strings)."""
    meta, lines = {}, []
    for line in path.read_text().splitlines():
        if line.startswith("# ") and not lines:
            key, _, value = line[2:].partition(": ")
            meta[key] = value
        else:
            lines.append(line)
    table = list(csv.reader(lines))
    return meta, table[0], table[1:]
