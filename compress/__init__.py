"""Models, data, tasks, KD losses, the training loop and quantization.

The public Python API (the CLI is a thin wrapper over it)::

    from compress import Distiller, KDConfig
    student = Distiller(teacher, student, task="binary", kd=KDConfig(temperature=3, alpha=0.6)).fit(train, val)
"""

from compress.core.errors import KdtoolError

__all__ = ["KdtoolError", "Distiller", "KDConfig"]


def __getattr__(name: str):  # lazy: `import compress` stays cheap for `kdtool --help`
    if name in ("Distiller", "KDConfig"):
        from compress.distill import api

        return getattr(api, name)
    raise AttributeError(name)
