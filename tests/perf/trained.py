"""Briefly trained weights for the developer studies: a timm model that has learned a real signal.

Random-initialised weights are not a fair int8 (or latency-accuracy) test: their logits are
near-flat, so rounding decides every comparison. `briefly_trained` fits the model for a few dozen
AdamW steps on `compress.data.synthetic.generate_images` (classes are blob positions and gratings:
learnable, offline), at the size it will be exported at, and returns it in eval mode with its
BatchNorm statistics from training. It prints the steps' time and the last steps' train accuracy.
"""

from __future__ import annotations

import time

import torch

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def task_images(n: int, size: int, classes: int = 10, seed: int = 0, channels: int = 3) -> tuple[torch.Tensor,
                                                                                                 torch.Tensor]:
    """`n` class-structured images at `size` px, ImageNet-normalised, and their labels."""
    from compress.core.tasks import Task
    from compress.data.synthetic import generate_images

    kind = "binary" if classes == 2 else "multiclass"
    x, y = generate_images(Task(kind, classes), n, image_size=size, channels=channels, seed=seed)
    mean = torch.tensor(IMAGENET_MEAN[:channels]).view(1, channels, 1, 1)
    std = torch.tensor(IMAGENET_STD[:channels]).view(1, channels, 1, 1)
    return (x - mean) / std, y


def briefly_trained(model: torch.nn.Module, size: int, classes: int = 10, steps: int = 40, batch: int = 16,
                    lr: float = 2e-3, seed: int = 0, log: bool = True) -> torch.nn.Module:
    """Train `model` (classes outputs) for `steps` AdamW steps on generated images; returns it in eval mode."""
    torch.manual_seed(seed)
    pool = max(batch * 8, 128)
    x, y = task_images(pool, size, classes, seed=seed + 100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    model.train()
    start, hits, seen = time.perf_counter(), 0, 0
    for step in range(steps):
        idx = torch.randint(0, pool, (batch,))
        logits = model(x[idx])
        loss = torch.nn.functional.cross_entropy(logits, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scheduler.step()
        if step >= steps - 10:
            hits += int((logits.argmax(1) == y[idx]).sum())
            seen += batch
    model.eval()
    if log:
        print(f"  trained {type(model).__name__} {steps} steps x {batch} at {size} px in "
              f"{time.perf_counter() - start:.0f} s; last-10-step train accuracy {hits / max(seen, 1):.2f}",
              flush=True)
    return model
