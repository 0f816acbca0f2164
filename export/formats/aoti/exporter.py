"""AOTInductor package (`.pt2`): `torch.export` → `torch._inductor.aoti_compile_and_package`.

The successor of TorchScript for servers: a compiled C++/Triton model loaded without Python by
`torch::inductor::AOTIModelPackageLoader`, or here by `torch._inductor.aoti_load_package`. It
compiles C++, so an export takes tens of seconds even for a tiny model. Metadata goes into the
package (`aot_inductor.metadata`, read back with `get_metadata()`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from compress.core.atomic import atomic_path
from compress.core.errors import ExportError
from export.artifact import Artifact
from export.registry import (
    EXPORTERS,
    ExportContext,
    build_artifact,
    check_precision,
    export_program,
    first_line,
)


@EXPORTERS.register("aoti")
class AotiExporter:
    """AOTInductor .pt2 (compiled C++ for this machine's CPU/GPU): PyTorch-native servers."""

    name = "aoti"
    runtime = "aoti"
    precisions = ("fp32",)

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Compile `model` into `<name>.<precision>.aoti.pt2` (for the device `example` lives on)."""
        check_precision(self, spec)
        program = export_program(model.eval(), example, spec)
        path = Path(out_dir) / f"{spec.name}.{spec.precision}.aoti.pt2"
        with atomic_path(path) as tmp:
            staged = tmp.with_name(tmp.name + ".pt2")  # the packager wants the .pt2 extension
            try:
                from torch._inductor import aoti_compile_and_package

                aoti_compile_and_package(program, package_path=str(staged),
                                         inductor_configs={"aot_inductor.metadata": spec.embedded_metadata()})
            except Exception as e:
                Path(staged).unlink(missing_ok=True)
                raise ExportError(f"AOTInductor compilation failed for {spec.name}: {first_line(e)}",
                                  "needs a C++ compiler (g++/clang) on PATH; or use --format onnx") from e
            os.replace(staged, tmp)
        info = {"device": str(example.device), "cpu_isa_bound": example.device.type == "cpu"}
        return build_artifact(self.name, path, spec, self.runtime, info=info)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata stored in an AOTInductor package (kdtool keys plus AOTI's platform keys)."""
    from torch._inductor import aoti_load_package

    return dict(aoti_load_package(str(path)).get_metadata())
