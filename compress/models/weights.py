"""Read checkpoints into models without running code: safetensors or torch files, common layouts, clear errors.

A torch file loads with `weights_only=True`; the state dict is found under the keys training scripts
use (`STATE_DICT_KEYS`) and wrapper prefixes are removed (`clean_state_dict`), as timm's
`load_checkpoint` does. Every failure is a `KdtoolError` naming the file and what to do.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.errors import KdtoolError


def need_file(path: Path | None, role: str) -> Path:
    """`path` as an existing, non-empty file, or a `KdtoolError` naming `{role}.checkpoint`."""
    if path is None:
        raise KdtoolError(f"{role}.checkpoint is required for this source", "name the model file")
    path = Path(path)
    if path.is_dir():
        raise KdtoolError(f"{role}.checkpoint {path} is a folder", "name the weights file inside it")
    if not path.is_file():
        raise KdtoolError(f"{role}.checkpoint {path} does not exist", "check the path")
    if path.stat().st_size == 0:
        raise KdtoolError(f"{role}.checkpoint {path} is empty (0 bytes)", "re-download or re-save it")
    return path


def read_state_dict(path: str | Path, role: str = "model") -> dict[str, torch.Tensor]:
    """Read a state dict from safetensors or a torch file, never executing code.

    Accepts `.safetensors`, and `.pt/.pth/.tar/.bin` files holding a state dict directly or in one
    of the common layouts (`_find_state_dict`); wrapper prefixes are removed (`clean_state_dict`).
    Torch files load with `weights_only=True`: a pickle that tries to run code is refused.
    """
    path = need_file(Path(path), role)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise KdtoolError(f"{role}.checkpoint {path} is not a valid safetensors file ({e})",
                              "re-save it with safetensors.torch.save_file") from e
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, UnicodeDecodeError, IndexError, KeyError) as e:
            # random bytes fail as any of these: 368 / 3 / 26 / 3 of 400 seeded 4 kB samples
            raise _refused(path, role, str(e)) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
            raise KdtoolError(f"{role}.checkpoint {path} is not a readable torch checkpoint "
                              f"({_why_unreadable(e)})",
                              "the file may be truncated or corrupt; re-download or re-save it") from None
        state = _find_state_dict(obj, path, role)
    return clean_state_dict(state)


def _refused(path: Path, role: str, reason: str) -> KdtoolError:
    """The error for a file the weights-only unpickler refused: name the object it would import, if any."""
    found = re.search(r"GLOBAL ([\w.]+)", reason)
    name = found.group(1) if found else _first_code_reference(path)
    if name is None:
        return KdtoolError(f"{role}.checkpoint {path} is not a torch checkpoint (neither a torch zip "
                           "archive nor a readable pickle)",
                           "the file may be corrupt or of another format; re-download it")
    return KdtoolError(f"{role}.checkpoint {path} was refused: it references {name}, which a weights-only "
                       "load does not allow (a pickle that imports callables can run code); nothing in it "
                       "was run", "kdtool never runs code from checkpoints; re-save only the tensors: "
                       "torch.save(model.state_dict(), ...) or safetensors")


_SAFE_MODULES = ("torch", "collections")
"""Modules whose globals a plain state-dict pickle references (tensor rebuilders, OrderedDict)."""
_STRING_OPS = ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING")


def _first_code_reference(path: Path) -> str | None:
    """The first global (`module.name`) a pickle imports that is not a tensor rebuilder; nothing is run.

    `pickletools.genops` only decodes opcodes: nothing is imported or called. Torch zip archives
    keep the pickle in `<archive>/data.pkl`.
    """
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                data = zf.read(member) if member else b""
        else:
            data = path.read_bytes()
        strings: list[str | None] = []  # string operands, for STACK_GLOBAL (module, name)
        memo: dict[int, str | None] = {}
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            name = None
            if op.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            elif op.name in _STRING_OPS:
                strings.append(str(arg))
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo[len(memo) if op.name == "MEMOIZE" else int(arg)] = strings[-1] if strings else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                strings.append(memo.get(int(arg)))
            if name is not None and name.split(".")[0] not in _SAFE_MODULES:
                return name
    except Exception:  # noqa: BLE001  (not a pickle at all: the caller says so)
        return None
    return None


def _why_unreadable(e: BaseException) -> str:
    """A short reason for an unreadable torch file (torch's own messages run to several lines)."""
    text = str(e)
    if "central directory" in text or isinstance(e, (EOFError, zipfile.BadZipFile)):
        return "truncated or corrupt archive"
    return text.splitlines()[0][:160] if text else type(e).__name__


STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "ema", "state_dict", "model", "model_state_dict",
                   "network", "net", "student", "teacher")
