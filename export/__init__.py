"""Exporters, one module per format; target presets; parity checks; manifests.

Public: `export_model(model, example, out_dir, targets=..., formats=..., quantized=...)` → list of
`Artifact` (status ok/failed/skipped, parity, info); `Quantized` (int8 inputs). Formats register in
`export.registry.EXPORTERS` (imported by `export.formats`); presets live in `export.targets`, the
shared parity check in `export.verify`, `manifest.json` in `export.manifest`, int8 coverage in
`export.quant_stats`. See docs/api.md.
"""

__all__ = ["Artifact", "Quantized", "export_model"]

_LAZY = {"Artifact": "export.artifact", "Quantized": "export.run", "export_model": "export.run"}


def __getattr__(name: str):  # lazy: `import export` stays cheap for `kdtool --help`
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
