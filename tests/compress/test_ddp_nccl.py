"""DDP over NCCL: 2 GPU processes train like 1 GPU process on the same global batch (needs 2 GPUs).

The CUDA twin of `test_ddp.py`'s "plain" case (no BatchNorm, so only float summation order
differs): cuDNN deterministic and TF32 off in every process, losses within 1e-5 relative,
equal validation metrics, every rank ending with the same weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file
from test_ddp import EPOCHS, GLOBAL_BATCH, _free_port, _train

from compress.distill.checkpoint import save_weights

WORLD = 2
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < WORLD, reason="NCCL needs one GPU per rank: 2 GPUs")]


def _exact_cuda() -> None:
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def _worker(rank: int, port: int, out: str) -> None:
    """A torchrun-like rank on GPU `rank`: the trainer joins NCCL because CUDA is present."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "KDTOOL_QUIET": "1"})
    _exact_cuda()
    import torch.distributed as dist

    from compress.distill import distributed

    result, module = _train("plain", Path(out) / "ddp", GLOBAL_BATCH // WORLD)
    backend = dist.get_backend()
    save_weights(module, Path(out) / f"rank{rank}.safetensors")
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({"backend": backend, "history": result.history}))
    distributed.teardown()


def test_nccl_two_processes_train_like_one(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    _exact_cuda()
    one, module = _train("plain", tmp_path / "single", GLOBAL_BATCH)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert {r["backend"] for r in ranks} == {"nccl"}
    assert len(ranks[0]["history"]) == len(one.history) == EPOCHS
    for d, s in zip(ranks[0]["history"], one.history, strict=True):
        for key in s:
            if key.startswith("loss_"):
                assert d[key] == pytest.approx(s[key], rel=1e-5), key
            elif key.startswith("val_"):
                assert d[key] == pytest.approx(s[key], abs=1e-6), key
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    diff = max((w0[k] - v.cpu()).abs().max().item() for k, v in module.state_dict().items())
    assert diff < 1e-4
