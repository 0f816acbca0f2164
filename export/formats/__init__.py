"""One package per format, each registering its exporter (`export.registry.EXPORTERS`), its runtime
(`export.runtime.RUNTIMES`) and, where it has one, its int8 writer (`compress.quant.formats.FILE_INT8`).
Importing this package imports every folder here and so registers them all: a new format is one new
folder (see docs/adding-a-format.md)."""

import importlib
import pkgutil

from export.runtime import RUNTIMES, Runtime

for _folder in pkgutil.iter_modules(__path__):
    if _folder.ispkg:
        importlib.import_module(f"{__name__}.{_folder.name}")


def get_runtime(name: str) -> Runtime:
    """Instantiate the runtime registered as `name`."""
    return RUNTIMES.get(name)()
