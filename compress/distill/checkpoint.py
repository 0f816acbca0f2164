"""kdtool's own checkpoints: safetensors for tensors + JSON for everything else. No pickle, ever.

A training state (`<tag>.safetensors` + `<tag>.json`) holds the model, the KD objective's
adapters, the optimizer moments, the scheduler, all RNG states and the epoch/step position, so
`--resume` replays an interrupted run exactly. The JSON part is also embedded in the safetensors
header: that one file, replaced atomically, is the state (a crash between the two writes cannot
pair new weights with an old position); `<tag>.json` is its readable copy.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from compress.core.atomic import atomic_path, json_text, read_json, write_json
from compress.core.errors import KdtoolError

log = logging.getLogger(__name__)

STATE_KEY = "kdtool.training_state"
"""safetensors metadata key holding a training state's JSON (position, optimizer scalars, RNG, ...)."""


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a module's state dict to a safetensors file atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def save_training_state(path_stem: Path, model: nn.Module, objective: nn.Module | None,
                        optimizer: torch.optim.Optimizer, scheduler: Any, meta: dict[str, Any],
                        scaler: Any = None, ema: nn.Module | None = None) -> None:
    """Save everything needed to resume exactly, in one atomically replaced safetensors file.

    `scaler`: the fp16 `torch.amp.GradScaler` (its loss scale and growth tracker), if training uses one.
    `ema`: the weight-averaged copy of the model (`train.ema_decay`), if any.

    The JSON record rides in the safetensors header (`STATE_KEY`) and is then copied to
    `<stem>.json` for people and tools; loading trusts the header, so the pair cannot disagree.
    """
    tensors: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        tensors[f"model.{k}"] = v.detach().contiguous().cpu()
    if objective is not None:
        for k, v in objective.state_dict().items():
            tensors[f"objective.{k}"] = v.detach().contiguous().cpu()
    if ema is not None:
        for k, v in ema.state_dict().items():
            tensors[f"ema.{k}"] = v.detach().contiguous().cpu()
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                opt_scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    record = dict(meta)
    record.update({
        "optimizer": {"param_groups": opt["param_groups"], "scalars": opt_scalars},
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {"python": _py_state_to_json(random.getstate()),
                "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
    })
    record = json.loads(json_text(record, indent=None))  # exactly what loading will see
    with atomic_path(path_stem.with_suffix(".safetensors")) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(record)})
    write_json(path_stem.with_suffix(".json"), record)


def load_training_state(path_stem: Path, model: nn.Module, objective: nn.Module | None,
                        optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any = None,
                        ema: nn.Module | None = None) -> dict[str, Any] | None:
    """Restore a training state written by `save_training_state`; None if there is none.

    Raises:
        KdtoolError: the state file is unreadable (e.g. damaged on disk), naming it and the way out.
    """
    json_path, tensor_path = path_stem.with_suffix(".json"), path_stem.with_suffix(".safetensors")
    if not tensor_path.exists():
        return None
    try:
        with safe_open(str(tensor_path), framework="pt") as f:
            embedded = (f.metadata() or {}).get(STATE_KEY)
        tensors = load_file(str(tensor_path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise KdtoolError(f"cannot resume: {tensor_path} is unreadable ({str(e).splitlines()[0][:120]})",
                          "rerun without --resume and with --force to restart this stage") from None
    if embedded is not None:
        meta = json.loads(embedded)
    elif not json_path.exists():
        return None
    else:  # a state saved before the JSON was embedded: the pair must match
        meta = read_json(json_path)
        if meta.get("tensors_bytes") != tensor_path.stat().st_size:
            raise KdtoolError(f"{tensor_path} does not match {json_path} (interrupted save?)",
                              "rerun without --resume and with --force to restart this stage")
    model.load_state_dict(_section(tensors, "model"))
    if objective is not None:
        objective.load_state_dict(_section(tensors, "objective"))
    if ema is not None:
        ema_state = _section(tensors, "ema")
        if not ema_state:
            raise KdtoolError(f"cannot resume: {tensor_path} has no EMA weights (saved without train.ema_decay)",
                              "rerun with the recipe the state was saved with, or with --force to restart")
        ema.load_state_dict(ema_state)
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for idx, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    if scheduler is not None and meta.get("scheduler") is not None:
        scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("grad_scaler"):
        scaler.load_state_dict(meta["grad_scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    random.setstate(_py_state_from_json(meta["rng"]["python"]))
    np_state = meta["rng"]["numpy"]
    np.random.set_state((np_state[0], np.array(np_state[1], dtype=np.uint32), *np_state[2:]))
    return meta


def load_objective_state(objective: nn.Module, path: Path) -> bool:
    """Load a KD objective's state (its adapters) from a training state file written by `save_training_state`.

    Used by QAT to start from the adapters distillation trained (those of the state's epoch, the
    last one). Nothing to load (an objective without state) counts as loaded.

    Returns:
        True when loaded; False, with a logged warning naming the reason, when the file is missing,
        unreadable or holds other adapters (names or shapes): the objective then keeps fresh ones.
    """
    wanted = objective.state_dict()
    if not wanted:
        return True
    saved, reason = _saved_objective_state(path)
    if reason is None:
        reason = _state_mismatch(saved, wanted)
    if reason is not None:
        log.warning("KD adapters not loaded from %s: %s; QAT starts from fresh adapters", path, reason)
        return False
    objective.load_state_dict(saved)
    return True


def _saved_objective_state(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The `objective.*` tensors of a training state file (prefix removed), or why there are none."""
    if not path.exists():
        return {}, "the file is missing"
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        return {}, f"the file is unreadable ({str(e).splitlines()[0][:120]})"
    return _section(tensors, "objective"), None


def _section(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The tensors saved under `<name>.` (model, objective, ema), with the prefix removed."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def _state_mismatch(saved: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> str | None:
    """Why `saved` cannot be loaded where `wanted` is expected (other names or shapes), or None."""
    missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
    if missing or extra:
        return f"it lacks {missing[:3]} and has {extra[:3]} (saved with other distill.terms?)"
    for key, value in wanted.items():
        if saved[key].shape != value.shape:
            return f"{key} is {tuple(saved[key].shape)} there, {tuple(value.shape)} here"
    return None


def _py_state_to_json(state: tuple) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_state_from_json(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])
