"""One training run for the GPU check's DDP comparison, alone or as one torchrun rank.

    python -m tests.perf.gpu_ddp OUT [--limit 512 --epochs 3]                        # 1 process
    torchrun --nproc-per-node 2 -m tests.perf.gpu_ddp OUT [--limit 512 --epochs 3]    # 2 ranks (NCCL on CUDA)

The case is `tests/compress/test_ddp.py`'s "plain" one (a BatchNorm-free two-conv net on
scikit-learn's digits, AdamW at lr 0.05): with the same global batch (32), N ranks see the same
global batches as one process and DDP averages their gradients, so the runs differ only by float
summation order. cuDNN is made deterministic and TF32 is off, so that is all that differs on the
GPU too. Rank 0 writes `OUT/history.json` (backend, world size, device, per-epoch losses and
validation metrics) and `OUT/weights.safetensors`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "compress"))  # kd_fixtures, as pytest finds it

GLOBAL_BATCH = 32


def main(argv: list[str] | None = None) -> None:
    """Train once (alone or as this torchrun rank) and let rank 0 write the record."""
    from kd_fixtures import TASK, digits, tiny_net, train_cfg
    from safetensors.torch import save_file

    from compress.distill import distributed
    from compress.distill.trainer import fit

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    distributed.setup()
    world = distributed.world_size()
    data_cfg, train, val = digits(args.limit, crop_pad=2, batch_size=GLOBAL_BATCH // world)
    student = tiny_net(seed=1)
    result = fit(student, train, val, TASK, train_cfg(args.epochs, lr=0.05, batch_size=GLOBAL_BATCH // world),
                 args.out / "run", data_cfg=data_cfg)
    if distributed.is_main():
        backend = torch.distributed.get_backend() if distributed.active() else None
        device = str(next(student.module.parameters()).device)
        record = {"world": world, "backend": backend, "device": device, "history": result.history}
        (args.out / "history.json").write_text(json.dumps(record, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in student.module.state_dict().items()},
                  str(args.out / "weights.safetensors"))
    distributed.teardown()


if __name__ == "__main__":
    main()
