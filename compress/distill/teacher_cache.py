"""Teacher-output cache: teacher outputs computed once per sample and recorded augmented view.

With random augmentation, the teacher must see the same view as the student. So the cache
records `views` augmentation draws per sample (flip/crop/shift parameters, like FKD/ReLabel)
with the teacher's outputs for each; at training time each sample picks one of its recorded
views, the student gets that exact view, and the teacher is never run. Outputs are stored in
fp16 (or fp32), optionally only the top-k logits plus the log-sum-exp of the rest, which is
spread evenly over the dropped classes so the softmax mass at T=1 is preserved.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset

from compress.core.atomic import atomic_path, read_json, sha256_file, sha256_json, write_json
from compress.core.progress import task_progress
from compress.data.loader import apply_augment, augment_batch, make_loader
from compress.distill import distributed
from compress.models.build import BuiltModel
from recipes.schema import CacheConfig, DataConfig


@dataclass
class TeacherCache:
    """Recorded views and teacher outputs for every training sample."""

    params: torch.Tensor  # (N, V, 3) long: augmentation parameters per sample and view
    outputs: torch.Tensor  # (N, V, C) fp16/fp32, or top-k values when `indices` is set
    indices: torch.Tensor | None  # (N, V, k) long, top-k only
    rest_lse: torch.Tensor | None  # (N, V) logsumexp of the dropped logits, top-k only
    num_outputs: int
    data_cfg: DataConfig

    @classmethod
    def build(cls, teacher: BuiltModel, train_ds: Dataset, data_cfg: DataConfig, cfg: CacheConfig,
              folder: Path, seed: int = 0,
              batch_size: int | None = None) -> TeacherCache:
        """Compute (or reuse from `folder`) the teacher outputs for `cfg.views` views of every sample.

        The file is reused only when its key matches: the teacher's weights (bytes, not a summary)
        and preprocessing, the data section and a few samples, views, dtype, top-k and seed. Under
        DDP rank 0 builds it while the other ranks wait, then they read the file.

        `batch_size` defaults to the training batch (`data_cfg.batch_size`): the teacher already runs
        at that size in online KD, and big batches of big images are slower per image on CPU
        (EfficientNet-B4 at 380 px, 1 thread: ~0.5-0.7 s/image at batch 8, ~0.9 s at 32).
        """
        batch_size = batch_size or data_cfg.batch_size
        key = cache_key(teacher, train_ds, data_cfg, cfg, seed)
        distributed.setup()
        distributed.barrier()  # every rank has prepared its stage folder before rank 0 writes in it
        if distributed.is_main():
            cache = cls._load_or_build(teacher, train_ds, data_cfg, cfg, folder, seed, batch_size, key)
        distributed.barrier()
        if not distributed.is_main():
            cache = cls._load_or_build(teacher, train_ds, data_cfg, cfg, folder, seed, batch_size, key)
        return cache

    @classmethod
    def _load_or_build(cls, teacher: BuiltModel, train_ds: Dataset, data_cfg: DataConfig, cfg: CacheConfig,
                       folder: Path, seed: int,
                       batch_size: int, key: str) -> TeacherCache:
        meta_path, tensor_path = folder / "cache.json", folder / "cache.safetensors"
        if meta_path.exists() and tensor_path.exists() and read_json(meta_path).get("key") == key:
            t = load_file(str(tensor_path))
            return cls(t["params"], t["outputs"], t.get("indices"), t.get("rest_lse"),
                       read_json(meta_path)["num_outputs"], data_cfg)
        from compress.distill.distributed import device_for_training

        device = device_for_training()
        teacher.module.to(device).eval()
        a = data_cfg.augment
        augmenting = a.hflip or a.crop_pad > 0 or a.time_shift > 0
        views = cfg.views if augmenting else 1
        all_params, all_out = [], []
        total = views * math.ceil(len(train_ds) / batch_size)
        with task_progress("teacher cache", total) as bar, torch.no_grad():
            for v in range(views):
                gen = torch.Generator().manual_seed(seed * 7919 + v)
                view_params, view_out = [], []
                for raw, _, _ in make_loader(train_ds, batch_size, shuffle=False, seed=seed):
                    if augmenting:
                        aug, p = augment_batch(raw, data_cfg, gen)
                    else:
                        aug, p = raw, torch.zeros(len(raw), 3, dtype=torch.long)
                    out = teacher.module(teacher.preprocess(aug.to(device)))
                    view_out.append((out[0] if isinstance(out, tuple) else out).float().cpu())
                    view_params.append(p)
                    bar.advance()
                all_params.append(torch.cat(view_params))
                all_out.append(torch.cat(view_out))
        params = torch.stack(all_params, 1)  # (N, V, 3)
        logits = torch.stack(all_out, 1)  # (N, V, C)
        dtype = torch.float16 if cfg.dtype == "float16" else torch.float32
        indices = rest = None
        if cfg.top_k and cfg.top_k < logits.shape[-1]:
            values, indices = logits.topk(cfg.top_k, dim=-1)
            mask = torch.ones_like(logits, dtype=torch.bool).scatter_(-1, indices, False)
            rest = torch.where(mask, logits, torch.full_like(logits, -float("inf"))).logsumexp(-1)
            stored = values
        else:
            stored = logits
        tensors = {"params": params, "outputs": stored.to(dtype).contiguous()}
        if indices is not None:
            tensors.update({"indices": indices.contiguous(), "rest_lse": rest.contiguous()})
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(tensor_path) as tmp:
            save_file(tensors, str(tmp))
        write_json(meta_path, {"key": key, "num_outputs": logits.shape[-1], "views": views,
                               "bytes": tensor_path.stat().st_size})
        return cls(params, tensors["outputs"], indices, rest, logits.shape[-1], data_cfg)

    def lookup(self, raw: torch.Tensor, index: torch.Tensor, gen: torch.Generator,
               shard: tuple[int, int] = (0, 1)) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick a recorded view per sample: (the raw batch augmented that way, the teacher's outputs).

        Args:
            raw: the raw batch (N, ...) on CPU.
            index: the samples' dataset indices (N,).
            gen: the view draws' source (seeded per step by the trainer).
            shard: (rank, world size): draws are made for the global batch and sliced like
                `augment_batch` does, so N DDP processes pick the views one process would.
        """
        rank, world = shard
        views = torch.randint(0, self.params.shape[1], (len(index) * world,), generator=gen)[rank::world]
        params = self.params[index, views]
        out = self.outputs[index, views].float()
        if self.indices is not None:
            k = self.indices.shape[-1]
            fill = (self.rest_lse[index, views] - math.log(self.num_outputs - k)).unsqueeze(-1)
            full = fill.expand(-1, self.num_outputs).clone()
            out = full.scatter_(-1, self.indices[index, views], out)
        return apply_augment(raw, params, self.data_cfg), out


