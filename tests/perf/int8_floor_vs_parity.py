"""Does the accuracy-aware int8 floor judge what export parity judges? One model, both backends.

    python -m tests.perf.int8_floor_vs_parity                               # deit_tiny at 64 px, 40 steps
    python -m tests.perf.int8_floor_vs_parity --model resnet18 --size 96 --steps 200

Both judge decision agreement with the fp32 student (`Task.agreement`, bound `INT8_MIN_AGREEMENT`),
as `kdtool quantize` and `kdtool export` do, but on different samples and, for ExecuTorch, on a
different executable: the floor (`quantize_with_floor`) on the whole validation split with the PT2E
model in PyTorch (ExecuTorch) or the ORT file (ONNX); parity on the first `export.parity_samples`
of that split with the exported file (the XNNPACK `.pte`, the adopted QDQ `.onnx`). The script
prints, per backend, the floor's agreement on all validation samples, the quantized model's
agreement on the parity samples, the parity record of each int8 artifact, the fp32 student's median
top-2 margin and the decision margins of the samples int8 flipped: on near-flat logits (briefly
trained weights) every flip is a decision closer than the int8 error.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    """Train briefly, quantize through the floor on both backends, export both int8 files, print the comparison."""
    import timm

    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from compress.core.tasks import Task
    from compress.quant.accuracy import quantize_with_floor
    from compress.quant.configs import QuantInputs
    from compress.quant.quantize import Int8StaticConfig
    from export.registry import ExportContext
    from export.run import Quantized, export_model
    from tests.perf.trained import briefly_trained, task_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="training steps (few: near-flat logits)")
    parser.add_argument("--validation", type=int, default=256)
    parser.add_argument("--parity", type=int, default=64, help="`export.parity_samples`: the first N of validation")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kwargs = {"img_size": args.size} if args.model.startswith(("vit", "deit")) else {}
    model = briefly_trained(timm.create_model(args.model, pretrained=False, num_classes=10, **kwargs).eval(),
                            args.size, steps=args.steps)
    task, n, p = Task("multiclass", 10), args.validation, args.parity
    calib, _ = task_images(64, args.size, seed=1)
    vx, vy = task_images(n, args.size, seed=3)
    validation = [(vx[i:i + 32], vy[i:i + 32], torch.arange(i, min(i + 32, n))) for i in range(0, n, 32)]
    loader = [(calib[i:i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, 64, 8)]
    with torch.no_grad():
        ref = model(vx)  # (N, 10)
    top = ref.topk(2, 1).values
    margin = top[:, 0] - top[:, 1]
    print(f"fp32: accuracy {float((ref.argmax(1) == vy).float().mean()):.3f} on {n}; median top-2 margin "
          f"{float(margin.median()):.4g}; output scale {float(ref.abs().max()):.4g}")
    quantized = Quantized()
    with tempfile.TemporaryDirectory(prefix="kdtool-floor-") as tmp:
        out = Path(tmp)
        for backend in ("executorch", "onnx"):
            start = time.perf_counter()
            config = Int8StaticConfig(backend=backend, calibration_samples=64, min_retention=0.99)
            qm, _ = quantize_with_floor(model, config, QuantInputs(example=vx[:2], calibration=loader,
                                                                   out=out / backend), validation, task)
            floor = qm.meta["accuracy_aware"]
            run = qm.module if qm.module is not None else qm
            with torch.no_grad():
                q = torch.cat([run(vx[i:i + 32]) for i in range(0, n, 32)])
            flipped = q.argmax(1) != ref.argmax(1)
            print(backend, json.dumps({
                "seconds": round(time.perf_counter() - start, 1), "floor": floor["status"],
                "float_modules": floor["float_modules"], "floor_agreement": floor["agreement_after"],
                "agreement_on_parity_samples": float((~flipped[:p]).float().mean()),
                "int8_error_on_parity_samples": float((q[:p] - ref[:p]).abs().max()),
                "flipped_margins": sorted(round(float(m), 4) for m in margin[flipped])}))
            if backend == "executorch":
                quantized.pt2e, quantized.pt2e_mode, quantized.pt2e_floor = qm.program, "static", floor
            else:
                quantized.onnx, quantized.onnx_mode, quantized.onnx_floor = qm.path, "static", floor
        spec = ExportContext(name=args.model, output_names=("logits",), task_spec=task, parity_targets=vy[:p])
        for art in export_model(model, vx[:2], out / "export", formats=["executorch", "onnx"],
                                targets=["android", "server"],
                                quantized=quantized, spec=spec, inputs=vx[:p], threads=args.threads):
            if art.precision == "int8" and art.parity is not None:
                print(art.name, art.parity.status, f"agreement {art.parity.agreement}",
                      f"fp32_agreement {art.parity.fp32_agreement}", art.parity.reason or "")


if __name__ == "__main__":
    main()
