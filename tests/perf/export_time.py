"""Wall time of a real-size student's whole export (android + ios + server), per artifact, as a table.

    python -m tests.perf.export_time                                  # mobilevitv2_200 @256, 2 threads
    python -m tests.perf.export_time --model mobilevitv2_050 --profile /tmp/export.prof

What `kdtool export --target android --target ios --target server` does after `kdtool quantize
--mode static` on the deepfake recipe's student: the static int8 models (ExecuTorch PT2E and ONNX
Runtime QDQ) are made first (timed apart: that is the quantization stage), then `export_jobs` makes,
loads and parity-checks every artifact on `--parity` real images, as the export stage does.
Weights are timm's seeded init with BatchNorm statistics re-estimated on the calibration images
(timing does not depend on training). Each row gives the exporter's own time (`export_s`: tracing,
lowering, serialising) and the artifact's total (with loading and parity). `--profile FILE`
writes a cProfile of the export (not the quantization) and prints its 25 costliest functions.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import tempfile
import time
from pathlib import Path

import torch

from tests.perf import results
from tests.perf.export_matrix import IMAGENET_MEAN, IMAGENET_STD, images, recalibrate_bn


def labelled_images(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` binary-task images (ImageNet-normalised) and their labels."""
    from compress.core.tasks import Task
    from compress.data.synthetic import generate_images

    x, y = generate_images(Task("binary", 2), n, image_size=size, channels=3, seed=seed)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, y


def main() -> None:
    """Quantize, export every target's artifacts, print the per-artifact times and the total."""
    import timm
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from compress.core.tasks import Task
    from compress.quant.quantize import Int8StaticConfig, quantize
    from export.registry import ExportContext
    from export.run import Quantized, export_jobs
    from export.targets import plan

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilevitv2_200")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parity", type=int, default=64, help="real parity images (export.parity_samples)")
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--targets", default="android,ios,server")
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False, num_classes=2)
    calibration = images(args.calibration, args.size, seed=1)
    inputs, labels = labelled_images(args.parity, args.size, seed=2)
    model = recalibrate_bn(model, calibration)
    loader = [(calibration[i:i + 8], torch.zeros(len(calibration[i:i + 8]), dtype=torch.long))
              for i in range(0, len(calibration), 8)]
    example = inputs[:2]
    with tempfile.TemporaryDirectory(prefix="kdtool-export-time-") as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        et = quantize(model, Int8StaticConfig(backend="executorch", calibration_samples=args.calibration,
                                              min_retention=None), example=example, calibration=loader,
                      out=out / "q_et")
        onnx = quantize(model, Int8StaticConfig(backend="onnx", calibration_samples=args.calibration,
                                                min_retention=None), example=example, calibration=loader,
                        out=out / "q_onnx")
        quantize_s = time.perf_counter() - t0
        quantized = Quantized(pt2e=et.program, onnx=onnx.path, pt2e_mode="static", onnx_mode="static",
                              calibration=calibration, min_retention=None)  # LiteRT and OpenVINO calibrate too
        task = Task("binary", 2)
        spec = ExportContext(name="student_kd", task="binary", output_names=("output",), task_spec=task,
                            parity_targets=labels)  # as the export stage: parity compares the AUC too
        jobs = plan(args.targets.split(","), None, True)
        profiler = cProfile.Profile() if args.profile else None
        t0 = time.perf_counter()
        if profiler:
            profiler.enable()
        artifacts = export_jobs(jobs, model, example, out / "export", quantized=quantized, spec=spec,
                                inputs=inputs, threads=args.threads)
        if profiler:
            profiler.disable()
        export_s = time.perf_counter() - t0
    table = Table(title=f"{args.model} @ {args.size}: export of {args.targets} "
                        f"({platform.processor() or platform.machine()}, {args.threads} threads)")
    for col in ("artifact", "target", "status", "export s", "parity", "batch"):
        table.add_column(col, no_wrap=col == "artifact")
    for a in artifacts:
        table.add_row(a.name, a.target or "", a.status, f"{a.info.get('export_s', 0):.1f}",
                      a.parity.status if a.parity else (a.reason or "")[:40],
                      "dynamic" if a.info.get("dynamic_batch") else str(a.info.get("batch", "static")))
    console.print(table)
    for a in artifacts:
        if a.status != "ok" and a.reason:
            console.print(f"[dim]{escape(f'{a.name} [{a.target}]: {a.reason[:400]}')}[/]")
    console.print(f"quantization (ExecuTorch + ONNX static int8): {quantize_s:.1f} s; "
                  f"export of {len(artifacts)} artifacts: [bold]{export_s:.1f} s[/]")
    records = [(a.name, a.target or "", a.status, round(a.info.get("export_s", 0), 1),
                a.parity.status if a.parity else (a.reason or "")[:60]) for a in artifacts]
    records += [("quantization (ExecuTorch + ONNX static int8)", "", "", round(quantize_s, 1), ""),
                (f"export of {len(artifacts)} artifacts (wall)", "", "", round(export_s, 1), "")]
    results.write("export_time", ("artifact", "target", "status", "seconds", "parity"), records,
                  note=f"{args.model} @ {args.size}, {args.threads} threads, parity on {args.parity} images; "
                       f"KDTOOL_EXPORT_PROCESSES={os.environ.get('KDTOOL_EXPORT_PROCESSES', 'default')}")
    if profiler:
        profiler.dump_stats(args.profile)
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
