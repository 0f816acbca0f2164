"""Export a spread of timm mobile architectures through every format; print a model × format matrix.

    python -m tests.perf.export_matrix --size 64            # ~10 min on 2 CPU cores
    python -m tests.perf.export_matrix --models efficientnet_b0 --formats onnx,executorch --int8

Each cell is the artifact's status and parity max_abs, "n/v" where the runtime does not exist on
this OS (CoreML), or the failure reason. Nothing is trained: weights are timm's random init under a
fixed seed. Inputs are real-looking images (`compress.data.synthetic.generate_images`, ImageNet
normalisation): int8 is calibrated on CALIBRATION of them and its parity is judged on PARITY other
images of the same distribution (`export.verify`: int8 with real inputs uses those alone), because
standard-normal noise lies outside any calibrated activation range by design.
`--bn-stats` re-estimates BatchNorm running statistics on the calibration images (forward passes
without gradients; no weight changes): timm's init leaves them at mean 0 / var 1, so activations of a
random network shrink layer by layer (logits ~1e-3) and int8 rounding then dominates any comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

MODELS = ["mobilenetv3_small_100", "mobilevitv2_050", "efficientnet_b0", "repvit_m1", "vit_tiny_patch16_224"]
FORMATS = ["onnx", "torchscript", "executorch", "coreml"]
CALIBRATION, PARITY = 32, 16
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(name: str, size: int) -> torch.nn.Module:
    """A timm model with random fixed weights at `size` px (ViTs get img_size)."""
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": size} if name.startswith(("vit", "deit")) else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()


def images(n: int, size: int, seed: int) -> torch.Tensor:
    """`n` synthetic class-structured RGB images at `size` px, ImageNet-normalised (timm's default)."""
    from compress.core.tasks import Task
    from compress.data.synthetic import generate_images

    x, _ = generate_images(Task("multiclass", 10), n, image_size=size, channels=3, seed=seed)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def recalibrate_bn(model: torch.nn.Module, calibration: torch.Tensor, batch: int = 8) -> torch.nn.Module:
    """Set BatchNorm running mean/var to the calibration images' statistics (cumulative average); no training."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # exact average over the batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(calibration), batch):
            model(calibration[i:i + batch])
    return model.eval()


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


def quantize(model: torch.nn.Module, example: torch.Tensor, calibration: torch.Tensor) -> torch.fx.GraphModule:
    """PT2E int8 with the XNNPACK quantizer (per-channel symmetric), calibrated on `calibration`."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    program = torch.export.export(model, (example,))  # static batch: calibrate in example-sized chunks
    prepared = prepare_pt2e(program.module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    b = len(example)
    with torch.no_grad():
        for i in range(0, len(calibration) - b + 1, b):
            prepared(calibration[i:i + b])
    return convert_pt2e(prepared)


def export_int8(model: torch.nn.Module, example: torch.Tensor, out: Path, ctx, calibration: torch.Tensor,
                inputs: torch.Tensor) -> object:
    """ExecuTorch int8 of `model` (PT2E), loaded and checked against its PT2E model on `inputs`."""
    import dataclasses

    from export.artifact import Artifact
    from export.formats.executorch.exporter import ExecuTorchExporter
    from export.verify import verify_artifact

    try:
        quantized = quantize(model, example, calibration)
        int8_ctx = dataclasses.replace(ctx, precision="int8", quantized_program=quantized)
        art = ExecuTorchExporter().export(model, example, out, int8_ctx)
        parity = verify_artifact(art, quantized, example, inputs=inputs)
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
    parser.add_argument("--bn-stats", action="store_true",
                        help="re-estimate BatchNorm statistics on the calibration images (no training)")
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
        calibration = images(CALIBRATION, args.size, seed=1)
        inputs = images(PARITY, args.size, seed=2)  # same distribution, other samples
        if args.bn_stats:
            recalibrate_bn(model, calibration)
        example = calibration[:2].clone()
        ctx = ExportContext(name=name, output_names=("logits",), max_batch=64)
        with tempfile.TemporaryDirectory() as out:
            arts = (export_model(model, example, Path(out), formats=formats, ctx=ctx, inputs=inputs)
                    if formats else [])
            if args.int8:
                arts.append(export_int8(model, example, Path(out), ctx, calibration, inputs))
        rows.append((name, [cell(a) for a in arts], time.perf_counter() - t0))
        print(f"{name}: {rows[-1][1]} ({rows[-1][2]:.0f} s)", flush=True)
    print(f"\n| model @{args.size}px | " + " | ".join(columns) + " | s |")
    print("|---" * (len(columns) + 2) + "|")
    for name, cells, seconds in rows:
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main()
