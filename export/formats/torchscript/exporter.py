"""TorchScript via `torch.jit.trace`, metadata in the archive's `_extra_files`.

TorchScript is deprecated in this torch in favour of `torch.export` (servers: AOTInductor `.pt2`,
see `export/formats/aoti/`; devices: ExecuTorch). It is kept because many C++/LibTorch deployments still
load `.pt` scripts; `torch.jit.trace` records one path through the model, so data-dependent
control flow is frozen at the example's values (the parity check on other inputs catches that).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from compress.core.atomic import write_bytes
from compress.core.errors import ExportError
from export.artifact import Artifact
from export.registry import EXPORTERS, ExportContext, build_artifact, check_precision, first_line

EXTRA_FILE = "kdtool.json"
"""Name of the extra file holding `ExportContext.embedded_metadata()` inside the archive."""


@EXPORTERS.register("torchscript")
class TorchScriptExporter:
    """TorchScript (`torch.jit.trace`, deprecated upstream): LibTorch C++ servers."""

    name = "torchscript"
    runtime = "torchscript"
    precisions = ("fp32",)

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Trace `model` on `example` and save `<name>.torchscript.pt` with metadata as an extra file."""
        check_precision(self, spec)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # trace warnings are reported by the parity check instead
                traced = torch.jit.trace(model.eval(), example, check_trace=False)
        except Exception as e:
            raise ExportError(f"torch.jit.trace failed for {spec.name}: {first_line(e)}",
                              "use --format onnx or executorch (torch.export based)") from e
        path = Path(out_dir) / f"{spec.name}.torchscript.pt"
        extra = {EXTRA_FILE: json.dumps(spec.embedded_metadata(), sort_keys=True)}
        buffer = io.BytesIO()  # serialise in memory: torch.jit.save aborts the process on a full disk
        torch.jit.save(traced, buffer, _extra_files=extra)
        write_bytes(path, buffer.getvalue())
        # trace keeps the batch axis symbolic for ordinary conv/linear nets; parity checks a 2nd batch
        return build_artifact(self.name, path, spec, self.runtime, info={"method": "torch.jit.trace"})


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata embedded in a TorchScript archive written by this exporter."""
    extra = {EXTRA_FILE: ""}
    torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE] or "{}")
