"""Quantization benchmark: every mode × backend on a digits student, in one run, as a rich table.

    python -m tests.perf.quantize_bench                  # resnet18, the quickstart student, mobilevitv2_050
    python -m tests.perf.quantize_bench --epochs 4 --no-hybrid

For each quantized model: artifact size (MB) and its ratio to the fp32 artifact of the same format,
accuracy on the digits validation split measured in the runtime that runs it, retention vs the fp32
student, top-1 agreement with fp32, and batch-1 latency vs fp32 *in the same runtime* (median, threads
fixed), and "container kB": the file's bytes that are not tensor data (graph, delegate blobs, names),
which int8 does not shrink. CoreML models are converted but cannot run on Linux: size only. The student is trained here
(no hub access); the QAT row distills from the fp32 student itself (the pipeline passes its teacher).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
from compress.core.atomic import size_on_disk_mb
from compress.core.tasks import Task, retention
from compress.data.loader import digits_source, make_loader
from compress.models.build import Preprocess, create_architecture
from compress.quant.common import program_size_mb
from compress.quant.evaluate import collect_outputs
from compress.quant.quantize import Int8DynamicConfig, Int8QATConfig, Int8StaticConfig, quantize
from tests.perf import results

TASK = Task("multiclass", 10)
THREADS = 2


def train_student(arch: str, size: int, epochs: int, train, kwargs: dict | None = None,
                  seed: int = 0) -> tuple[torch.nn.Module, Preprocess]:
    """A timm student on digits (AdamW + one-cycle), 1 channel, raw 32 px resized to `size`."""
    torch.manual_seed(seed)
    pre = Preprocess(kind="image", input_size=size, channels=1, mean=(0.5,), std=(0.5,))
    model = create_architecture(arch, 10, 1, kwargs or {}, pretrained=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * len(train))
    model.train()
    for _ in range(epochs):
        for raw, y, _ in train:
            loss = TASK.hard_loss(model(pre(raw)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval(), pre


def median_ms(fn, x, runs: int = 40, warmup: int = 5) -> float:
    """Median wall time (ms) of `fn(x)` over `runs` timed calls after `warmup` discarded ones."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_ms(module, x) -> float:
    """Median ms with torch.utils.benchmark (threads fixed)."""
    from torch.utils import benchmark

    timer = benchmark.Timer("m(x)", globals={"m": module, "x": x}, num_threads=THREADS)
    with torch.no_grad():
        return timer.blocked_autorange(min_run_time=1.0).median * 1e3


def tensor_data_mb(path: Path | None) -> float | None:
    """MB of tensor data (weights, scales, biases) in an artifact; the rest of the file is its container.

    .onnx: the initializers' bytes; .pte: named data plus the constant buffer (delegate blobs and
    the program are container); .mlpackage: weights/weight.bin. Written by hand: none of the
    runtimes reports it. Shows why a tiny model's file shrinks less than its weights.
    """
    if path is None:
        return None
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        proto = onnx.load(str(path))
        return sum(len(t.SerializeToString()) for t in proto.graph.initializer) / 1e6
    if path.suffix == ".pte":
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(path.read_bytes())
        named = sum(len(b) for b in pte.named_data.buffers) if pte.named_data else 0
        return (named + sum(len(b.storage) for b in pte.program.constant_buffer)) / 1e6
    if path.suffix == ".mlpackage":
        return sum(f.stat().st_size for f in path.rglob("weight.bin")) / 1e6
    return None


