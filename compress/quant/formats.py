"""The seam through which a file format plugs its own int8 writer into the quantize stage.

`compress/quant` owns what is model-level: PT2E prepare/convert (`executorch`), torchao (`torch`),
QAT and the accuracy-aware search. A format whose int8 is written on its own file (ONNX Runtime
QDQ, CoreML weight compression) keeps that writer in its folder, `export/formats/<name>/int8.py`,
and registers it here under its backend name, as ExecuTorch's `backends/<name>/` keep their
quantizer. `compress.quant` sits below `export` in the layers and never imports it: `FILE_INT8` is
filled when `export.formats` is imported, which the CLI does before the quantize stage (a Python
caller writes `import export.formats` once). See docs/adding-a-format.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from compress.core.errors import KdtoolError
from compress.core.registry import Registry
from compress.quant.configs import QuantConfig, QuantInputs, QuantizedModel

Runner = Callable[[torch.Tensor], torch.Tensor]
"""One preprocessed batch in, the model's outputs out (a trial int8 model of the accuracy-aware search)."""


class FileInt8(Protocol):
    """A format's file-level int8 writer.

    Attributes:
        modes: the quantization modes it writes ("static", "dynamic").
        targets: export targets it is made for by default; None: every run.
        searchable: whether it can leave named modules float (`config.float_modules`), which the
            accuracy-aware search needs; without it the search records "cannot keep layers in float".
        refusals: mode → (message, hint) for a mode it does not write, when a plain "not supported"
            would not tell the user what to do instead.
    """

    modes: tuple[str, ...]
    targets: tuple[str, ...] | None
    searchable: bool
    refusals: dict[str, tuple[str, str]]

    def quantize(self, model: nn.Module, config: QuantConfig, qi: QuantInputs) -> QuantizedModel:
        """Write the int8 file (and meta.json) under `qi.out`; `model` is the fp32 student, not modified."""
        ...

    def trials(self, model: nn.Module, config: QuantConfig, qi: QuantInputs, batches: list[torch.Tensor],
               scratch: Path) -> Callable[..., Runner]:
        """`trial(extra_float=(), only=())`: a runnable int8 model with `extra_float` (besides the config's)
        in float, or with only the modules `only` quantized, calibrated on `batches`; files go in `scratch`."""
        ...


FILE_INT8: Registry[FileInt8] = Registry("int8 file format")
"""Backend name (`onnx`, `coreml`, ...) → its format's int8 writer; filled by `export.formats`."""


def file_backends(mode: str, targets: list[str] | tuple[str, ...] = ()) -> tuple[str, ...]:
    """The registered file formats that write `mode` int8 and are made by default for `targets`
    (those made on every run first)."""
    writers = {name: FILE_INT8.get(name) for name in FILE_INT8}
    made = [name for name, w in writers.items()
            if mode in w.modes and (w.targets is None or set(w.targets) & set(targets))]
    return tuple(sorted(made, key=lambda name: writers[name].targets is not None))


def file_int8(config: QuantConfig) -> FileInt8:
    """The int8 writer registered for `config.backend`, checked to write `config.mode`.

    Raises:
        KdtoolError: no format registered under that name, or it does not write this mode (exit 2).
    """
    if config.backend not in FILE_INT8:
        known = (*config.backends, *(n for n in FILE_INT8 if config.mode in FILE_INT8.get(n).modes))
        raise KdtoolError(f"quantize {config.mode}: backend {config.backend!r} is not supported",
                          f"{config.mode} works with: {', '.join(known)}"
                          + ("" if FILE_INT8 else " (file formats register their int8 writer when "
                             "`export.formats` is imported)"))
    writer = FILE_INT8.get(config.backend)
    if config.mode not in writer.modes:
        message, hint = writer.refusals.get(config.mode, (
            f"quantize {config.mode}: backend {config.backend!r} does not write {config.mode} int8",
            f"it writes: {', '.join(writer.modes)}"))
        raise KdtoolError(message, hint)
    return writer

