"""Teacher-output cache: teacher outputs computed once per sample and recorded augmented view.

With random augmentation, the teacher must see the same view as the student. So the cache
records `views` augmentation draws per sample (flip/crop/shift parameters, like FKD/ReLabel)
with the teacher's outputs for each; at training time each sample picks one of its recorded
views, the student gets that exact view, and the teacher is never run. Outputs are stored in
fp16 (or fp32), optionally only the top-k logits plus the log-sum-exp of the rest, which is
spread evenly over the dropped classes so the softmax mass at T=1 is preserved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from compress.atomic import atomic_path, read_json, sha256_json, write_json
from compress.data import apply_augment, augment_batch, make_loader
from compress.models import BuiltModel
from compress.progress import task_progress


@dataclass
class TeacherCache:
    """Recorded views and teacher outputs for every training sample."""

    params: torch.Tensor  # (N, V, 3) long: augmentation parameters per sample and view
    outputs: torch.Tensor  # (N, V, C) fp16/fp32, or top-k values when `indices` is set
    indices: torch.Tensor | None  # (N, V, k) long, top-k only
    rest_lse: torch.Tensor | None  # (N, V) logsumexp of the dropped logits, top-k only
    num_outputs: int
    data_cfg: object

    @classmethod
    def build(cls, teacher: BuiltModel, train_ds, data_cfg, cfg, folder: Path, seed: int = 0,
              batch_size: int = 256) -> TeacherCache:
        """Compute (or reuse from `folder`) the teacher outputs for `cfg.views` views of every sample."""
        key = sha256_json({"teacher": sha256_json({k: float(v.float().sum()) for k, v in
                                                   teacher.module.state_dict().items()}),
                           "n": len(train_ds), "views": cfg.views, "dtype": cfg.dtype, "top_k": cfg.top_k,
                           "augment": data_cfg.augment.model_dump(), "seed": seed})
        meta_path, tensor_path = folder / "cache.json", folder / "cache.safetensors"
        if meta_path.exists() and tensor_path.exists() and read_json(meta_path).get("key") == key:
            t = load_file(str(tensor_path))
            return cls(t["params"], t["outputs"], t.get("indices"), t.get("rest_lse"),
                       read_json(meta_path)["num_outputs"], data_cfg)
        teacher.module.eval()
        augmenting = data_cfg.augment.hflip or data_cfg.augment.crop_pad > 0 or data_cfg.augment.time_shift > 0
        views = cfg.views if augmenting else 1
        all_params, all_out = [], []
        with task_progress("teacher cache", views * math.ceil(len(train_ds) / batch_size)) as bar, torch.no_grad():
            for v in range(views):
                gen = torch.Generator().manual_seed(seed * 7919 + v)
                view_params, view_out = [], []
                for raw, _, _ in make_loader(train_ds, batch_size, shuffle=False, seed=seed):
                    aug, p = augment_batch(raw, data_cfg, gen) if augmenting else (raw, torch.zeros(len(raw), 3,
                                                                                                dtype=torch.long))
                    out = teacher.module(teacher.preprocess(aug))
                    view_out.append((out[0] if isinstance(out, tuple) else out).float())
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

    def lookup(self, raw: torch.Tensor, index: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick a recorded view per sample: (the raw batch augmented that way, the teacher's outputs)."""
        views = torch.randint(0, self.params.shape[1], (len(index),), generator=gen)
        params = self.params[index, views]
        out = self.outputs[index, views].float()
        if self.indices is not None:
            k = self.indices.shape[-1]
            fill = (self.rest_lse[index, views] - math.log(self.num_outputs - k)).unsqueeze(-1)
            full = fill.expand(-1, self.num_outputs).clone()
            out = full.scatter_(-1, self.indices[index, views], out)
        return apply_augment(raw, params, self.data_cfg), out
