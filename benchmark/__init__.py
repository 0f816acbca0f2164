"""Runtimes, the latency protocol, quality and size measurement, and the report card.

Public: `benchmark(artifacts_or_run_dir, val_loader, teacher=..., task=...)` → `Card` (the report card:
`to_json()`, `to_markdown()`, `to_html()`, `recommendation`, a table in notebooks); `BenchmarkConfig`.
See docs/api.md.
"""

__all__ = ["BenchmarkConfig", "Card", "benchmark"]

_LAZY = {"benchmark": "benchmark.api", "Card": "benchmark.api", "BenchmarkConfig": "recipes.schema"}


def __getattr__(name: str):  # lazy: `import benchmark` stays cheap for `kdtool --help`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