def teacher_fingerprint(module: nn.Module) -> str:
    """sha256 of a model's state (names, dtypes, shapes and bytes) and of its weights file, if any."""
    h = hashlib.sha256()
    for name, value in module.state_dict().items():
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(value.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    path = getattr(module, "path", None)  # an ONNX teacher: its weights live in the file
    if path is not None and Path(path).is_file():
        h.update(sha256_file(path).encode())
    return h.hexdigest()


def cache_key(teacher: BuiltModel, train_ds: Dataset, data_cfg: DataConfig, cfg: CacheConfig, seed: int) -> str:
    """What a cache file's outputs depend on; a stored file with another key is rebuilt."""
    n = len(train_ds)
    probes = sorted({0, n // 2, n - 1})
    h = hashlib.sha256()
    for i in probes:  # a cheap check that the samples behind the indices did not change
        raw, target, _ = train_ds[i]
        h.update(raw.detach().cpu().contiguous().numpy().tobytes())
        h.update(torch.as_tensor(target).detach().cpu().numpy().tobytes())
    data = data_cfg.model_dump(mode="json", exclude={"batch_size", "num_workers"})
    return sha256_json({"teacher": teacher_fingerprint(teacher.module),
                        "preprocess": teacher.preprocess.to_dict(), "data": data, "samples": h.hexdigest(),
                        "n": n, "views": cfg.views, "dtype": cfg.dtype, "top_k": cfg.top_k, "seed": seed})
