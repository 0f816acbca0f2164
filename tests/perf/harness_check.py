"""Why the peers study times each file in a process of its own: one int8 file, timed five ways.

    python -m tests.perf.harness_check                 # ResNet-18 @ 224, ONNX Runtime U8S8 int8
    python -m tests.perf.harness_check --runs 60

The file is what the peers study's `ORT int8 U8S8` peer is: timm ResNet-18 (seeded init; latency
does not depend on training) at 224 px, 3 channels, static QDQ U8S8 per-channel (`reduce_range`),
2 intra-op threads, batch 1. Its median latency is measured:

1. alone in a fresh process (`tests.perf.time_process`: what a deployed app sees, and what the
   peers study does by default);
2. in this process, its session the only one alive;
3. in this process, taking turns (5 calls each per round, the former harness) with eager PyTorch;
4. ... with the other runtimes' sessions alive and taking turns: ONNX Runtime fp32, ExecuTorch
   XNNPACK fp32, and LiteRT and OpenVINO fp32 where installed;
5. as 4, but every ONNX Runtime session made with `session.intra_op.allow_spinning = 0`.

Writes `docs/benchmarks/results/peers_harness-<cpu kind>.csv`, rendered into docs/benchmarks/peers_harness.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.perf import peers
from tests.perf.results import write


def ort_session(path: Path, threads: int, spin: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    import timm

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    calib = peers.images(peers.CALIBRATION, 224)
    x1 = calib[:1]
    x = x1.numpy()
    with tempfile.TemporaryDirectory(prefix="kdtool-harness-") as tmp:
        files = peers.peer_files(model, x1, calib, Path(tmp))
        int8 = files["ORT int8 U8S8"]
        others = {label: path for label, path in files.items()
                  if label in ("ORT fp32", "ExecuTorch fp32", "LiteRT fp32", "OpenVINO fp32")}
        rows = []

        def row(setting: str, ms: float, alive: str) -> None:
            rows.append((setting, round(ms, 2), alive))
            print(f"{setting:<58} {ms:7.2f} ms   ({alive})", flush=True)

        fresh, _ = peers.process_medians({"int8": ("peer", int8)}, x, args.runs, args.threads)
        row("fresh process, alone", fresh["int8"], "ORT int8 only")
        alone = ort_session(int8, args.threads, spin=True)
        row("this process, alone", peers.interleaved_medians({"int8": alone}, x, args.runs)["int8"], "ORT int8 only")

        def eager(a: np.ndarray) -> object:
            with torch.no_grad():
                return model(torch.from_numpy(a))

        row("this process, taking turns with eager PyTorch",
            peers.interleaved_medians({"int8": alone, "eager": eager}, x, args.runs)["int8"], "ORT int8, eager")
        for spin in (True, False):
            runners = {"int8": ort_session(int8, args.threads, spin), "eager": eager}
            for label, path in others.items():
                runners[label] = (ort_session(path, args.threads, spin) if path.suffix == ".onnx"
                                  else peers.runner("peer", path, args.threads)[0])
            ms = peers.interleaved_medians(runners, x, args.runs)["int8"]
            row("this process, taking turns with every runtime" + ("" if spin else ", ORT spinning off"), ms,
                ", ".join(["ORT int8", "eager", *others]))
            del runners
    write("peers_harness", ("setting", "ort_int8_u8s8_ms", "sessions alive"), rows,
          note=f"timm resnet18 @224 (3 channels, seeded init), static QDQ U8S8 per-channel, batch 1, {args.threads} "
               f"intra-op threads, median of {args.runs} calls after {peers.WARMUP} warm-up")


if __name__ == "__main__":
    main()
