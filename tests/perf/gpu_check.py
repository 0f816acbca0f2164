"""The GPU check (issue #18): CUDA training with AMP, DDP over NCCL, TensorRT and CUDA latency, one JSON.

    python -m tests.perf.gpu_check OUT               # on a CUDA machine (tests/perf/gpu_check.sh wraps it)
    python -m tests.perf.gpu_check OUT --cpu-smoke   # the same driver on the CPU, tiny settings (a test runs it)

Writes `OUT/gpu_check.json` after every part (a run stopped by its time limit keeps what it
measured), the GPU tests' JUnit XML beside it, and the run folders under `--work` (default OUT;
on the lent machine a folder outside $OUT, whose file count comes back limited). The parts:

1. `environment`: versions (None = not installed), GPUs, CUDA, NCCL, ONNX Runtime providers.
2. `gpu_tests`: `pytest -m gpu` (AMP steps, CUDA latency, TensorRT export, DDP over NCCL).
3. `quickstart_fp16`: `kdtool run` on the quickstart with every training stage forced onto CUDA
   (`train.device=cuda`: an error, not a silent CPU run, without a GPU) and `train.amp=fp16`
   (GradScaler); static ONNX int8 with symmetric int8 activations (`quantize.onnx_activations=int8`,
   what TensorRT takes); server artifacts onnx + tensorrt fp16, so TensorRT is a card row with
   parity and latency. Then `quickstart_bf16`: `kdtool distill` with `train.amp=bf16`.
4. `ddp`: `tests/perf/gpu_ddp.py` under `torchrun --nproc-per-node 2` (NCCL on CUDA) against one
   process: losses within 1e-5 relative, equal validation metrics.
5. `tensorrt`: the student's fp16 and int8 (from the Q/DQ `.onnx`) engines: parity and latency;
   the Q/DQ structure TensorRT would read is recorded on any machine.
6. `onnxruntime_gpu`: the fp32 ONNX on ONNX Runtime's CUDA / TensorRT providers where present.
7. `cuda_latency`: eager teacher and student on the GPU (fp32, fp16), batch 1 and 64, by
   `benchmark.latency.measure(device="cuda")`, cross-checked with `torch.utils.benchmark`.

Without CUDA (and without --cpu-smoke) it stops at once: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tests.perf import gpu_parts

ROOT = gpu_parts.ROOT
EXIT_BAD_INPUT = 2


@dataclass(frozen=True)
class Settings:
    """What one check runs: the GPU's full settings, or --cpu-smoke's tiny ones."""

    device: str = "cuda"
    overrides: tuple[str, ...] = ()
    ddp_limit: int = 512
    ddp_epochs: int = 3
    batches: tuple[int, ...] = (1, 64)
    warmup: int = 20
    min_runs: int = 200
    min_time_s: float = 1.0
    gpu_tests: bool = True
    stage_timeout_s: int = 300
    notes: list[str] = field(default_factory=list)


TINY = ("data.limit=160", "teacher.train.epochs=1", "student.train.epochs=1", "distill.train.epochs=1",
        "quantize.calibration_samples=32", "export.parity_samples=8", "benchmark.min_runs=3",
        "benchmark.min_time_s=0", "benchmark.warmup=1")


def settings_for(cpu_smoke: bool) -> Settings:
    """The GPU settings, or the same parts on the CPU with tiny data, epochs and timing."""
    if not cpu_smoke:
        return Settings()
    return Settings(device="cpu", overrides=TINY, ddp_limit=64, ddp_epochs=1, batches=(1,), warmup=1, min_runs=3,
                    min_time_s=0.0, gpu_tests=False, stage_timeout_s=600,  # a shared 2-core CI box is slow
                    notes=["--cpu-smoke: CPU, tiny data and epochs; numbers check the plumbing, not the GPU"])


def quickstart_overrides(amp: str, settings: Settings) -> list[str]:
    """`--set` values: every training stage on `settings.device` with `amp`, TensorRT-ready int8, server artifacts."""
    sets = [f"{stage}.train.{key}={value}" for stage in ("teacher", "student", "distill")
            for key, value in (("device", settings.device), ("amp", amp))]
    sets += ["quantize.modes=[static]", "quantize.backends={static: [onnx]}", "quantize.onnx_activations=int8",
             "export.targets=[server]", "export.formats=[onnx,tensorrt]"]
    return sets + list(settings.overrides)


def kdtool(verb: str, out: Path, overrides: list[str], timeout: int) -> dict[str, Any]:
    """Run `kdtool.py VERB` on the quickstart in a subprocess; its exit code, seconds and last error line."""
    cmd = [sys.executable, str(ROOT / "kdtool.py"), verb, "--out", str(out)]
    for value in overrides:
        cmd += ["--set", value]
    env = {**os.environ, "KDTOOL_QUIET": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    result = {"command": " ".join(["kdtool", verb, *cmd[3:]]), "exit_code": done.returncode,
              "seconds": round(time.perf_counter() - t0, 1)}
    if done.returncode != 0:
        result.update(status="failed", reason=(done.stderr.strip() or done.stdout.strip())[-400:])
    return result


def training_record(run: Path) -> dict[str, Any]:
    """Best metrics per training stage, and the fp16 GradScaler's final scale where one ran."""
    from safetensors import safe_open

    from compress.distill.checkpoint import STATE_KEY

    record = {}
    for stage in ("teacher", "student_baseline", "student_kd"):
        meta = run / stage / "meta.json"
        if not meta.exists():
            continue
        entry = {"metrics": json.loads(meta.read_text()).get("metrics")}
        last = run / stage / "last.safetensors"
        if last.exists():
            with safe_open(str(last), "pt") as f:
                state = json.loads(f.metadata()[STATE_KEY])
            entry["grad_scaler_scale"] = (state.get("grad_scaler") or {}).get("scale")
        record[stage] = entry
    return record


