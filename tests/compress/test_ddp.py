"""DDP: 2 Gloo processes on CPU train like 1 process on the same global batch.

Why the comparison is meaningful: the loop draws one sample permutation per (seed, epoch) for any
world size and rank r takes every 2nd sample, so global batch b (2 × 16) holds the same samples as
the single process's batch b (32); augmentation and cached-view draws are made for the global
batch and sliced per rank. DDP averages the ranks' gradients of their batch-mean losses, which is
the gradient of the 32-sample mean. So without BatchNorm (its statistics are per process) the runs
differ only by float summation order (measured: losses within 1.3e-7 relative, weights within
2e-6 after 24 AdamW steps at lr 0.05, same accuracies 0.30 → 0.70). We require losses within 1e-5
relative, weights within 1e-4 and equal validation metrics. With BatchNorm, 2 × 16-sample batch
statistics are not 32-sample ones (weights differ by ~0.4), so there we check what DDP promises:
every rank ends with rank 0's model (buffers broadcast each epoch) and the same validation record.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from kd_fixtures import (
    TASK,
    digits,
    distill_cfg,
    model_tensors,
    tiny_net,
    train_cfg,
    without_timing,
)
from safetensors.torch import load_file

from compress.distill.checkpoint import save_weights
from compress.distill.teacher_cache import TeacherCache
from compress.distill.trainer import fit

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT, GLOBAL_BATCH, WORLD, EPOCHS = 256, 32, 2, 3
CASES = ("plain", "cache", "batchnorm")


def _train(case: str, out: Path, batch_size: int):
    """One training run of `case`; the same code on 1 process or under DDP."""
    data_cfg, train, val = digits(LIMIT, crop_pad=2, batch_size=batch_size)
    teacher = cache = distill = None
    if case == "cache":
        teacher, distill = tiny_net(seed=7, width=12), distill_cfg(cache=True, views=2)
        cache = TeacherCache.build(teacher, train, data_cfg, distill.cache, out / "cache", seed=0)
    student = tiny_net(seed=1, batchnorm=case == "batchnorm")
    cfg = train_cfg(EPOCHS, lr=0.05, batch_size=batch_size, threads=1)  # one thread a process, as the workers
    result = fit(student, train, val, TASK, cfg, out / case, data_cfg=data_cfg, teacher=teacher,
                 distill=distill, teacher_cache=cache)
    return result, student.module


def _worker(rank: int, port: int, out: str) -> None:
    """A torchrun-like process: the environment torchrun would set, then the real `fit`."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo",
                       "KDTOOL_QUIET": "1", "CUDA_VISIBLE_DEVICES": ""})
    torch.set_num_threads(1)
    from compress.distill import distributed

    for case in CASES:
        result, module = _train(case, Path(out) / "ddp", GLOBAL_BATCH // WORLD)
        save_weights(module, Path(out) / f"{case}.rank{rank}.safetensors")
        (Path(out) / f"{case}.rank{rank}.json").write_text(json.dumps(result.history))
    distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    """Each case trained once by 2 DDP processes and once by this process, on the same global batch."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    single = {case: _train(case, out / "single", GLOBAL_BATCH) for case in CASES}
    return out, single


@pytest.mark.parametrize("case", ["plain", "cache"])
def test_two_processes_train_like_one_on_the_same_global_batch(runs, case):
    out, single = runs
    ddp_history = json.loads((out / f"{case}.rank0.json").read_text())
    one = single[case][0].history
    assert len(ddp_history) == len(one) == EPOCHS
    assert one[-1]["val_accuracy"] > 0.5  # it learns, so equal metrics mean something
    for d, s in zip(ddp_history, one, strict=True):
        for key in s:
            if key.startswith("loss_"):
                assert d[key] == pytest.approx(s[key], rel=1e-5), (key, d[key], s[key])
            elif key.startswith("val_") or key == "lr":
                assert d[key] == pytest.approx(s[key], abs=1e-6), key
    ddp_weights = load_file(str(out / f"{case}.rank0.safetensors"))
    diff = max((ddp_weights[k] - v).abs().max().item() for k, v in single[case][1].state_dict().items())
    assert diff < 1e-4, f"DDP vs 1 process: max |Δw| = {diff:.3g}"
    # rank 0 wrote the checkpoints; they hold the model rank 0 ended with
    saved = model_tensors(out / "ddp" / case)
    assert all(torch.equal(saved[k], v) for k, v in ddp_weights.items())


@pytest.mark.parametrize("case", CASES)
def test_every_rank_ends_with_one_model_and_one_val_record(runs, case):
    out, _ = runs
    w0, w1 = (load_file(str(out / f"{case}.rank{r}.safetensors")) for r in range(WORLD))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # BatchNorm buffers included
    h0, h1 = (json.loads((out / f"{case}.rank{r}.json").read_text()) for r in range(WORLD))
    assert h0 == h1 and all("val_accuracy" in r for r in h0)
    assert without_timing(h0)[-1]["epoch"] == EPOCHS
