"""Every target's artifacts (fp32 and int8) for a broad sweep of timm mobile architectures, as a matrix.

    python -m tests.perf.export_matrix                       # 14 architectures at 96 px, ~30 min on 2 cores
    python -m tests.perf.export_matrix --models repvit_m1,efficientvit_b0 --size 128 --steps 20

Families: plain and residual CNNs (resnet18, regnetx_002, convnext_atto), inverted-residual mobile
nets (mobilenetv2_100, mobilenetv3_small_100, mobilenetv3_large_100, efficientnet_b0, ghostnet_100),
re-parameterisable nets (mobileone_s0, repvit_m1, fastvit_t8: exported fused, `compress.models.deploy`),
conv-attention hybrids (mobilevitv2_050, efficientvit_b0, levit_128s) and a plain ViT
(vit_tiny_patch16_224 at the sweep's size).

Each model is trained briefly at the sweep's size on generated images (`tests.perf.trained`):
random weights give near-flat logits on which int8 parity means nothing. Then, as `kdtool
quantize --mode static` and `kdtool export --target android --target ios --target server` do,
kdtool's own code makes the static int8 models (ExecuTorch PT2E, ONNX Runtime QDQ, through the
accuracy-aware floor: 0.99 of the fp32 accuracy and parity's decision agreement on 96 held-out
images, the layers it keeps in float printed below the table) and every target's artifacts, each
loaded in its runtime and parity-checked on held-out images. LiteRT (android) and OpenVINO
(server) make their own int8 from the same calibration images (OpenVINO with NNCF's accuracy
control at the same floor); without their extras those cells are `skip`.

A cell is `ok` with the parity max_abs relative to the output scale (ExecuTorch: the XNNPACK
delegated share when below 100 %), `n/v` where the runtime exists only elsewhere (CoreML on Apple
OSes), `skip` (TensorRT without CUDA), or `FAIL` with the reason's start; the reasons are printed
in full below the table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from tests.perf import results

MODELS = ["resnet18", "regnetx_002", "convnext_atto", "mobilenetv2_100", "mobilenetv3_small_100",
          "mobilenetv3_large_100", "efficientnet_b0", "ghostnet_100", "mobileone_s0", "repvit_m1", "fastvit_t8",
          "mobilevitv2_050", "efficientvit_b0", "levit_128s", "vit_tiny_patch16_224"]
CALIBRATION, PARITY, VALIDATION = 64, 32, 96
MIN_RETENTION = 0.99
"""The int8 floor every model is quantized to (`quantize.min_retention`'s default), on `VALIDATION` images."""
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def build(name: str, size: int) -> torch.nn.Module:
    """A timm model with random fixed weights at `size` px (ViTs get img_size)."""
    import timm

    torch.manual_seed(0)
    kwargs = {"img_size": size} if name.startswith(("vit", "deit", "levit")) else {}
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
    """One matrix cell: `ok 3e-06`, `ok 2e-02 xnn 93%`, `n/v`, `skip`, or `FAIL <reason start>`."""
    if a.status == "skipped":
        return "skip"
    if a.status == "failed":
        return f"FAIL {(a.reason or '')[:28]}"
    p = a.parity
    if p is None or p.max_abs is None:
        return "n/v"
    extra = ""
    share = (a.info.get("delegation") or {}).get("share")
    if share is not None and share < 1.0:
        extra = f" xnn {share:.0%}"
    return f"ok {p.max_rel:.0e}{extra}"


def sweep_model(name: str, size: int, steps: int, out: Path, formats: list[str] | None = None) -> tuple[list, float]:
    """Train briefly, quantize (static int8, both backends, through the 0.99 retention floor) and export
    every target (only `formats` of them when given); (artifacts, seconds)."""
    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from compress.core.tasks import Task
    from compress.quant.accuracy import quantize_with_floor
    from compress.quant.configs import QuantInputs
    from compress.quant.quantize import Int8StaticConfig
    from export.registry import ExportContext
    from export.run import Quantized, export_model
    from tests.perf.trained import briefly_trained, task_images

    t0 = time.perf_counter()
    from compress.models.deploy import deploy_form

    model = briefly_trained(build(name, size), size, classes=10, steps=steps)
    model, _ = deploy_form(model)  # int8 of the form that ships, as `kdtool quantize` makes it (fused re-param)
    calibration, _ = task_images(CALIBRATION, size, seed=1)
    inputs, labels = task_images(PARITY, size, seed=2)
    val_x, val_y = task_images(VALIDATION, size, seed=3)
    validation = [(val_x[i:i + 16], val_y[i:i + 16], torch.arange(i, min(i + 16, len(val_x))))
                  for i in range(0, len(val_x), 16)]
    loader = [(calibration[i:i + 8], torch.zeros(8, dtype=torch.long)) for i in range(0, len(calibration), 8)]
    example = inputs[:2]
    quantized = Quantized(calibration=calibration, validation=(val_x, val_y), min_retention=MIN_RETENTION)
    for backend in ("executorch", "onnx"):
        if formats is not None and backend not in formats:
            continue
        config = Int8StaticConfig(backend=backend, calibration_samples=CALIBRATION, min_retention=MIN_RETENTION)
        try:
            q, _ = quantize_with_floor(model, config, QuantInputs(example=example, calibration=loader,
                                                                  out=out / f"q_{backend}"),
                                       validation, Task("multiclass", 10))
        except Exception as e:  # a failed quantization leaves that int8 artifact skipped, with the reason printed
            print(f"  {name}: {backend} int8 quantization failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        floor = q.meta.get("accuracy_aware")
        if backend == "executorch":
            quantized.pt2e, quantized.pt2e_mode, quantized.pt2e_floor = q.program, "static", floor
        else:
            quantized.onnx, quantized.onnx_mode, quantized.onnx_floor = q.path, "static", floor
    spec = ExportContext(name=name, output_names=("logits",), task_spec=Task("multiclass", 10), parity_targets=labels)
    targets = {t: None for t in ("android", "ios", "server")}
    if formats is not None:  # each format only for the targets whose preset has it
        from export.targets import TARGET_FORMATS

        targets = {t: [f for f in formats if f in TARGET_FORMATS[t]] for t in targets}
    arts = []
    for target, fmts in targets.items():
        if fmts != []:
            arts += export_model(model, example, out / "export" / target, fmts, targets=[target], quantized=quantized,
                                 spec=spec, inputs=inputs, threads=torch.get_num_threads())
    return arts, time.perf_counter() - t0


def main() -> None:
    """Run the sweep and print it as a Markdown table, then every failure's reason."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=200, help="training steps (fresh batch of 16 each) before export")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", default=None,
                        help="only these formats of the three targets' presets (e.g. litert,openvino); default all")
    args = parser.parse_args()
    formats = args.formats.split(",") if args.formats else None
    torch.set_num_threads(args.threads)
    rows, columns, reasons, kept = [], [], [], []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="kdtool-matrix-") as out:
            try:
                arts, seconds = sweep_model(name, args.size, args.steps, Path(out), formats)
            except Exception as e:  # an architecture that does not build or train here is a row, not a crash
                rows.append((name, {}, 0.0, f"{type(e).__name__}: {str(e)[:80]}"))
                print(f"{name}: {rows[-1][3]}", flush=True)
                continue
        cells = {}
        for a in arts:
            flavour = "executorch-coreml" if a.name.split(".")[-2] == "executorch-coreml" else a.format
            key = f"{a.target} {flavour} {a.precision}"
            cells[key] = cell(a)
            if key not in columns:
                columns.append(key)
            if a.status == "failed":
                reasons.append(f"{name} {key}: {a.reason}")
            floor = a.info.get("accuracy_aware") or {}
            if a.precision == "int8" and (floor.get("float_modules") or floor.get("status", "met") != "met"):
                layers = ", ".join(floor.get("float_modules") or ["none"])
                kept.append(f"{name} {key}: {layers} (int8 share of the conv/linear "
                            f"compute {floor.get('int8_compute_share')}; retention {floor.get('retention_before')} "
                            f"-> {floor.get('retention_after')}, floor {floor.get('status')})")
        rows.append((name, cells, seconds, ""))
        print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in cells.items()) + f" ({seconds:.0f} s)", flush=True)
    print(f"\n| model @{args.size}px | " + " | ".join(columns) + " | s |")
    print("|---" * (len(columns) + 2) + "|")
    for name, cells, seconds, error in rows:
        body = " | ".join(cells.get(c, "-") for c in columns) if cells else f"FAIL {error}"
        print(f"| {name} | {body} | {seconds:.0f} |")
    ok = sum(v.startswith(("ok", "n/v", "skip")) for _, c, _, _ in rows for v in c.values())
    total = sum(len(c) for _, c, _, _ in rows)
    print(f"\n{ok} of {total} artifacts made and verified (or not runnable here), {len(rows)} architectures")
    for line in reasons:
        print(f"- {line}")
    if kept:
        print("\nKept in float by the accuracy-aware step (or its floor not met):")
    for line in kept:
        print(f"- {line}")
    records = [(name, args.size, key, cells.get(key, "-") if cells else f"FAIL {error}", round(seconds))
               for name, cells, seconds, error in rows for key in (columns if cells else ["-"])]
    results.write("export_matrix", ("model", "size", "artifact", "cell", "model_s"), records,
                  note=f"cell: parity max_abs / output scale (xnn: XNNPACK's share), n/v: needs Apple OSes, skip: "
                       f"TensorRT without CUDA; {args.steps} training steps; {ok} of {total} artifacts verified"
                       + (f"; formats {', '.join(formats)} only" if formats else ""))


if __name__ == "__main__":
    main()