def lower_pte(module, x1, path: Path) -> Path:
    """torch.export (batch 1) → ExecuTorch with the XNNPACK partitioner → `.pte`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from export.formats.executorch.exporter import exact_floor_pooling

    program = torch.export.export(module, (x1,))
    exact_floor_pooling(program)  # as the exporter does: ceil-mode pools XNNPACK would refuse
    et = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(et.buffer)
    return path


def pte_runner(path: Path):
    """A batch-1 ExecuTorch method (kdtool's session: XNNPACK threadpool sized to THREADS)."""
    from export.formats import get_runtime

    method = get_runtime("executorch").load(path, THREADS).method
    return lambda x: method.execute([x.contiguous()])[0]


def per_sample(run):
    """Run a batch-1 runtime over a batch one sample at a time."""
    return lambda x: torch.cat([run(x[i:i + 1]) for i in range(len(x))])


def ort_runner(path: Path):
    from compress.core.onnxrt import ort_session

    session = ort_session(path, threads=THREADS)
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def bench_model(arch: str, size: int, epochs: int, calib: int, qat_epochs: int, work: Path, latency: bool,
                kwargs: dict | None = None, label: str | None = None):
    """Train the student, quantize it every way, and return the table rows."""
    cfg = SimpleNamespace(image_size=32, channels=1, val_fraction=0.2, limit=None)
    train_ds, val_ds = digits_source(cfg, TASK)
    train, val = make_loader(train_ds, 64, True, 0), make_loader(val_ds, 128, False, 0)
    t0 = time.time()
    student, pre = train_student(arch, size, epochs, train, kwargs)
    arch = label or arch
    print(f"[{arch}] trained {epochs} epochs in {time.time() - t0:.0f}s", flush=True)
    ref, targets = collect_outputs(student, val, pre)
    fp32_acc = TASK.metrics(ref, targets)["accuracy"]
    x1 = pre(val_ds.raw[:1])
    rows, base = [], {}

    def row(name, runtime, size_mb, fp32_mb, outs, ms, note="", path=None):
        acc = TASK.metrics(outs, targets)["accuracy"] if outs is not None else None
        data = tensor_data_mb(path)
        rows.append({"model": arch, "name": name, "runtime": runtime, "size_mb": size_mb,
                     "container_kb": (size_mb - data) * 1e3 if data is not None else None,
                     "ratio": fp32_mb / size_mb if fp32_mb and size_mb else None, "accuracy": acc,
                     "retention": retention("accuracy", acc, fp32_acc) if acc is not None else None,
                     "agreement": TASK.agreement(outs, ref) if outs is not None else None,
                     "ms": ms, "vs_fp32": ms / base[runtime] if ms and base.get(runtime) else None,
                     "note": note})

    # fp32 references, one per runtime
    d = work / arch / "fp32"
    d.mkdir(parents=True)
    pt2_mb = program_size_mb(student, pre(val_ds.raw[:2]), "fp32")
    base["torch"] = torch_ms(student, x1) if latency else None
    row("fp32", "torch", pt2_mb, pt2_mb, ref, base["torch"])
    pte = lower_pte(student, x1, d / "model.pte")
    run = pte_runner(pte)
    base["executorch"] = median_ms(run, x1) if latency else None
    row("fp32", "executorch", size_on_disk_mb(pte), size_on_disk_mb(pte),
        collect_outputs(per_sample(run), val, pre)[0], base["executorch"], path=pte)

    def measure(qm, config, name, note, out):
        if config.backend == "torch":
            row(name, "torch", qm.meta["size_mb"], qm.meta["fp32_size_mb"],
                collect_outputs(qm, val, pre)[0], torch_ms(qm.module, x1) if latency else None, note)
        elif config.backend == "executorch":
            pte = lower_pte(qm.module, x1, out / "model.pte")
            run = pte_runner(pte)
            row(name, "executorch", size_on_disk_mb(pte), size_on_disk_mb(d / "model.pte"),
                collect_outputs(per_sample(run), val, pre)[0], median_ms(run, x1) if latency else None, note,
                path=pte)
        elif config.backend == "onnx":
            fp32_onnx = out / "model.fp32.onnx"
            if "onnxruntime" not in base:
                base["onnxruntime"] = median_ms(ort_runner(fp32_onnx), x1) if latency else None
                row("fp32", "onnxruntime", size_on_disk_mb(fp32_onnx), size_on_disk_mb(fp32_onnx),
                    collect_outputs(ort_runner(fp32_onnx), val, pre)[0], base["onnxruntime"], path=fp32_onnx)
            run = ort_runner(qm.path)
            row(name, "onnxruntime", qm.meta["size_mb"], qm.meta["fp32_size_mb"],
                collect_outputs(run, val, pre)[0], median_ms(run, x1) if latency else None, note, path=qm.path)
        else:
            row(name, "coreml", qm.meta["size_mb"], qm.meta["fp32_size_mb"], None, None,
                note + ", no CoreML runtime on Linux", path=qm.path)

    jobs = [("dynamic", Int8DynamicConfig(backend="torch")),
            ("dynamic", Int8DynamicConfig(backend="executorch")),
            ("dynamic", Int8DynamicConfig(backend="onnx")),
            ("static", Int8StaticConfig(backend="executorch", calibration_samples=calib)),
            ("static", Int8StaticConfig(backend="onnx", calibration_samples=calib)),
            ("static", Int8StaticConfig(backend="coreml")),
            ("qat", Int8QATConfig(epochs=qat_epochs, lr=5e-5))]
    for mode, config in jobs:
        out = work / arch / mode / config.backend
        name = f"{mode}"
        t0 = time.time()
        try:
            extra = {}
            if mode == "qat":
                def kd(s, t, y):
                    kl = torch.nn.functional.kl_div((s / 4).log_softmax(-1), (t / 4).softmax(-1),
                                                    reduction="batchmean") * 16
                    return 0.5 * TASK.hard_loss(s, y) + 0.5 * kl
                extra = {"teacher": student, "teacher_preprocess": pre, "task": TASK, "loss_fn": kd}
            qm = quantize(student, config, calibration=train, preprocess=pre, out=out, **extra)
        except Exception as e:  # report, keep benchmarking the other rows
            rows.append({"model": arch, "name": name, "runtime": config.backend, "note": f"FAILED {e}"[:90]})
            continue
        note = f"int8 share {qm.meta['int8']['quantized_share']:.0%}, {time.time() - t0:.0f}s"
        try:
            measure(qm, config, name, note, out)
        except Exception as e:  # the runtime failed on a model quantize() made: show it, go on
            rows.append({"model": arch, "name": name, "runtime": config.backend,
                         "size_mb": qm.meta["size_mb"], "ratio": qm.meta["compression"],
                         "note": f"runtime FAILED: {str(e).splitlines()[0]}"[:90]})
        print(f"[{arch}] {mode}/{config.backend} done in {time.time() - t0:.0f}s", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    table = Table(title=f"INT8 quantization on digits (batch 1, {THREADS} threads, median latency)")
    for col in ("model", "mode", "runtime", "size MB", "× smaller", "container kB", "accuracy", "retention", "agree",
                "ms", "vs fp32", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["model"], r["name"], r["runtime"], f(r.get("size_mb"), ".3f"),
                      f(r.get("ratio"), ".2f"), f(r.get("container_kb"), ".0f"),
                      f(r.get("accuracy"), ".4f"), f(r.get("retention"), ".4f"), f(r.get("agreement"), ".4f"),
                      f(r.get("ms"), ".3f"), f(r.get("vs_fp32"), ".2f"), r.get("note", ""))
    Console(width=200).print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--calibration", type=int, default=256)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--no-hybrid", action="store_true", help="skip the mobilevitv2_050 run")
    p.add_argument("--no-tiny", action="store_true", help="skip the quickstart's 48 k-parameter student")
    p.add_argument("--hybrid-epochs", type=int, default=2)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(THREADS)
    measured = []
    with tempfile.TemporaryDirectory() as work:
        runs = [(args.arch, args.size, args.epochs, True, None, None)]
        if not args.no_tiny:  # the quickstart student: a file's container weighs on a 48 k model
            runs.append(("resnet10t", 32, args.epochs, True, {"channels": (4, 8, 16, 32)}, "resnet10t-48k"))
        if not args.no_hybrid:  # end to end only (no latency): does every mode run on a conv-transformer?
            runs.append(("mobilevitv2_050", 64, args.hybrid_epochs, False, None, None))
        for arch, size, epochs, latency, kwargs, label in runs:
            rows = bench_model(arch, size, epochs, args.calibration, args.qat_epochs, Path(work), latency,
                               kwargs, label)
            print_table(rows)
            measured += rows
    columns = ("model", "name", "runtime", "size_mb", "ratio", "container_kb", "accuracy", "retention", "agreement",
               "ms", "vs_fp32", "note")
    results.write("quantize_bench", columns,
                  [[round(v, 4) if isinstance(v, float) else v for v in (r.get(c) for c in columns)]
                   for r in measured], note=f"digits, batch 1, {THREADS} threads, median latency")


if __name__ == "__main__":
    main()
