"""PyTorch eager: the reference every artifact is compared with, and `.pt2` ExportedPrograms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from compress.core.errors import ExportError
from export.runtime import RUNTIMES


class TorchSession:
    """Runs an in-memory `nn.Module` (eval mode, no grad) on numpy batches."""

    def __init__(self, module: nn.Module) -> None:
        # exported/PT2E graphs are already in inference form and refuse .eval()
        self.module = module if isinstance(module, torch.fx.GraphModule) else module.eval()
        self.device = next((p.device for p in module.parameters()), torch.device("cpu"))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run one batch and return the first output."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device))
        return first_output(out).float().cpu().numpy()


@RUNTIMES.register("torch")
class TorchRuntime:
    """PyTorch eager (in-memory modules; `torch.export.save` .pt2 files)."""

    name = "torch"

    def available(self) -> str | None:
        """Always available."""
        return None

    def load(self, path: Path, threads: int) -> TorchSession:
        """Load a `torch.export.save` archive (note: `torch.set_num_threads` is process-wide)."""
        torch.set_num_threads(threads)
        try:
            program = torch.export.load(str(path))
        except Exception as e:
            raise ExportError(f"{path} is not a torch.export .pt2 archive: {e}",
                              "re-export it; AOTInductor packages load with the 'aoti' runtime") from e
        return TorchSession(program.module())

    def versions(self) -> dict[str, str]:
        """torch version."""
        return {"torch": torch.__version__}


def first_output(out: object) -> torch.Tensor:
    """The first tensor of a model output (tensor, tuple/list, or dict)."""
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, (tuple, list)) and out:
        return first_output(out[0])
    if isinstance(out, dict) and out:
        return first_output(next(iter(out.values())))
    raise ExportError(f"model output of type {type(out).__name__} has no tensor", "return a tensor of logits")
