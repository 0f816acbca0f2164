"""Static INT8 calibration choices side by side: method x samples x backend, on briefly trained students.

    python -m tests.perf.calibration_study                        # resnet18, mobilenetv3_large_100 @224
    python -m tests.perf.calibration_study --models resnet18 --samples 32,128,512

For each model (timm, trained by `tests.perf.trained.briefly_trained`: random weights give near-flat
logits on which rounding decides everything) and each backend kdtool quantizes statically for
(ExecuTorch's PT2E XNNPACK quantizer, scored as the PT2E model; ONNX Runtime QDQ U8S8, scored in
ONNX Runtime), every calibration method (`quantize.calibration_method`: `histogram`, `minmax`) at
every calibration size (`quantize.calibration_samples`), with no floor and no layer kept float:
the plain PTQ model the accuracy-aware step starts from. Scored on `VALIDATION` held-out images
(none of them calibrates): accuracy retention against the fp32 model, decision agreement with it
(export parity's int8 bound is 0.90), and the output error as a fraction of the fp32 output scale
(median over images of max |int8 - fp32| / max |fp32|). The time is the quantization's (calibration
included). Prints one table; the default of `Int8StaticConfig.calibration_method` (each backend's
own) and of `calibration_samples` (256) are what this measures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests.perf import results

MODELS = {"resnet18": 224, "mobilenetv3_large_100": 224, "mobilevitv2_050": 256}
VALIDATION = 256
BACKENDS = ("executorch", "onnx")
METHODS = ("histogram", "minmax")


def output_error(outs: torch.Tensor, ref: torch.Tensor) -> float:
    """Median over samples of max |outs - ref| / max |ref| (the fp32 output scale)."""
    scale = ref.abs().amax().clamp_min(1e-12)
    return float(((outs - ref).abs().amax(1) / scale).median())


def study_model(name: str, size: int, samples: list[int], steps: int, threads: int) -> list[tuple]:
    """Rows (backend, method, samples, retention, agreement, error, seconds) for one model."""
    import timm

    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from compress.core.tasks import Task, retention
    from compress.quant.configs import QuantInputs
    from compress.quant.evaluate import collect_outputs
    from compress.quant.quantize import Int8StaticConfig
    from compress.quant.static import quantize_static
    from tests.perf.trained import briefly_trained, task_images

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = briefly_trained(timm.create_model(name, pretrained=False, num_classes=10), size, steps=steps)
    task = Task("multiclass", 10)
    val_x, val_y = task_images(VALIDATION, size, seed=3)
    validation = [(val_x[i:i + 16], val_y[i:i + 16], torch.arange(i, min(i + 16, VALIDATION)))
                  for i in range(0, VALIDATION, 16)]
    ref, targets = collect_outputs(model, validation, None)
    fp32 = task.metrics(ref, targets)[task.primary_metric]
    print(f"  fp32 held-out accuracy {fp32:.3f} on {VALIDATION} images", flush=True)
    calib_x, _ = task_images(max(samples), size, seed=1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdtool-calib-") as tmp:
        for backend in BACKENDS:
            for method in METHODS:
                for n in samples:
                    loader = [(calib_x[i:min(i + 16, n)], torch.zeros(min(16, n - i), dtype=torch.long))
                              for i in range(0, n, 16)]
                    config = Int8StaticConfig(backend=backend, calibration_samples=n, calibration_method=method)
                    out = Path(tmp) / f"{backend}_{method}_{n}"
                    start = time.perf_counter()
                    qm = quantize_static(model, config, QuantInputs(example=calib_x[:2], calibration=loader, out=out))
                    seconds = time.perf_counter() - start
                    outs, _ = collect_outputs(qm, validation, None)
                    kept = retention(task.primary_metric, task.metrics(outs, targets)[task.primary_metric], fp32)
                    rows.append((backend, method, n, kept, task.agreement(outs, ref), output_error(outs, ref),
                                 seconds))
                    print(f"  {backend} {method} {n}: retention {kept:.4f}, agreement {rows[-1][4]:.3f}, "
                          f"error {rows[-1][5]:.4f} x scale, {seconds:.0f} s", flush=True)
    return rows


def main() -> None:
    """Parse arguments, study each model, print one table."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenetv3_large_100")
    parser.add_argument("--samples", default="32,128,256,512", help="calibration sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="training steps (fresh batch of 16 each)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    samples = [int(s) for s in args.samples.split(",")]
    table = Table(title=f"static int8 calibration, {VALIDATION} held-out images")
    for col in ("model", "backend", "method", "samples", "retention", "agreement", "error x scale", "s"):
        table.add_column(col)
    records = []
    for name in args.models.split(","):
        for backend, method, n, kept, agreed, error, seconds in study_model(name, MODELS.get(name, 224), samples,
                                                                            args.steps, args.threads):
            records.append((name, backend, method, n, None if kept is None else round(kept, 4), round(agreed, 3),
                            round(error, 4), round(seconds)))
            table.add_row(name, backend, method, str(n), "-" if kept is None else f"{kept:.4f}", f"{agreed:.3f}",
                          f"{error:.4f}", f"{seconds:.0f}")
    Console().print(table)
    results.write("calibration_study", ("model", "backend", "method", "samples", "retention", "agreement",
                                        "error_x_scale", "s"), records,
                  note=f"plain PTQ, no floor; {VALIDATION} held-out images; error: median max |int8 - fp32| / "
                       f"output scale")


if __name__ == "__main__":
    main()
