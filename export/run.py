"""`export_model`: every planned artifact exported, loaded in its runtime, parity-checked, with a manifest.

One format failing does not stop the others: each artifact comes back with status ok / failed /
skipped and the reason (the unsupported op, the missing package, the parity numbers). Each
artifact is written atomically into `out_dir/<target>/<format>/<precision>/` with its
`manifest.json`. The returned list feeds the summary table and the report card. The model is
exported in its deployed form (`compress.models.deploy`: re-parameterisable blocks fused); the
caller strips KD adapters/hooks and passes the bare student.

ExecuTorch jobs are lowered in a forked child process while this one makes and verifies the other
formats (`export.lowering`: the lowering is single-threaded Python that would leave a core idle);
they are collected and verified last, and the list comes back in plan order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path
from compress.core.errors import ExportError, KdtoolError
from compress.core.progress import format_status, progress_line
from export.artifact import Artifact, Parity
from export.manifest import write_manifest
from export.registry import EXPORTERS, ExportContext, first_line
from export.targets import Job, plan
from export.verify import ReferenceCache, verify_artifact

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Quantized:
    """The quantization stage's outputs that exporters take for int8.

    Attributes:
        pt2e: `convert_pt2e` output (XNNPACK quantizer) or an ExportedProgram of it → ExecuTorch int8.
        onnx: an ONNX Runtime–quantized QDQ `.onnx` → ONNX (and TensorRT) int8.
        pt2e_mode, onnx_mode: the quantization mode each came from ("static", "qat"...), recorded
            in the int8 artifacts' metadata and manifest as `kdtool.quantization`.
        pt2e_floor, onnx_floor: the accuracy-aware step's report (`meta.json` `accuracy_aware`): its
            float layers, int8 compute share and retention before/after go into the int8 artifacts'
            metadata (`kdtool.float_layers`, `kdtool.int8_compute_share`, `kdtool.retention_before`,
            `kdtool.retention_after`).
        calibration: preprocessed calibration samples (the ones PT2E and ONNX Runtime calibrate on)
            for the formats whose exporter calibrates its own int8 (LiteRT, OpenVINO).
        validation: (inputs, labels) for their accuracy-aware int8 (OpenVINO's NNCF accuracy control).
        min_retention: the accuracy-aware floor (`quantize.min_retention`); None turns it off.
    """

    pt2e: Any = None
    onnx: Path | None = None
    pt2e_mode: str | None = None
    onnx_mode: str | None = None
    command: str = "kdtool quantize"  # the command skip reasons suggest (the run's recipe and --out added)
    pt2e_floor: dict[str, Any] | None = None
    onnx_floor: dict[str, Any] | None = None
    calibration: torch.Tensor | None = None
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    min_retention: float | None = None

    @classmethod
    def of(cls, models: Any) -> Quantized:
        """The int8 inputs of `compress.quantize` results: an ExecuTorch (PT2E) one and/or an ONNX one.

        Args:
            models: a `Quantized` (returned as is), a `QuantizedModel`, or a list of them; the last of each
                backend wins. Other backends (torch, coreml) have no exporter input and are left out.
        """
        if isinstance(models, Quantized):
            return models
        out = cls(command="compress.quantize(...)")
        for qm in models if isinstance(models, list | tuple) else [models]:
            if qm.backend == "executorch":
                out.pt2e, out.pt2e_mode = qm.program if qm.program is not None else qm.module, qm.mode
                out.pt2e_floor = qm.meta.get("accuracy_aware")
            elif qm.backend == "onnx":
                out.onnx, out.onnx_mode, out.onnx_floor = qm.path, qm.mode, qm.meta.get("accuracy_aware")
        return out


def export_model(model: nn.Module, example: torch.Tensor, out_dir: str | Path,
                 formats: list[str] | None = None, targets: list[str] | None = None, *,
                 quantized: Any = None, spec: ExportContext | None = None,
                 inputs: torch.Tensor | None = None, int8: bool = True, verify: bool = True,
                 threads: int = 1, batch: str | int = "auto") -> list[Artifact]:
    """Export `model` for `targets` (presets) or `formats`, verify each artifact, write manifests.

    Args:
        model: the student `nn.Module` (fp32, CPU); put in eval mode here.
        example: one input batch of the model's input shape (e.g. (2, 1, 32, 32)).
        out_dir: the export folder (e.g. `runs/<name>/export`).
        formats: formats to make (`EXPORTERS` names); with targets, narrows/extends their presets.
        targets: android, ios, server or all (see `export/targets.py`); default server.
        quantized: int8 inputs: `compress.quantize` results (one `QuantizedModel` or a list) or a
            `Quantized`; int8 jobs are skipped without them.
        spec: names, labels, preprocessing, opset, metadata (precision/target are set per job).
        inputs: real (preprocessed) inputs for the parity check, besides random ones.
        int8: make the presets' int8 artifacts.
        verify: load every artifact in its runtime and check parity (turn off only in tests of I/O).
        threads: intra-op threads for the runtimes during verification.
        batch: the batch axis (`export.batch`): "auto" (static 1 for android/ios, dynamic for
            server), "dynamic", or a static size.

    Returns:
        One `Artifact` per planned job, in plan order, each with status, reason, parity and info.
    """
    return export_jobs(plan(targets, formats, int8, batch), model, example, out_dir,
                       quantized=Quantized.of(quantized) if quantized is not None else None, spec=spec,
                       inputs=inputs, verify=verify, threads=threads)


def export_jobs(jobs: list[Job], model: nn.Module, example: torch.Tensor, out_dir: str | Path, *,
                quantized: Quantized | None = None, spec: ExportContext | None = None,
                inputs: torch.Tensor | None = None, verify: bool = True, threads: int = 1,
                hashes: dict[str, str] | None = None) -> list[Artifact]:
    """Export, verify and write the manifest of each planned job (`export_model` after planning).

    Each artifact folder `out_dir/<job.folder>` is replaced atomically; no other folder is touched.
    `hashes` (`{job.folder: inputs hash}`) go into the manifests (see `ExportContext.inputs_hash`).

    Returns:
        One `Artifact` per job, in order.
    """
    from compress.models.deploy import deploy_form

    model, fused = deploy_form(model.eval())  # re-parameterisable blocks ship fused (MobileOne, RepViT...)
    spec = spec or ExportContext()
    if fused:  # embedded in every artifact and its manifest
        spec = dataclasses.replace(spec, metadata={**spec.metadata, "kdtool.reparameterized_blocks": str(fused)})
    quantized = quantized or Quantized()
    setups = [_setup(job, example, spec, quantized, inputs, (hashes or {}).get(job.folder)) for job in jobs]
    lowering = _start_lowering(jobs, model, setups)
    ahead = sorted(lowering.keys) if lowering else []
    results: dict[int, Artifact] = {}
    cache = ReferenceCache()  # every artifact is compared with the same PyTorch outputs
    torch_threads = torch.get_num_threads()

    def width() -> int:
        """Threads for the next step: one fewer (torch's too) while the child lowers (`export.lowering`)."""
        busy = lowering is not None and lowering.busy()
        torch.set_num_threads(max(1, torch_threads - 1) if busy else torch_threads)
        return max(1, threads - 1) if busy else threads

    try:  # the jobs the child builds come last: the others are made and verified meanwhile
        for i in [i for i in range(len(jobs)) if i not in ahead] + ahead:
            job = jobs[i]
            t0 = time.perf_counter()
            built = (lambda into, spec, i=i: lowering.take(i, into, spec)) if i in ahead else None
            if built and verify and lowering.busy():  # the reference's outputs while the child still lowers
                width()
                with contextlib.suppress(Exception):  # a reference that fails fails this artifact's parity
                    cache.warm(_reference(job, model, quantized), setups[i].example, job.precision, inputs)
            with format_status(f"export {job.format} {job.precision} …"):
                a = _export_one(job, model, Path(out_dir), setups[i], quantized, inputs, verify, width, cache,
                                built)
            if fused and a.status != "skipped":
                a = _update(a, info={**a.info, "reparameterized_blocks": fused})
            results[i] = a
            log.info("%s: %s%s", a.name, a.status, f" ({a.reason})" if a.reason else "")
            progress_line(f"  export {a.name}: {a.status} in {time.perf_counter() - t0:.1f} s"
                          + (f" (lowered in {a.info['export_s']:.1f} s beside the others)"
                             if i in ahead and "export_s" in a.info else ""))
    finally:
        torch.set_num_threads(torch_threads)
        if lowering:
            lowering.close()
    return [results[i] for i in range(len(jobs))]


@dataclasses.dataclass
class _Setup:
    """One job's context (precision, target, metadata), traced example and skip reason."""

    spec: ExportContext
    example: torch.Tensor
    floor: dict[str, Any] | None
    skip: str | None


def _setup(job: Job, example: torch.Tensor, base: ExportContext, quantized: Quantized,
           inputs: torch.Tensor | None, inputs_hash: str | None = None) -> _Setup:
    metadata = dict(base.metadata)
    own = calibrates_int8(job.format)  # LiteRT, OpenVINO: int8 made by the exporter, no adopted model
    mode = "static" if own else quantized.pt2e_mode if job.format == "executorch" else quantized.onnx_mode
    if job.precision == "int8" and mode:
        metadata["kdtool.quantization"] = mode
    floor = None if own else quantized.pt2e_floor if job.format == "executorch" else quantized.onnx_floor
    if job.precision == "int8" and floor:
        metadata.update(floor_metadata(floor))
    spec = dataclasses.replace(base, precision=job.precision, target=job.target, variant=job.variant,
                              metadata=metadata, quantized_program=quantized.pt2e,
                              quantized_onnx=quantized.onnx, dynamic_batch=job.batch is None, tag=job.tag,
                              inputs_hash=inputs_hash, calibration=quantized.calibration,
                              validation=quantized.validation, min_retention=quantized.min_retention)
    return _Setup(spec, job_example(job, example, inputs), floor if job.precision == "int8" else None,
                  _skip_reason(job, quantized))


def _start_lowering(jobs: list[Job], model: nn.Module, setups: list[_Setup]) -> Any:
    """Fork the child that builds the ExecuTorch jobs (`export.lowering`), or None to build all here."""
    from compress.core.native import debug
    from export.lowering import PARALLEL_FORMATS, Lowering, parallel_enabled

    ahead = [i for i, job in enumerate(jobs)
             if job.format in PARALLEL_FORMATS and job.variant is None and setups[i].skip is None]
    others = sum(1 for i, s in enumerate(setups) if s.skip is None and i not in ahead)
    if not parallel_enabled(len(ahead), others):
        return None

    def builder(i: int):
        exporter, setup = EXPORTERS.get(jobs[i].format)(), setups[i]
        return lambda folder: exporter.export(model, setup.example, folder, setup.spec)

    return Lowering({i: (builder(i), setups[i].spec) for i in ahead}, debug=debug())


def _export_one(job: Job, model: nn.Module, out_dir: Path, setup: _Setup, quantized: Quantized,
                inputs: torch.Tensor | None, verify: bool, width: Callable[[], int], cache: Any = None,
                built: Any = None) -> Artifact:
    """Export (or, with `built`, collect from the lowering child), verify, manifest, move into place.

    `width()` gives the runtimes' thread count at each step (and sets torch's)."""
    spec, example, floor = setup.spec, setup.example, setup.floor
    folder = out_dir / job.folder
    if setup.skip:
        return _placeholder(job, spec, folder, "skipped", setup.skip)
    t0 = time.perf_counter()
    try:
        with atomic_path(folder, is_dir=True) as tmp:
            if built is None:
                width()
                artifact = EXPORTERS.get(job.format)().export(model, example, tmp, spec)
                seconds = round(time.perf_counter() - t0, 2)
            else:
                artifact, seconds = built(tmp, spec)
            artifact = _update(artifact, info={**artifact.info, "export_s": seconds})
            if not artifact.info.get("dynamic_batch", True):  # the one batch size it runs at
                artifact = _update(artifact, info={**artifact.info, "batch": int(example.shape[0])})
            if floor:
                artifact = _update(artifact, info={**artifact.info, "accuracy_aware": floor})
            if verify:
                artifact = _verify(artifact, job, model, example, spec, quantized, inputs, width(), cache)
            if artifact.status == "failed":  # never shippable by mistake: *.failed.<ext>, the manifest says why
                artifact = _mark_failed(artifact)
            write_manifest(artifact, spec, example)
    except KdtoolError as e:
        return _placeholder(job, spec, folder, "failed", str(e))
    except Exception as e:  # a library bug in one format must not stop the others
        log.debug("exporter %s crashed", job.format, exc_info=True)
        return _placeholder(job, spec, folder, "failed", f"{type(e).__name__}: {first_line(e)}")
    return _relocate(artifact, tmp, folder)


def job_example(job: Job, example: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    """The example `job` is traced with: `example` for a dynamic batch, else `job.batch` real rows
    (from `inputs`, then `example`, repeated if there are fewer)."""
    if job.batch is None:
        return example
    pool = example if inputs is None else torch.cat([inputs, example])
    reps = -(-job.batch // len(pool))
    return pool.repeat(reps, *([1] * (pool.ndim - 1)))[:job.batch].clone()


def floor_metadata(floor: dict[str, Any]) -> dict[str, str]:
    """The accuracy-aware step's facts as artifact metadata (strings: ONNX and CoreML take no other)."""
    def text(value: Any) -> str:
        return "" if value is None else str(value)

    return {"kdtool.float_layers": ",".join(floor.get("float_modules") or []),
            "kdtool.int8_compute_share": text(floor.get("int8_compute_share")),
            "kdtool.retention_before": text(floor.get("retention_before")),
            "kdtool.retention_after": text(floor.get("retention_after"))}


def _verify(artifact: Artifact, job: Job, model: nn.Module, example: torch.Tensor, spec: ExportContext,
            quantized: Quantized, inputs: torch.Tensor | None, threads: int, cache: Any = None) -> Artifact:
    """Load in the runtime and check parity; int8 ExecuTorch is compared with its PT2E model."""
    reference = _reference(job, model, quantized)
    reference = cache.runnable(reference) if cache is not None else ReferenceCache().runnable(reference)
    try:
        parity = verify_artifact(artifact, reference, example, inputs=inputs, task=spec.task_spec or spec.task,
                                 threads=threads, targets=spec.parity_targets, student=model, cache=cache,
                                 int8_reference=reference is not model,
                                 student_decisions=quantized.pt2e_mode != "qat")
    except ExportError as e:
        parity = Parity(status="failed", reason=str(e))
    info = dict(artifact.info)
    if artifact.format == "onnx" and parity.status == "passed":
        from export.formats.onnx.runtime import node_placement

        info["node_placement"] = node_placement(artifact.path, example.numpy(), threads)
    status = "failed" if parity.status == "failed" else "ok"
    return _update(artifact, parity=parity, status=status,
                   reason=f"parity failed: {parity.reason}" if status == "failed" else None, info=info)


def _reference(job: Job, model: nn.Module, quantized: Quantized) -> Any:
    """What an artifact is compared with: int8 ExecuTorch its PT2E model, everything else the student."""
    return quantized.pt2e if (job.precision == "int8" and job.format == "executorch") else model


FAILED = "failed"
"""Infix of a failed artifact's files: `student_kd.int8.pte` → `student_kd.int8.failed.pte`."""


def failed_name(path: Path) -> Path:
    """The name a failed artifact's file is moved to (`model.onnx.data` → `model.failed.onnx.data`)."""
    path = Path(path)
    stem, _, exts = path.name.partition(".")
    rest = exts.split(".")
    # keep the name before the format's extension(s): student_kd.int8.pte → student_kd.int8.failed.pte
    known = {"pte", "onnx", "data", "mlpackage", "mlmodel", "pt", "ts", "engine", "so", "pt2", "tflite", "xml", "bin"}
    k = len(rest)
    while k > 0 and rest[k - 1] in known:
        k -= 1
    return path.with_name(".".join([stem, *rest[:k], FAILED, *rest[k:]]))


def _mark_failed(artifact: Artifact) -> Artifact:
    """Move a failed artifact's main file aside (`*.failed.*`) so nobody copies it to a device.

    Side files (an ONNX `.data`) keep their names: the model file refers to them by name, and
    they cannot run without it."""
    path = Path(artifact.path)
    if not path.exists():
        return artifact
    target = failed_name(path)
    path.rename(target)
    return _update(artifact, path=target, files=[target if Path(f) == path else f for f in artifact.files])


def calibrates_int8(fmt: str) -> bool:
    """Whether the format's exporter calibrates its own int8 on `Quantized.calibration` (its int8 quantizer
    lives in its format folder and adopts no model of the quantization stage)."""
    return bool(getattr(EXPORTERS.get(fmt), "calibrates_int8", False))


def _skip_reason(job: Job, quantized: Quantized) -> str | None:
    unavailable = getattr(EXPORTERS.get(job.format), "unavailable", None)
    reason = unavailable(job.precision) if unavailable else None
    if reason:  # an optional extra that is not installed: skipped with the install hint
        return reason
    if job.precision == "int8" and calibrates_int8(job.format) and quantized.calibration is None:
        return f"no calibration samples for {job.format} int8: export from a recipe (`kdtool export`)"
    if job.precision == "int8" and job.format == "executorch" and quantized.pt2e is None:
        return f"no PT2E-quantized model: run `{quantized.command} --mode static` (or qat) first"
    if job.precision == "int8" and job.format in ("onnx", "tensorrt") and quantized.onnx is None:
        return f"no ONNX Runtime–quantized .onnx: run `{quantized.command} --mode static` (or dynamic) first"
    if job.precision == "int8" and job.format == "tensorrt" and quantized.onnx_mode != "static":
        return f"TensorRT int8 needs the static (QDQ) ONNX model: run `{quantized.command} --mode static` first"
    if job.format == "tensorrt":
        from export.formats.tensorrt.exporter import unavailable_reason

        return unavailable_reason()
    return None


def _placeholder(job: Job, spec: ExportContext, folder: Path, status: str, reason: str) -> Artifact:
    runtime = EXPORTERS.get(job.format).runtime
    return Artifact(name=spec.artifact_name(job.format), format=job.format, precision=job.precision,
                    path=folder, runtime=runtime, target=job.target, status=status, reason=reason)


def _update(artifact: Artifact, **changes: Any) -> Artifact:
    return artifact.model_copy(update=changes)


def _relocate(artifact: Artifact, tmp: Path, folder: Path) -> Artifact:
    """Point the artifact's paths at the final folder (it was built in the atomic temporary)."""
    def move(p: Path) -> Path:
        return folder / Path(p).relative_to(tmp)

    return _update(artifact, path=move(artifact.path), files=[move(f) for f in artifact.files])


def summary_table(artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """Rows for the CLI table / report: name, status, size, parity numbers, delegation/quantized share."""
    rows = []
    for a in artifacts:
        p = a.parity
        rows.append({"name": a.name, "target": a.target, "status": a.status, "size_mb": a.size_mb,
                     "parity": p.status if p else None, "max_abs": p.max_abs if p else None,
                     "agreement": p.agreement if p else None,
                     "delegated": (a.info.get("delegation") or {}).get("share"),
                     "quantized_ops": (a.info.get("quantized") or {}).get("op_share"),
                     "reason": a.reason})
    return rows
