"""kdtool's artifacts against plain-loop peers on real-size students, in one run, as a table.

    python -m tests.perf.peers              # resnet18, mobilenetv3_large_100 @224, mobilevitv2_050 @256
    python -m tests.perf.peers --models resnet18 --threads 2 --runs 30

For each model (timm, trained briefly at its size on generated images by `tests.perf.trained`, so
its logits have a realistic spread and int8 parity means something; training does not change
latency), batch-1 latency of:

- peers, written here as a user would without kdtool: eager PyTorch; ONNX Runtime fp32 of a
  static-shape `torch.onnx.export(dynamo=True)`; ONNX Runtime static int8 QDQ, S8S8 and U8S8
  (`quantize_static`, per-channel, min-max); ExecuTorch XNNPACK fp32 and PT2E int8 of a static
  batch-1 `torch.export` (`to_edge_transform_and_lower` + `XnnpackPartitioner`); LiteRT fp32 and
  int8 (litert-torch, its PT2E quantizer) and OpenVINO fp32 and int8 (NNCF) at batch 1, each run
  with its library's plain calls (`tests.perf.peer_runtimes`), where those extras are installed;
- kdtool: `quantize` (static, executorch and onnx backends) and `export_model` for the android and
  server targets' presets (android: ExecuTorch, ONNX and LiteRT; server: ONNX and OpenVINO; LiteRT
  and OpenVINO int8 calibrated on the same images), every artifact as kdtool writes it
  (`export.batch: auto`: a static batch of 1 for android, a dynamic batch for the server).

Every latency is the median of `--runs` timed calls, the same input, intra-op threads fixed. By
default (`--harness process`) each file is timed as a deployed app runs it: loaded alone in a fresh
process (`tests.perf.time_process`), `WARMUP` calls discarded, then a share of the timed calls; the
runners take turns over `ROUNDS` rounds of fresh processes, so a slow spell of the machine falls on
peers and kdtool alike. `--harness in-process` is the former harness, every session alive in this
process and taking turns `BLOCK` calls at a time (`interleaved_medians`): the idle threads of the
other runtimes' pools keep spinning there and slow the timed one (ONNX Runtime int8 about 2x), which
`python -m tests.perf.harness_check` shows side by side. The last column of the summary is kdtool's
recommended artifact (the fastest kdtool artifact whose parity passed) over the fastest peer:
<= 1.0 means kdtool is not slower.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from tests.perf import results

MODELS = {"resnet18": 224, "mobilenetv3_large_100": 224, "mobilevitv2_050": 256}
CALIBRATION = 32
VALIDATION = 96
PARITY = 64
"""Held-out images the export's parity runs on (`export.parity_samples`' default; not calibration images)."""
WARMUP = 10
BLOCK = 5
ROUNDS = 3
"""Fresh processes per file in the default harness; each times a share of `--runs` calls."""

Runner = Callable[[np.ndarray], object]


def build(name: str, size: int, steps: int) -> torch.nn.Module:
    """A timm model (seeded init) trained `steps` AdamW steps at `size` px (`tests.perf.trained`)."""
    import timm

    from tests.perf.trained import briefly_trained

    torch.manual_seed(0)
    return briefly_trained(timm.create_model(name, pretrained=False, num_classes=10), size, steps=steps)


def images(n: int, size: int) -> torch.Tensor:
    """Class-structured synthetic RGB images, ImageNet-normalised (other samples than training's)."""
    from tests.perf.trained import task_images

    return task_images(n, size, seed=0)[0]


def interleaved_medians(runs_by_label: dict[str, Runner], x: np.ndarray, runs: int) -> dict[str, float]:
    """Median wall time (ms) of each runner over `runs` calls, timed in rounds that take turns.

    Every runner gets WARMUP discarded calls first; then each round gives each runner one untimed call
    (another runtime's idle threads may still be spinning) and BLOCK timed ones, until `runs` are
    timed. Taking turns spreads a slow spell of a noisy machine over all runners alike, so their
    ratios stay meaningful where timing one runner after the other charges it to whichever ran then.
    """
    for run in runs_by_label.values():
        for _ in range(WARMUP):
            run(x)
    times: dict[str, list[float]] = {label: [] for label in runs_by_label}
    while any(len(ts) < runs for ts in times.values()):
        for label, run in runs_by_label.items():
            run(x)
            for _ in range(min(BLOCK, runs - len(times[label]))):
                t = time.perf_counter()
                run(x)
                times[label].append((time.perf_counter() - t) * 1e3)
    return {label: statistics.median(ts) for label, ts in times.items()}


def process_medians(files: dict[str, tuple[str, Path]], x: np.ndarray, runs: int, threads: int,
                    rounds: int = ROUNDS) -> tuple[dict[str, float], dict[str, str]]:
    """Median ms of each (who, file), timed in fresh processes taking turns; and OpenVINO peers' precision.

    Round r starts one `tests.perf.time_process` child per file in turn; each loads its file alone,
    discards `WARMUP` calls and times its share of `runs`. An eager PyTorch runner is a `.pt` file
    holding the whole module.
    """
    with tempfile.TemporaryDirectory(prefix="kdtool-peers-x-") as tmp:
        inp = Path(tmp) / "x.npy"
        np.save(inp, x)
        times: dict[str, list[float]] = {label: [] for label in files}
        precisions: dict[str, str] = {}
        for r in range(rounds):
            share = runs // rounds + (r < runs % rounds)
            for label, (who, path) in files.items():
                cmd = [sys.executable, "-m", "tests.perf.time_process", "--who", who, "--path", str(path),
                       "--input", str(inp), "--threads", str(threads), "--warmup", str(WARMUP), "--runs", str(share)]
                done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
                if done.returncode != 0:
                    raise RuntimeError(f"timing {label} ({path.name}) failed: {done.stderr.strip().splitlines()[-1:]}")
                out = json.loads(done.stdout.strip().splitlines()[-1])
                times[label] += out["ms"]
                if out["precision"]:
                    precisions[label] = out["precision"]
    return {label: statistics.median(ts) for label, ts in times.items()}, precisions


def ort_runner(path: Path, threads: int) -> Runner:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def pte_runner(path: Path, threads: int) -> Runner:
    """kdtool's ExecuTorch session (threadpool sized, program kept alive), timed on its method alone."""
    from export.formats import get_runtime

    method = get_runtime("executorch").load(path, threads).method
    return lambda x: method.execute([torch.from_numpy(x)])


RUNTIMES = ("executorch", "onnx", "litert", "openvino")
"""kdtool's formats in the study (timed in their runtimes)."""


def runner(who: str, path: Path, threads: int) -> tuple[Runner, str | None]:
    """The timed call for a file, by its suffix, and the inference precision a plain OpenVINO peer ran at.

    kdtool's LiteRT and OpenVINO files run in kdtool's sessions (as `kdtool benchmark` times them);
    the peers' in the plain calls of `tests.perf.peer_runtimes`."""
    from tests.perf.peer_runtimes import litert_runner, openvino_runner

    if path.suffix == ".pte":
        return pte_runner(path, threads), None
    if path.suffix == ".onnx":
        return ort_runner(path, threads), None
    if who == "peer":
        return (litert_runner(path, threads), None) if path.suffix == ".tflite" else openvino_runner(path, threads)
    from export.formats import get_runtime

    return get_runtime("litert" if path.suffix == ".tflite" else "openvino").load(path, threads).run, None


def peer_files(model: torch.nn.Module, x1: torch.Tensor, calib: torch.Tensor, out: Path) -> dict[str, Path | str]:
    """The plain peers' files: static-shape ONNX fp32/int8, ExecuTorch XNNPACK fp32/int8, and LiteRT and
    OpenVINO fp32/int8 where installed; a LiteRT or OpenVINO converter that fails the model gives its
    first line in place of the file (the row is kept, untimed)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    files = {"ORT fp32": out / "peer.fp32.onnx"}
    torch.onnx.export(copy.deepcopy(model), (x1,), dynamo=True, input_names=["input"]).save(
        str(files["ORT fp32"]), external_data=False)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calib.split(1))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x.numpy()}

    for name, act, reduce in (("ORT int8 S8S8", QuantType.QInt8, False), ("ORT int8 U8S8", QuantType.QUInt8, True)):
        files[name] = out / f"peer.{name[-4:].lower()}.onnx"
        quantize_static(str(files["ORT fp32"]), str(files[name]), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=act, weight_type=QuantType.QInt8, reduce_range=reduce)
    graph = torch.export.export(model, (x1,)).module()
    prepared = prepare_pt2e(graph, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(True)))
    with torch.no_grad():
        for x in calib.split(1):  # the peer's graph is static at batch 1
            prepared(x)
    for name, module in (("ExecuTorch fp32", model), ("ExecuTorch int8", convert_pt2e(prepared))):
        program = to_edge_transform_and_lower(torch.export.export(module, (x1,)),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
        files[name] = out / f"peer.{name.split()[1]}.pte"
        files[name].write_bytes(program.buffer)
    from export.extras import importable
    from export.registry import first_line
    from tests.perf.peer_runtimes import litert_files, openvino_files

    for runtime, make, packages in (("LiteRT", litert_files, ("litert_torch", "ai_edge_litert")),
                                    ("OpenVINO", openvino_files, ("openvino", "nncf"))):
        if all(importable(p) for p in packages):
            try:
                files.update(make(model, x1, calib, out))
            except Exception as e:  # the converter cannot take this model: a user would stop here too
                reason = f"{runtime} conversion failed: {first_line(e)}"
                files.update({f"{runtime} fp32": reason, f"{runtime} int8": reason})
    return files


def kdtool_artifacts(model: torch.nn.Module, calib: torch.Tensor, out: Path, threads: int) -> list:
    """kdtool's static int8 (executorch, onnx) and its android + server artifacts, as the pipeline makes them.

    Static int8 goes through the accuracy-aware step as `kdtool quantize` does (`quantize.min_retention`
    0.99 of the fp32 accuracy on `VALIDATION` held-out labelled images); the export's parity runs on
    `PARITY` of those images, as `kdtool export` does on validation samples.
    """
    import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
    from compress.core.tasks import Task
    from compress.quant.accuracy import quantize_with_floor
    from compress.quant.configs import QuantInputs
    from compress.quant.quantize import Int8StaticConfig
    from export.registry import ExportContext
    from export.run import Quantized, export_model
    from tests.perf.trained import task_images

    loader = [(calib[i:i + 8], torch.zeros(len(calib[i:i + 8]), dtype=torch.long)) for i in range(0, len(calib), 8)]
    val_x, val_y = task_images(VALIDATION, calib.shape[-1], seed=3)
    validation = [(val_x[i:i + 16], val_y[i:i + 16], torch.arange(i, min(i + 16, len(val_x))))
                  for i in range(0, len(val_x), 16)]
    example = calib[:2]
    task = Task("multiclass", 10)
    with torch.no_grad():
        logits = torch.cat([model(val_x[i:i + 16]) for i in range(0, len(val_x), 16)])
    top2 = logits.topk(2, 1).values
    print(f"  held-out accuracy {float((logits.argmax(1) == val_y).float().mean()):.3f} on {len(val_y)} images, "
          f"median top-2 margin {float((top2[:, 0] - top2[:, 1]).median() / logits.abs().max()):.3f} x output scale",
          flush=True)
    et, onnx = (quantize_with_floor(model, Int8StaticConfig(backend=backend, calibration_samples=len(calib),
                                                            min_retention=0.99),
                                    QuantInputs(example=example, calibration=loader, out=out / f"q_{backend}"),
                                    validation, task)[0] for backend in ("executorch", "onnx"))
    quantized = Quantized(pt2e=et.program, onnx=onnx.path, pt2e_mode="static", onnx_mode="static",
                          pt2e_floor=et.meta.get("accuracy_aware"), onnx_floor=onnx.meta.get("accuracy_aware"),
                          calibration=calib, validation=(val_x, val_y), min_retention=0.99)
    return export_model(model, example, out / "export", targets=["android", "server"], quantized=quantized,
                        inputs=val_x[:PARITY], threads=threads, spec=ExportContext(task_spec=task))


def bench_model(name: str, size: int, threads: int, runs: int, steps: int,
                harness: str = "process") -> list[tuple[str, str, float | None, str]]:
    """Rows (who, artifact, median ms, note) for one model, every runner timed in the same rounds."""
    torch.set_num_threads(threads)
    calib = images(CALIBRATION, size)
    model = build(name, size, steps)
    x1 = calib[:1]
    x = x1.numpy()

    def eager(a: np.ndarray) -> object:
        with torch.no_grad():
            return model(torch.from_numpy(a))

    files: list[tuple[str, str, Path | None, str]] = []  # who, label, file (None: not timed), note
    with tempfile.TemporaryDirectory(prefix="kdtool-peers-") as tmp:
        for label, path in peer_files(model, x1, calib, Path(tmp)).items():
            if isinstance(path, str):
                files.append(("peer", label, None, path))
                continue
            size = sum(f.stat().st_size for f in (path, path.with_suffix(".bin")) if f.exists())  # OpenVINO: .xml+.bin
            files.append(("peer", label, path, f"{size / 1e6:.1f} MB"))
        for artifact in kdtool_artifacts(model, calib, Path(tmp), threads):
            label = f"{artifact.name} [{artifact.target}]"
            if artifact.status != "ok" or artifact.format not in RUNTIMES:
                files.append(("kdtool", label, None, artifact.reason or f"{artifact.format}: not timed here"))
                continue
            if not artifact.info.get("dynamic_batch") and artifact.info.get("batch") not in (None, 1):
                files.append(("kdtool", label, None, f"static batch {artifact.info.get('batch')}: not timed at 1"))
                continue
            parity = artifact.parity.status if artifact.parity else "n/a"
            batch = "dynamic" if artifact.info.get("dynamic_batch") else f"static {artifact.info.get('batch')}"
            floats = (artifact.info.get("accuracy_aware") or {}).get("float_modules")
            float_layers = (artifact.info.get("quantized") or {}).get("float_layers")
            note = (f"parity {parity}, batch {batch}, "
                    f"delegate subgraphs {artifact.info.get('delegation', {}).get('subgraphs', '-')}"
                    + (f", float: {', '.join(floats)}" if floats else "")
                    + (f", float layers in {float_layers}" if float_layers else ""))
            files.append(("kdtool", label, artifact.path, note))
        if harness == "process":
            torch.save(model, Path(tmp) / "eager.pt")
            timed = {"eager": ("peer", Path(tmp) / "eager.pt")}
            timed |= {label: (who, path) for who, label, path, _ in files if path is not None}
            ms, precisions = process_medians(timed, x, runs, threads)
        else:
            # Loaded only now, all at one threadpool size: kdtool's export resizes ExecuTorch's process-wide
            # XNNPACK pool (one thread fewer while it lowers in a child), and a program loaded before
            # a resize ran at about half speed after it (ResNet-18 peer 39.4 ms vs kdtool's same file kind 21.8).
            torch.set_num_threads(threads)
            runners: dict[str, Runner] = {"eager": eager}
            precisions = {}
            for who, label, path, _ in files:
                if path is not None:
                    runners[label], precision = runner(who, path, threads)
                    if precision:
                        precisions[label] = precision
            ms = interleaved_medians(runners, x, runs)
        files = [(who, label, path, f"{note}, runs {precisions[label]}" if label in precisions else note)
                 for who, label, path, note in files]
    return [("peer", "eager", ms["eager"], "")] + [(who, label, ms.get(label), note) for who, label, _, note in files]


def main() -> None:
    """Parse arguments, benchmark each model, print one table per model and the summary ratios."""
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--steps", type=int, default=200, help="training steps (fresh batch of 16 each) before timing")
    parser.add_argument("--harness", choices=("process", "in-process"), default="process",
                        help="time each file in a fresh process of its own (default), or all in this one")
    args = parser.parse_args()
    console = Console()
    console.print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
                  f"torch {torch.__version__}; batch 1, median of {args.runs} after {WARMUP} warm-up")
    summary = Table(title="kdtool recommended / fastest peer")
    for col in ("model", "fastest peer", "ms", "kdtool pick", "ms", "ratio"):
        summary.add_column(col)
    records = []
    for name in args.models.split(","):
        size = MODELS.get(name, 224)
        rows = bench_model(name, size, args.threads, args.runs, args.steps, args.harness)
        records += [(name, size, who, label, None if ms is None else round(ms, 2), note)
                    for who, label, ms, note in rows]
        table = Table(title=f"{name} @ {size}")
        for col in ("who", "artifact", "median ms", "note"):
            table.add_column(col)
        for who, label, ms, note in rows:
            table.add_row(who, label, "-" if ms is None else f"{ms:.2f}", note)
        console.print(table)
        peers = [r for r in rows if r[0] == "peer" and r[2] is not None]
        ours = [r for r in rows if r[0] == "kdtool" and r[2] is not None and "parity passed" in r[3]]
        best_peer = min(peers, key=lambda r: r[2])
        if ours:
            pick = min(ours, key=lambda r: r[2])
            summary.add_row(name, best_peer[1], f"{best_peer[2]:.2f}", pick[1], f"{pick[2]:.2f}",
                            f"{pick[2] / best_peer[2]:.2f}")
            records.append((name, size, "kdtool pick / fastest peer", f"{pick[1]} / {best_peer[1]}",
                            round(pick[2] / best_peer[2], 2), "ratio"))
        else:
            summary.add_row(name, best_peer[1], f"{best_peer[2]:.2f}", "none passed parity", "-", "-")
        # written after every model, so a run stopped part-way keeps the models it finished
        results.write("peers", ("model", "size", "who", "artifact", "median_ms", "note"), records,
                      note=f"batch 1, {args.threads} intra-op threads, median of {args.runs} calls after {WARMUP} "
                           + (f"warm-up, each file alone in a fresh process, {ROUNDS} rounds taking turns"
                              if args.harness == "process" else "warm-up, all sessions in one process taking turns"))
    console.print(summary)


if __name__ == "__main__":
    main()