"""Keys a training script saves its weights under, in the order they are tried. As timm's
`load_checkpoint` does, EMA weights come first: they are the ones a run with EMA validated."""

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes DDP/DataParallel (`module.`) and torch.compile (`_orig_mod.`) add, in either order."""


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes from every key, as timm's `clean_state_dict` does.

    `model.` (PyTorch Lightning's and many trainers' attribute name) is removed only when every key
    has it, since a model may own a submodule named `model`.
    """
    cleaned = {}
    for key, value in state.items():
        while key.startswith(WRAPPER_PREFIXES):
            key = next(key.removeprefix(p) for p in WRAPPER_PREFIXES if key.startswith(p))
        cleaned[key] = value
    if cleaned and all(k.startswith("model.") for k in cleaned):
        cleaned = {k.removeprefix("model."): v for k, v in cleaned.items()}
    return cleaned


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: Path, role: str, depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, one of `STATE_DICT_KEYS`, or the one
    nested dict of tensors it holds (e.g. `{'epoch': 3, 'weights': {...}}`)."""
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, dict) and depth < 3:
        for key in STATE_DICT_KEYS:
            if isinstance(obj.get(key), dict) and obj[key]:
                return _find_state_dict(obj[key], path, role, depth + 1)
        nested = [v for v in obj.values() if _is_tensor_dict(v)]
        if len(nested) == 1:
            return nested[0]
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise KdtoolError(f"{role}.checkpoint {path} holds no state dict (top-level keys: {keys or 'none'}; tried: "
                      f"a dict of tensors, the keys {', '.join(STATE_DICT_KEYS)}, and a single nested dict "
                      "of tensors)", "save model.state_dict(), optionally under a 'state_dict' or 'model' key")


def load_weights(module: nn.Module, path: str | Path, role: str = "model") -> None:
    """Load a checkpoint into `module`, naming mismatched or missing tensors precisely."""
    state = read_state_dict(path, role)
    own = module.state_dict()
    bad = [k for k in own if k in state and own[k].shape != state[k].shape]  # model order: the first layer first
    if bad:
        shown = f"{bad[0]} {tuple(state[bad[0]].shape)} vs model {tuple(own[bad[0]].shape)}"
        head = list(own)[-len(bad):] == bad and all(
            state[k].shape[1:] == own[k].shape[1:] for k in bad)  # only the last layer, only its outputs
        if head:
            what = f"its head has {state[bad[0]].shape[0]} outputs, the recipe's {own[bad[0]].shape[0]}: "
            hint = "a head of a different size means task.num_classes differs from the checkpoint's; match them"
        else:
            what = "the first mismatched layer is "
            hint = (f"the checkpoint is of another architecture or width: set {role}.arch (and "
                    f"{role}.kwargs) to the model it was saved from")
        raise KdtoolError(f"{role}.checkpoint {path} does not fit {role}.arch: {what}{shown}"
                          + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""), hint)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise KdtoolError(f"{role}.checkpoint {path} does not fit {role}.arch ({len(missing)} missing, "
                          f"{len(unexpected)} unexpected keys: {detail})",
                          "check that arch matches the checkpoint")
    module.load_state_dict(state)
