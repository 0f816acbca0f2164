"""Deployment targets → the artifacts made for them; `--format` narrows or extends a preset.

| target  | artifacts (format precision)                                                    |
|---------|---------------------------------------------------------------------------------|
| android | executorch fp32, executorch int8 (PT2E, XNNPACK), onnx fp32 (ONNX Runtime Mobile) |
|         | litert fp32, litert int8 (litert-torch PT2E; LiteRT interpreter, XNNPACK)        |
| ios     | coreml fp16, executorch-coreml fp16 (ExecuTorch with the CoreML delegate)        |
| server  | onnx fp32, onnx int8 (ORT QDQ), tensorrt fp16 (CUDA only), torchscript fp32      |
|         | openvino fp32, openvino int8 (NNCF; OpenVINO CPU plugin)                         |

int8 jobs need the quantization stage's output (`Quantized`; LiteRT and OpenVINO, whose exporters
quantize, its calibration samples); without it they are skipped with that reason, as TensorRT is
without CUDA: every planned artifact shows up in the report.

Batch axis (`export.batch`). `auto` gives the phone targets (android, ios) a static batch of 1 and
the server a dynamic batch: apps run one sample at a time, a fixed shape lets the runtimes fold the
shape arithmetic, ExecuTorch plans its memory for one sample instead of `EXECUTORCH_MAX_BATCH`, and
the dynamic-batch fallbacks (smoke runs at the upper bound, fixed-batch re-exports, a second CoreML
conversion) are not needed. Measured side by side (batch 1, 2 threads, an AVX2 x86 CPU), the static
files are faster: MobileNetV3-Large @ 224 ONNX Runtime fp32 5.06 vs 9.47 ms and ExecuTorch fp32 6.18
vs 11.41 ms, MobileViTv2-050 @ 256 14.18 vs 15.59 and 17.36 vs 19.32, ResNet-18 22.48 vs 23.97 (on an
AVX-512 CPU: 1-4 %). A server
that runs one request at a time gains from `export.batch: 1`. `dynamic` keeps the batch dynamic
everywhere, an int N fixes it at N.
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.core.errors import KdtoolError

TARGETS = ("android", "ios", "server")  # the keys of PRESETS and TARGET_FORMATS (tests check it)
MOBILE_TARGETS = ("android", "ios")  # `export.batch: auto` fixes their batch at 1
CUSTOM_TARGET = "custom"  # folder used when only --format is given
DEFAULT_PRECISION = {"coreml": "fp16", "tensorrt": "fp16"}


@dataclass(frozen=True)
class Job:
    """One artifact to make: format, precision, optional variant (e.g. executorch 'coreml')."""

    target: str
    format: str
    precision: str = "fp32"
    variant: str | None = None
    batch: int | None = None  # static batch size; None: dynamic batch axis
    tag: str | None = None  # name suffix (`b1`) telling apart two files of one format: see `plan`

    @property
    def folder(self) -> str:
        """Relative folder `<target>/<format>[-<variant>]/<precision>`."""
        fmt = f"{self.format}-{self.variant}" if self.variant else self.format
        return f"{self.target}/{fmt}/{self.precision}"


PRESETS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "android": (("executorch", "fp32", None), ("executorch", "int8", None), ("onnx", "fp32", None),
                ("litert", "fp32", None), ("litert", "int8", None)),
    "ios": (("coreml", "fp16", None), ("executorch", "fp16", "coreml")),
    "server": (("onnx", "fp32", None), ("onnx", "int8", None), ("tensorrt", "fp16", None),
               ("torchscript", "fp32", None), ("openvino", "fp32", None), ("openvino", "int8", None)),
}
"""What `kdtool export --target T` makes by default: (format, precision, variant). Every preset
artifact ships to its target (`TARGET_FORMATS`; tests/export/test_targets.py checks it)."""

TARGET_FORMATS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "android": {"executorch": None, "onnx": ("fp32", "fp16"), "litert": None},
    "ios": {"coreml": None, "executorch": None},
    "server": {"onnx": None, "torchscript": None, "tensorrt": None, "aoti": None, "openvino": None},
}
"""The one target → formats table: the formats that can ship to each target, with the precisions
they ship in (None: any); the report's per-target recommendation picks among these. Android takes
no ONNX int8: that file is the server's, tuned for x86 (uint8 activations, 7-bit weights for
VNNI/AVX2); phones get ExecuTorch's XNNPACK int8."""


