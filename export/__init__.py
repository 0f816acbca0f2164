"""Exporters, one module per format; target presets; parity checks; manifests.

Entry point: `export.run.export_model(model, example, out_dir, formats=..., targets=...)` →
list of `Artifact` (status ok/failed/skipped, parity, info). Formats register in
`export.registry.EXPORTERS` (torchscript, onnx, executorch, coreml, tensorrt, aoti; imported by
`export.formats`); presets live in `export.targets`, the shared parity check in `export.verify`,
`manifest.json` in `export.manifest`, int8 coverage in `export.quant_stats`.
"""

__all__ = ["Quantized", "export_model"]


def __getattr__(name: str):  # lazy: `import export` stays cheap for `kdtool --help`
    if name in __all__:
        from export import run

        return getattr(run, name)
    raise AttributeError(name)