def card_rows(run: Path) -> list[dict[str, Any]]:
    """The report card's rows, cut to what the check is about (status, parity, latency, metric)."""
    report = run / "report" / "report.json"
    if not report.exists():
        return []
    keep = ("name", "format", "precision", "runtime", "status", "reason", "latency_ms", "metrics", "parity")
    return [{k: row.get(k) for k in keep} for row in json.loads(report.read_text())["rows"]]


def quickstart(out: Path, amp: str, settings: Settings) -> dict[str, Any]:
    """`kdtool run` (fp16: every stage) or `kdtool distill` (bf16) with the GPU overrides."""
    verb = "run" if amp == "fp16" else "distill"
    result = kdtool(verb, out / f"runs_{amp}", quickstart_overrides(amp, settings), settings.stage_timeout_s)
    run = out / f"runs_{amp}" / "quickstart"
    result["training"] = training_record(run)
    if verb == "run":
        result["card"] = card_rows(run)
    result.setdefault("status", "ok")
    return result


def load_run(out: Path, settings: Settings):
    """The fp16 run's context, teacher, student, an example batch, 64 real student inputs, the teacher's."""
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.data.loader import example_batch
    from recipes.load import load_recipe

    recipe, _, _ = load_recipe(None, quickstart_overrides("fp16", settings))
    ctx = Context(recipe, RunFolder.for_recipe(out / "runs_fp16", recipe.name))
    student, teacher = ctx.load("student_kd"), ctx.load("teacher")
    raw = example_batch(ctx.datasets[1], 64)
    inputs = student.preprocess(raw)
    return ctx, teacher, student, inputs[:2], inputs, teacher.preprocess(raw)


def artifacts(out: Path, work: Path, settings: Settings, summary: dict[str, Any]) -> None:
    """TensorRT engines, ONNX Runtime GPU providers and eager CUDA latency of the fp16 run's models."""
    ctx, teacher, student, example, inputs, teacher_inputs = load_run(work, settings)
    qdq = next(iter(sorted(ctx.run.stage("quantized").glob("static/onnx/*int8*.onnx"))), None)
    fp32 = next(iter(sorted(ctx.run.stage("export").glob("server/onnx/fp32/*.onnx"))), None)
    parts = {"tensorrt": lambda: gpu_parts.tensorrt_engines(student, example, inputs, qdq, work / "tensorrt",
                                                             ctx.task.kind, settings),
             "onnxruntime_gpu": lambda: gpu_parts.onnxruntime_gpu(fp32, student, inputs, settings),
             "cuda_latency": lambda: gpu_parts.cuda_latency(
                 {"teacher": (teacher, teacher_inputs), "student_kd": (student, inputs)}, settings.device, settings)}
    for name, part in parts.items():
        step(summary, name, part, out)


def pytest_gpu(out: Path, settings: Settings) -> dict[str, Any]:
    """`pytest -m gpu` over the tests; pass/fail/skip counts from its JUnit XML."""
    if not settings.gpu_tests:
        return gpu_parts.skipped("--cpu-smoke: the GPU tests only skip on the CPU")
    import xml.etree.ElementTree as ET

    xml = out / "gpu_tests.xml"
    # -n 0: in one process, so the CUDA latency tests do not share the GPU with another pytest worker
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "gpu", f"--junitxml={xml}", "tests"]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=settings.stage_timeout_s)
    suite = ET.parse(xml).getroot().find("testsuite") if xml.exists() else None
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} if suite is not None else {}
    return {"status": "ok" if done.returncode == 0 else "failed", "exit_code": done.returncode, **counts,
            "tail": done.stdout.strip()[-600:]}


def step(summary: dict[str, Any], name: str, part, out: Path) -> None:
    """Run one part, record its section (a crash becomes a failed section), rewrite the JSON."""
    t0 = time.perf_counter()
    try:
        section = part()
    except Exception as e:  # one part failing must not lose the others' numbers
        section = {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[-400:]}"}
    section["part_seconds"] = round(time.perf_counter() - t0, 1)
    summary["parts"][name] = section
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    """Run every part into OUT/gpu_check.json; exit 2 when CUDA is needed and absent, 1 when a part failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder for gpu_check.json and the run folders")
    parser.add_argument("--cpu-smoke", action="store_true", help="same driver on the CPU with tiny settings")
    parser.add_argument("--work", type=Path, help="folder for the run folders (default OUT)")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA device (built for CUDA "
              f"{torch.version.cuda or 'none'}); run it on a GPU machine or pass --cpu-smoke", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings = settings_for(args.cpu_smoke)
    out = args.out.resolve()
    work = (args.work or out).resolve()
    for folder in (out, work):
        folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"schema": "kdtool.gpu_check/1", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                         time.gmtime()),
                               "settings": asdict(settings), "parts": {}}
    step(summary, "environment", gpu_parts.environment, out)
    step(summary, "gpu_tests", lambda: pytest_gpu(out, settings), out)
    step(summary, "quickstart_fp16", lambda: quickstart(work, "fp16", settings), out)
    step(summary, "quickstart_bf16", lambda: quickstart(work, "bf16", settings), out)
    step(summary, "ddp", lambda: gpu_parts.ddp_compare(work, 2, settings.ddp_limit, settings.ddp_epochs), out)
    if summary["parts"]["quickstart_fp16"]["status"] == "ok":
        artifacts(out, work, settings, summary)
    statuses = {name: part["status"] for name, part in summary["parts"].items()}
    print(json.dumps(statuses))
    return 1 if "failed" in statuses.values() else 0


if __name__ == "__main__":
    sys.exit(main())