def format_names() -> tuple[str, ...]:
    """The export formats, read from disk without importing them: the `export/formats/<name>/`
    packages that hold an exporter (a test keeps this equal to the registered exporters)."""
    from pathlib import Path

    return tuple(sorted(p.parent.name for p in (Path(__file__).parent / "formats").glob("*/exporter.py")))


def check_names(targets: list[str] | None, formats: list[str] | None) -> None:
    """Refuse an unknown `--target` or `--format` by name, before any model, run folder or torch import.

    Raises:
        KdtoolError: naming the bad argument and the known values.
    """
    for t in targets or []:
        if t not in (*TARGETS, "all"):
            raise KdtoolError(f"--target {t!r}: unknown target", f"known: {', '.join(TARGETS)}, all")
    known = format_names()
    for f in formats or []:
        if f not in known:
            raise KdtoolError(f"--format {f!r}: unknown format", f"known: {', '.join(known)}")


def job_batch(target: str, batch: str | int = "auto") -> int | None:
    """The static batch of `target`'s artifacts under `export.batch` (None: dynamic); see the module doc."""
    if isinstance(batch, int):
        return batch
    return 1 if batch == "auto" and target in MOBILE_TARGETS else None


def plan(targets: list[str] | None = None, formats: list[str] | None = None, int8: bool = True,
         batch: str | int = "auto") -> list[Job]:
    """The jobs for `targets` (default server); `formats` keeps only those formats, adding missing ones.

    Args:
        targets: android, ios, server, or "all".
        formats: explicit format list (overrides the presets' choice of formats).
        int8: include the int8 artifacts of the presets.
        batch: `export.batch`: "auto", "dynamic" or a static size (see `job_batch`).
    """
    import export.formats  # noqa: F401  (registers every exporter)
    from export.registry import EXPORTERS

    if targets and "all" in targets:
        targets = list(TARGETS)
    for t in targets or []:
        if t not in TARGETS:
            raise KdtoolError(f"unknown export target {t!r}", f"known: {', '.join(TARGETS)}, all")
    for f in formats or []:
        if f not in EXPORTERS:
            EXPORTERS.get(f)  # raises naming the known exporters
    names = targets or ([CUSTOM_TARGET] if formats else ["server"])
    jobs: list[Job] = []
    for target in names:
        b = job_batch(target, batch)
        preset = [Job(target, f, p, v, b) for f, p, v in PRESETS.get(target, ()) if int8 or p != "int8"]
        if formats:
            preset = [j for j in preset if j.format in formats]
            have = {j.format for j in preset}
            preset += [Job(target, f, DEFAULT_PRECISION.get(f, "fp32"), batch=b) for f in formats if f not in have]
        jobs += preset
    # one artifact per (format, precision, variant, batch): targets with the same batch share a file
    unique: dict[tuple[str, str, str | None, int | None], Job] = {}
    for job in jobs:
        unique.setdefault((job.format, job.precision, job.variant, job.batch), job)
    return [_tagged(job, batch) for job in unique.values()]


def _tagged(job: Job, batch: str | int) -> Job:
    """`job` with the tag `b<N>` when a preset of another target makes the same format and precision
    at another batch (android's static ONNX beside the server's dynamic one: `student_kd.onnx-b1.fp32`).

    Decided on the preset table, not on the targets of this call, so an artifact keeps its name
    whichever targets are exported together."""
    if job.batch is None:
        return job
    for target, preset in PRESETS.items():
        other = job_batch(target, batch)
        if target != job.target and other != job.batch and (job.format, job.precision, job.variant) in preset:
            return Job(job.target, job.format, job.precision, job.variant, job.batch, f"b{job.batch}")
    return job
