"""Export a spread of timm mobile architectures through every format; print a model × format matrix.

    python -m benchmark.export_matrix --size 64            # ~10 min on 2 CPU cores
    python -m benchmark.export_matrix --models efficientnet_b0 --formats onnx,executorch --int8

Each cell is the artifact's status and parity max_abs (random fixed weights, real-looking random
inputs), "n/v" where the runtime does not exist on this OS (CoreML), or the failure reason.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

MODELS = ["mobilenetv3_small_100", "mobilevitv2_050", "efficientnet_b0", "repvit_m1", "vit_tiny_patch16_224"]
FORMATS = ["onnx", "torchscript", "executorch", "coreml"]


def build(name: str, size: int) -> torch.nn.Module:
    """A timm model with random fixed weights at `size` px (ViTs get img_size)."""
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": size} if name.startswith(("vit", "deit")) else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


def cell(a) -> str:
    """One matrix cell: `ok 3e-06`, `ok n/v`, `skip`, or `FAIL <reason>`."""
    if a.status == "skipped":
        return "skip"
    if a.status == "failed":
        return f"FAIL {(a.reason or '')[:60]}"
    p = a.parity
    if p is None or p.max_abs is None:
        return "ok n/v"
    extra = ""
    if "delegation" in a.info:
        extra = f" (xnn {a.info['delegation']['share']:.0%})"
    return f"ok {p.max_abs:.1e}{extra}"


def quantize(model: torch.nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """PT2E int8 with the XNNPACK quantizer, calibrated on random batches (for coverage only)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = torch.export.export(model, (example,))
    prepared = prepare_pt2e(program.module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    for _ in range(4):
        prepared(torch.randn_like(example))
    return convert_pt2e(prepared)


def export_int8(model: torch.nn.Module, example: torch.Tensor, out: Path, ctx) -> object:
    """ExecuTorch int8 of `model` (PT2E), loaded and checked against its PT2E model."""
    import dataclasses

    from export.artifact import Artifact
    from export.executorch import ExecuTorchExporter
    from export.verify import verify_artifact

    try:
        quantized = quantize(model, example)
        int8_ctx = dataclasses.replace(ctx, precision="int8", quantized_program=quantized)
        art = ExecuTorchExporter().export(model, example, out, int8_ctx)
        parity = verify_artifact(art, quantized, example)
        status = "ok" if parity.status == "passed" else "failed"
        return art.model_copy(update={"parity": parity, "status": status, "reason": parity.reason})
    except Exception as e:  # coverage matrix: a failure is a cell, not a crash
        return Artifact(name="int8", format="executorch", precision="int8", path=out, runtime="executorch",
                        status="failed", reason=f"{type(e).__name__}: {str(e)[:80]}")


def main() -> None:
    """Run the matrix and print it as a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--int8", action="store_true", help="also ExecuTorch int8 via PT2E")
    args = parser.parse_args()
    from export.registry import ExportContext
    from export.run import export_model

    formats = [f for f in args.formats.split(",") if f]
    columns = formats + (["executorch int8"] if args.int8 else [])
    rows = []
    for name in args.models.split(","):
        t0 = time.perf_counter()
        try:
            model = build(name, args.size)
        except Exception as e:  # an arch that does not build at this size is a row of failures
            rows.append((name, [f"FAIL build: {str(e)[:50]}"] * len(columns), 0.0))
            continue
        example = torch.randn(2, 3, args.size, args.size)
        ctx = ExportContext(name=name, output_names=("logits",), max_batch=64)
        with tempfile.TemporaryDirectory() as out:
            arts = export_model(model, example, Path(out), formats=formats, ctx=ctx) if formats else []
            if args.int8:
                arts.append(export_int8(model, example, Path(out), ctx))
        rows.append((name, [cell(a) for a in arts], time.perf_counter() - t0))
        print(f"{name}: {rows[-1][1]} ({rows[-1][2]:.0f} s)", flush=True)
    print(f"\n| model @{args.size}px | " + " | ".join(columns) + " | s |")
    print("|---" * (len(columns) + 2) + "|")
    for name, cells, seconds in rows:
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
