"""Parity of any artifact against its PyTorch model, shared by every format.

Both run on the caller's real inputs plus seeded random inputs, at batch 1 and at a second batch
size when the batch axis is dynamic. Errors are measured against the reference's output scale
`s = max |reference output|`, so the same rule holds for logits of 0.01 and of 30:

| precision | pass when max_abs <= | and top-1 agreement >= (classifiers) |
|-----------|----------------------|--------------------------------------|
| fp32      | 1e-4 · s             | 0.99                                 |
| fp16      | 2e-2 · s             | 0.95                                 |
| int8      | 2.5e-1 · s           | 0.90                                 |

fp32 differences come only from kernel order (≈1e-6 · s); fp16 has a 10-bit mantissa; int8 is
compared with its own PT2E-simulated model where there is one (quantization error then largely
cancels), else with the fp32 model, so it gets the loosest bound and relies on agreement.
Regression outputs use `compress.core.tasks.Task.agreement` (1 − normalised MAE) instead of top-1.
A failure returns a `Parity` with status "failed" and the numbers; `require_passed` turns it into
an `ExportError` (exit 4) for callers that must stop.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from compress.core.errors import ExportError
from compress.core.tasks import Task
from export.artifact import Artifact, Parity

SECOND_BATCH = 4
RANDOM_SAMPLES = 8
SCALE_FLOOR = 1e-6


@dataclass(frozen=True)
class Tolerance:
    """Parity bounds of one precision (see the module table)."""

    rel: float
    min_agreement: float


TOLERANCES = {"fp32": Tolerance(1e-4, 0.99), "fp16": Tolerance(2e-2, 0.95), "int8": Tolerance(0.25, 0.90)}


def check_parity(run: Callable[[np.ndarray], np.ndarray], reference: Callable[[torch.Tensor], torch.Tensor],
                 example: torch.Tensor, precision: str = "fp32", *, inputs: torch.Tensor | None = None,
                 task: str = "multiclass", dynamic_batch: bool = True, random_samples: int = RANDOM_SAMPLES,
                 seed: int = 0, tolerance: Tolerance | None = None) -> Parity:
    """Compare `run` (an artifact's session) with `reference` (the PyTorch model) on the same inputs.

    Args:
        run: numpy batch → numpy output, e.g. `Session.run`.
        reference: the PyTorch model (fp32 student, or the PT2E-simulated int8 model).
        example: one input batch; its shape (beyond the batch axis) shapes the random inputs.
        precision: fp32, fp16 or int8: picks the tolerance.
        inputs: real model inputs (preprocessed), checked first; may be None.
        task: task kind for the agreement rule.
        dynamic_batch: also run at batch `SECOND_BATCH`; else only at the example's batch size.
        random_samples: seeded standard-normal samples added to the real ones (fp32/fp16; int8 with
            real inputs uses those alone).
        seed: seed of the random samples.
        tolerance: override the precision's `TOLERANCES` entry.

    Returns:
        Parity with status "passed" or "failed" and max_abs, max_rel (max_abs / s), agreement, atol.
    """
    tol = tolerance or TOLERANCES[precision]
    if precision == "int8" and inputs is not None:
        # static int8 is calibrated on the data's activation ranges: standard-normal noise lies outside
        # them by design, so int8 parity is judged on real samples only
        random_samples = 0
    samples = _samples(example, inputs, random_samples, seed)
    batches = sorted({1, SECOND_BATCH}) if dynamic_batch else [int(example.shape[0])]
    ref_batch = int(example.shape[0])  # PT2E references may be traced at the example's batch only
    with torch.inference_mode():
        def ref_run(x: np.ndarray) -> np.ndarray:
            return _as_tensor(reference(torch.from_numpy(x))).float().numpy()

        ref = torch.from_numpy(_run_batched(ref_run, samples.numpy(), ref_batch))
    outs = []
    try:
        for b in batches:
            outs.append(torch.from_numpy(np.asarray(_run_batched(run, samples.numpy(), b), dtype=np.float32)))
    except ExportError:
        raise
    except Exception as e:
        return Parity(status="failed", batches=batches, samples=len(samples),
                      reason=f"artifact failed to run: {str(e).splitlines()[0][:200]}")
    scale = max(float(ref.abs().max()), SCALE_FLOOR)
    max_abs = max(float((o.reshape(ref.shape) - ref).abs().max()) for o in outs)
    kind_task = Task(task, int(ref.shape[-1]) if ref.ndim > 1 else 1)
    agreement = min(kind_task.agreement(o.reshape(ref.shape), ref) for o in outs)
    atol = tol.rel * scale
    problems = []
    if not np.isfinite(max_abs) or max_abs > atol:
        problems.append(f"max_abs {max_abs:.3g} > atol {atol:.3g} "
                        f"({precision}: {tol.rel:g} x output scale {scale:.3g})")
    if agreement < tol.min_agreement:
        problems.append(f"agreement {agreement:.3f} < {tol.min_agreement}")
    if problems and precision == "int8":
        problems.extend(_flat_logits(ref, max_abs, task))
    return Parity(status="failed" if problems else "passed", max_abs=max_abs, max_rel=max_abs / scale,
                  agreement=agreement, atol=atol, batches=batches, samples=len(samples),
                  reason="; ".join(problems) or None)


def _flat_logits(ref: torch.Tensor, error: float, task: str) -> list[str]:
    """Say so when a classifier's fp32 decisions are closer than the int8 error (untrained weights).

    Random-initialised weights give near-flat logits: the median gap between the top two classes
    (binary: the logit's distance from 0) is then smaller than int8 rounding, so int8 flips decisions
    that carry no information. That is not a fair int8 test; the reason says it plainly. An error
    larger than the outputs themselves is a broken artifact, not rounding, and is not explained away.
    """
    if task not in ("binary", "multiclass") or ref.numel() == 0:
        return []
    logits = ref.reshape(ref.shape[0], -1)
    if logits.shape[1] == 1:
        margin = float(logits.abs().median())
    else:
        top = logits.topk(2, dim=1).values
        margin = float((top[:, 0] - top[:, 1]).median())
    if margin >= error or error > float(ref.abs().max()):  # an error beyond the outputs' own scale is a broken artifact
        return []
    return [f"the fp32 model's median decision margin {margin:.3g} is below the int8 error {error:.3g}: "
            "near-flat logits, as random-initialised or barely trained weights give, so int8 rounding flips "
            "decisions; judge int8 parity on trained weights"]


def verify_artifact(artifact: Artifact, reference: Callable[[torch.Tensor], torch.Tensor],
                    example: torch.Tensor, *, inputs: torch.Tensor | None = None, task: str = "multiclass",
                    threads: int = 1) -> Parity:
    """Load `artifact` in its runtime and check parity; "not verified on this OS" when it cannot run here.

    Raises:
        ExportError: the runtime exists here but cannot load the file (truncated, missing kernels).
    """
    from export.formats import get_runtime

    runtime = get_runtime(artifact.runtime)
    reason = runtime.available() or _delegate_missing(artifact)
    if reason:
        status = "not verified on this OS" if "macOS" in reason or "Apple" in reason else "not verified"
        return Parity(status=status, reason=f"{reason} (on {platform.system()})")
    session = runtime.load(artifact.path, threads)
    return check_parity(session.run, reference, example, artifact.precision, inputs=inputs, task=task,
                        dynamic_batch=bool(artifact.info.get("dynamic_batch", True)))


def require_passed(artifact: Artifact) -> None:
    """Raise ExportError (exit 4) with the numbers unless the artifact's parity passed."""
    p = artifact.parity
    if p is None or p.status != "passed":
        detail = p.reason if p else "no parity check ran"
        raise ExportError(f"{artifact.name}: parity {p.status if p else 'missing'}: {detail}",
                          "do not ship this artifact; try another format or precision")


def _delegate_missing(artifact: Artifact) -> str | None:
    """ExecuTorch programs lowered to CoreML run only where that delegate is built in (Apple OSes)."""
    if artifact.runtime == "executorch" and artifact.info.get("backend") == "CoreMLBackend":
        from export.formats.executorch.runtime import backend_registered

        if not backend_registered("CoreMLBackend"):
            return "the ExecuTorch CoreML delegate runs only on Apple OSes (iOS/macOS)"
    return None


def _samples(example: torch.Tensor, inputs: torch.Tensor | None, n_random: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rand = torch.randn((n_random, *example.shape[1:]), generator=gen, dtype=torch.float32)
    parts = [inputs.detach().float().cpu(), rand] if inputs is not None and len(inputs) else [rand]
    return torch.cat(parts)


def _run_batched(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    """Run in chunks of exactly `batch` (the last chunk padded by repeating rows, then trimmed)."""
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        outs.append(np.asarray(run(chunk))[:n])
    return np.concatenate(outs)


def _as_tensor(out: object) -> torch.Tensor:
    from export.formats.pytorch.runtime import first_output

    return first_output(out)
