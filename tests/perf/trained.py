"""Briefly trained weights for the developer studies: a timm model that has learned a real signal.

Random-initialised weights are not a fair int8 (or latency-accuracy) test: their logits are
near-flat, so rounding decides every comparison. `briefly_trained` fits the model for a couple hundred
AdamW steps on `compress.data.synthetic.generate_images` (classes are blob positions and gratings:
learnable, offline), at the size it will be exported at, and returns it in eval mode with its
BatchNorm statistics from training. It prints the steps' time and the eval-mode accuracy on held-out
images (train-mode batch accuracy flattered memorised weights).
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


TRAIN_SEED = 1000
"""Training batches use seeds from here on, so they never repeat the studies' evaluation seeds (0-4)."""
HELD_OUT_SEED, HELD_OUT = 4, 64


def held_out_accuracy(model: torch.nn.Module, size: int, classes: int = 10, n: int = HELD_OUT) -> float:
    """Eval-mode top-1 accuracy of `model` on `n` generated images no training batch contains."""
    x, y = task_images(n, size, classes, seed=HELD_OUT_SEED)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + 16]) for i in range(0, n, 16)])
    model.train(was_training)
    return float((logits.argmax(1) == y).float().mean())


def briefly_trained(model: torch.nn.Module, size: int, classes: int = 10, steps: int = 200, batch: int = 16,
                    lr: float = 3e-3, seed: int = 0, log: bool = True) -> torch.nn.Module:
    """Train `model` (classes outputs) for `steps` AdamW steps on generated images; returns it in eval mode.

    Every step draws a fresh batch (seed `TRAIN_SEED + seed * steps + step`): a fixed pool of a hundred
    images is memorised instead (MobileNetV3-Large at 224, 60 steps from a 128-image pool: held-out
    accuracy 0.33; 200 fresh batches of 16 at lr 3e-3: 0.91 on 96 images).
    """
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        x, y = task_images(batch, size, classes, seed=TRAIN_SEED + seed * steps + step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optimizer.step()
        scheduler.step()
    model.eval()
    if log:
        print(f"  trained {type(model).__name__} {steps} steps x {batch} at {size} px in "
              f"{time.perf_counter() - start:.0f} s; held-out accuracy {held_out_accuracy(model, size, classes):.2f} "
              f"on {HELD_OUT} images", flush=True)
    return model
