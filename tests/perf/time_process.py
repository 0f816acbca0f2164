"""Time one model file in a process of its own, as a deployed app runs it.

    python -m tests.perf.time_process --who peer --path model.onnx --input x.npy --threads 2 --runs 20

The child side of `tests.perf.peers`' default harness: it loads one file (`.onnx`, `.pte`, `.tflite`,
OpenVINO `.xml`, or an eager PyTorch module saved whole with `torch.save` as `.pt`) in the runtime
`tests.perf.peers.runner` picks, sets its intra-op threads, discards `--warmup` calls and prints one
JSON line: the `--runs` timed calls in ms and the inference precision a plain OpenVINO peer ran at.

Why a process per file: with every runtime's session alive in one process, as the former in-process
harness had them, each library's idle worker threads keep spinning for a while after their call
(ONNX Runtime's intra-op pool, OpenMP's, XNNPACK's) and take the cores from the runtime being timed.
A deployed app loads one model in one runtime, so that is what the study times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def load(who: str, path: Path, threads: int):
    """The timed call and the inference precision (OpenVINO peers) of one file."""
    torch.set_num_threads(threads)
    if path.suffix == ".pt":
        model = torch.load(path, weights_only=False).eval()

        def eager(x: np.ndarray) -> object:
            with torch.no_grad():
                return model(torch.from_numpy(x))

        return eager, None
    from tests.perf.peers import runner

    return runner(who, path, threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--who", choices=("peer", "kdtool"), required=True)
    parser.add_argument("--path", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help=".npy batch the calls take")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    run, precision = load(args.who, args.path, args.threads)
    x = np.load(args.input)
    for _ in range(args.warmup):
        run(x)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"ms": times, "precision": precision}), flush=True)


if __name__ == "__main__":
    main()
