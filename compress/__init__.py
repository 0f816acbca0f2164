"""Models, data, tasks, KD losses, the training loop and quantization.

The public Python API (the CLI runs the same code; imports are lazy so `kdtool --help` stays instant)::

    from compress import Distiller, KDConfig, TrainConfig, quantize
    student = Distiller(teacher, student, task="multiclass", kd=KDConfig(temperature=3, alpha=0.4),
                        train=TrainConfig(epochs=10)).fit(train_loader, val_loader)
    q = quantize(student, train_loader, mode="static", backend="onnx", val_loader=val_loader, task="multiclass")

See docs/api.md for every public name.
"""

from compress.core.errors import KdtoolError

__all__ = ["Distiller", "KDConfig", "KdtoolError", "QuantizedModel", "Task", "TrainConfig", "quantize"]

_LAZY = {"Distiller": "compress.distill.api", "KDConfig": "compress.distill.api", "quantize": "compress.quant.api",
         "QuantizedModel": "compress.quant.configs", "Task": "compress.core.tasks", "TrainConfig": "recipes.schema"}


def __getattr__(name: str):  # lazy: `import compress` stays cheap for `kdtool --help`
    if name in _LAZY:
        import importlib

        if name == "quantize":  # the file formats (onnx, coreml, ...) register their int8 writers on import
            importlib.import_module("export.formats")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
