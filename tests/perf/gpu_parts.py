"""The measured parts of the GPU check (`tests/perf/gpu_check.py`): each returns one JSON-ready section.

Every section has a `status` ("ok", "skipped" or "failed") and, unless ok, a `reason`. A part that
cannot run on this machine (no TensorRT, one GPU for a 2-rank NCCL run, a CPU-only ONNX Runtime)
says so instead of being left out, and nothing is ever filled in by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "tensorrt",
            "pydantic", "typer", "rich", "torchmetrics", "safetensors", "numpy", "executorch", "coremltools",
            "torchao")


def skipped(reason: str, **extra: Any) -> dict[str, Any]:
    """A section for a part that did not run here, with why."""
    return {"status": "skipped", "reason": reason, **extra}


def environment() -> dict[str, Any]:
    """Python, package versions (None when absent), CUDA and the GPUs torch sees, ONNX Runtime providers."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        providers = []
    return {"status": "ok", "python": sys.version.split()[0], "versions": versions, "cuda_available": cuda,
            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpus": gpus, "nccl": _nccl_version() if cuda else None,
            "onnxruntime_providers": providers, "cpu_count": os.cpu_count()}


def _nccl_version() -> str | None:
    """NCCL's version as torch reports it (a tuple in recent torch, an int in older ones), or None."""
    try:
        version = torch.cuda.nccl.version()
    except Exception:  # a torch built without NCCL
        return None
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def _ddp_run(out: Path, ranks: int, limit: int, epochs: int, timeout: int) -> dict[str, Any]:
    """`tests.perf.gpu_ddp` alone (ranks 0) or under torchrun with `ranks` processes; its record."""
    cmd = [sys.executable, "-m", "tests.perf.gpu_ddp", str(out), "--limit", str(limit), "--epochs", str(epochs)]
    if ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
               "-m", "tests.perf.gpu_ddp", str(out), "--limit", str(limit), "--epochs", str(epochs)]
    env = {**os.environ, "KDTOOL_QUIET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[2:5])} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return json.loads((out / "history.json").read_text())


def ddp_compare(out: Path, ranks: int, limit: int, epochs: int, timeout: int = 240) -> dict[str, Any]:
    """Train the same BatchNorm-free net with `ranks` DDP processes and with one; compare losses and metrics.

    Passes when every epoch's losses agree within 1e-5 relative (float summation order is all that
    differs) and the validation metrics are equal, as `tests/compress/test_ddp.py` requires on CPU.
    """
    gpus = torch.cuda.device_count()
    if torch.cuda.is_available() and gpus < ranks:
        return skipped(f"NCCL needs one GPU per rank: {ranks} ranks, {gpus} GPU here "
                       "(a lent multi-GPU machine runs this part)", gpus=gpus)
    multi = _ddp_run(out / f"ddp{ranks}", ranks, limit, epochs, timeout)
    one = _ddp_run(out / "ddp1", 0, limit, epochs, timeout)
    worst_loss, metrics_equal = 0.0, True
    for d, s in zip(multi["history"], one["history"], strict=True):
        for key, value in s.items():
            if key.startswith("loss_"):
                worst_loss = max(worst_loss, abs(d[key] - value) / max(abs(value), 1e-12))
            elif key.startswith("val_"):
                metrics_equal &= abs(d[key] - value) <= 1e-6
    passed = worst_loss <= 1e-5 and metrics_equal
    last = {k: v for k, v in one["history"][-1].items() if k.startswith("val_")}
    return {"status": "ok" if passed else "failed", "reason": None if passed else "DDP and 1 process differ",
            "backend": multi["backend"], "world": multi["world"], "device": multi["device"],
            "max_rel_loss_diff": worst_loss, "val_metrics_equal": metrics_equal, "val_one_process": last,
            "val_ddp": {k: v for k, v in multi["history"][-1].items() if k.startswith("val_")}}


def qdq_structure(onnx_path: Path) -> dict[str, Any]:
    """What TensorRT would read in a Q/DQ `.onnx`: node counts, int8 types, zero points, its verdict."""
    import onnx

    from export.formats.tensorrt.exporter import int8_problem

    proto = onnx.load(str(onnx_path), load_external_data=False)
    ops = [n.op_type for n in proto.graph.node]
    return {"quantize_nodes": ops.count("QuantizeLinear"), "dequantize_nodes": ops.count("DequantizeLinear"),
            "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "tensorrt_int8_problem": int8_problem(onnx_path)}


def latency_section(run, samples: list[np.ndarray], device: str, settings) -> dict[str, Any]:
    """p50/p90/p99 of `run` by kdtool's protocol on `device`, per batch size in `settings.batches`."""
    from benchmark.latency import measure

    out = {}
    for batch in settings.batches:
        stats = measure(run, samples, warmup=settings.warmup, min_runs=settings.min_runs,
                        min_time_s=settings.min_time_s, threads=1, batch=batch, device=device)
        out[f"batch{batch}"] = {k: round(getattr(stats, k), 4) for k in ("p50", "p90", "p99", "mean", "min")}
        out[f"batch{batch}"]["runs"] = stats.runs
    return out


def tensorrt_engines(student, example: torch.Tensor, inputs: torch.Tensor, qdq_onnx: Path | None, out: Path,
                     task: str, settings) -> dict[str, Any]:
    """fp16 and int8 (from the symmetric Q/DQ `.onnx`) engines of the student: parity and latency.

    The ONNX they are built from is checked here on any machine; the engines only where TensorRT
    and CUDA are (else skipped with the exporter's own reason).
    """
    from export.formats.tensorrt.exporter import TensorRTExporter, unavailable_reason
    from export.registry import ExportContext
    from export.verify import verify_artifact

    section: dict[str, Any] = {"qdq_onnx": qdq_structure(qdq_onnx) if qdq_onnx else None}
    reason = unavailable_reason()
    if reason:
        return {**section, **skipped(reason)}
    from export.formats import get_runtime

    section["status"] = "ok"
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    for precision in ("fp16", "int8"):
        ctx = ExportContext(name="student_kd", precision=precision, task=task, quantized_onnx=qdq_onnx)
        folder = out / precision
        folder.mkdir(parents=True, exist_ok=True)
        try:
            artifact = TensorRTExporter().export(student.module, example, folder, ctx)
            parity = verify_artifact(artifact, student.module, example, inputs=inputs, task=task)
            session = get_runtime("tensorrt").load(artifact.path, 1)
            section[precision] = {"status": "ok", "parity": parity.model_dump(), "info": artifact.info,
                                  "latency_ms": latency_section(session, samples, "cpu", settings)}
        except Exception as e:  # one precision failing must not hide the other
            section[precision] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
            section["status"] = "failed"
    return section


def onnxruntime_gpu(onnx_fp32: Path | None, student, inputs: torch.Tensor, settings) -> dict[str, Any]:
    """The student's fp32 ONNX on ONNX Runtime's CUDA and TensorRT providers: parity with torch, latency."""
    import onnxruntime as ort

    if onnx_fp32 is None:
        return skipped("no fp32 .onnx in the run folder")
    have = ort.get_available_providers()
    section: dict[str, Any] = {"status": "ok", "available": have}
    with torch.no_grad():
        reference = student.module.cpu()(inputs).numpy()
    samples = [x.unsqueeze(0).numpy() for x in inputs]
    for provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider"):
        if provider not in have:
            section[provider] = skipped(f"this onnxruntime ({ort.__version__}) has no {provider} "
                                        "(onnxruntime-gpu is a separate package)")
            continue
        try:
            session = ort.InferenceSession(str(onnx_fp32), providers=[provider, "CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            outputs = session.run(None, {name: inputs.numpy()})[0]
            section[provider] = {"status": "ok", "providers_used": session.get_providers(),
                                 "max_abs_vs_torch": float(np.abs(outputs - reference).max()),
                                 "latency_ms": latency_section(lambda x, s=session, n=name: s.run(None, {n: x}),
                                                               samples, "cpu", settings)}
        except Exception as e:
            section[provider] = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:300]}"}
    return section


def cuda_latency(models: dict[str, tuple[Any, torch.Tensor]], device: str, settings) -> dict[str, Any]:
    """Eager PyTorch latency of each model on `device`, fp32 and fp16, with a blocked_autorange cross-check.

    The protocol's numbers include the host→device copy of the batch and the copy back (what a
    caller waits for, like trtexec's "Latency"); the cross-check times the model alone on a batch
    already on the device.
    """
    from benchmark.latency import blocked_autorange_ms

    section: dict[str, Any] = {"status": "ok", "device": device}
    for name, (built, inputs) in models.items():  # each model with inputs made by its own preprocessing
        samples = [x.unsqueeze(0).numpy() for x in inputs]
        for dtype in (torch.float32, torch.float16):
            if dtype == torch.float16 and device == "cpu":
                continue  # fp16 eager on CPU is not a deployment path
            module = built.module.to(device=device, dtype=dtype).eval()

            def run(x: np.ndarray, m=module, d=dtype) -> np.ndarray:
                with torch.inference_mode():
                    return m(torch.from_numpy(x).to(device=device, dtype=d)).float().cpu().numpy()

            key = f"{name}.{str(dtype).removeprefix('torch.')}"
            section[key] = latency_section(run, samples, device, settings)
            staged = inputs[:1].to(device=device, dtype=dtype)
            with torch.inference_mode():
                section[key]["blocked_autorange_batch1_ms"] = round(
                    blocked_autorange_ms(lambda m=module, s=staged: m(s), settings.min_time_s or 0.05), 4)
            built.module.to(device="cpu", dtype=torch.float32)
    return section
