"""Build models and load weights: timm names, kdtool-local architectures, checkpoints, TorchScript, ONNX.

Every model carries its own preprocessing (`Preprocess`): teacher and student may differ in input
size and normalization, and both are fed from the same raw batch.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import KdtoolError
from compress.models.registry import LOCAL_MODELS
from recipes.schema import DataConfig, ModelConfig, StudentConfig, TeacherConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How a raw batch becomes this model's input. Recorded in every manifest.

    Images: raw float batches in [0, 1] of shape (N, C, H, W) are resized to `input_size` and
    normalized with `mean`/`std`. Audio: raw waveforms (N, samples) at `sample_rate` go in as is
    (a log-mel front end, if any, lives inside the model so exported artifacts take audio).
    """

    kind: str  # "image" | "audio" | "tensor" (already preprocessed by the user's loader)
    input_size: int | None = None
    channels: int = 3
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    sample_rate: int | None = None
    num_samples: int | None = None

    def __call__(self, raw: torch.Tensor) -> torch.Tensor:
        if self.kind in ("audio", "tensor"):
            return raw
        x = raw
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.mean is not None and self.std is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """Shape of one model input batch."""
        if self.kind == "audio":
            return (batch, self.num_samples or 16000)
        return (batch, self.channels, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuiltModel:
    """A model and the facts that travel with it."""

    module: nn.Module
    preprocess: Preprocess
    arch: str
    source: str = "timm"


def build_model(cfg: ModelConfig, num_outputs: int, data: DataConfig, role: str = "model",
                seed: int | None = None) -> BuiltModel:
    """Build the model a recipe section describes, loading its checkpoint if one is named.

    The random initial weights are a function of `seed` alone (torch seeds its global generator
    randomly at start-up, and earlier stages consume it), so a run, a resumed run and a rerun that
    reuses finished stages start from the same weights. The global RNG is left untouched.

    Args:
        cfg: a `ModelConfig` (teacher or student section).
        num_outputs: width of the head (classes, or regression outputs).
        data: the recipe's `DataConfig` (channels, raw size, sample rate).
        role: "teacher"/"student", used in error messages (`teacher.checkpoint: ...`).
        seed: seed of the initial weights; default the section's `train.seed` (0 without one).
    """
    audio = is_audio_data(data)
    if audio:
        pre = Preprocess(kind="audio", channels=1, sample_rate=data.sample_rate,
                         num_samples=int(round(data.sample_rate * data.clip_seconds)))
    else:
        size = cfg.input_size or data.image_size
        default_mean = IMAGENET_MEAN if data.channels == 3 else (0.5,)
        default_std = IMAGENET_STD if data.channels == 3 else (0.5,)
        mean = tuple(cfg.mean) if cfg.mean else default_mean
        std = tuple(cfg.std) if cfg.std else default_std
        if len(mean) != data.channels or len(std) != data.channels:
            raise KdtoolError(f"{role}.mean/std have {len(mean)}/{len(std)} values but data.channels is "
                              f"{data.channels}", "give one value per channel")
        pre = Preprocess(kind="image", input_size=size, channels=data.channels, mean=mean, std=std)

    if cfg.source == "torchscript":
        return BuiltModel(load_torchscript(_need_file(cfg.checkpoint, role)), pre, cfg.arch, "torchscript")
    if cfg.source == "onnx":
        return BuiltModel(OnnxTeacher(_need_file(cfg.checkpoint, role)), pre, cfg.arch, "onnx")

    in_chans = 1 if audio else data.channels
    kwargs = dict(cfg.kwargs)
    _import_local_models()
    if audio and cfg.arch in LOCAL_MODELS:
        kwargs.setdefault("sample_rate", data.sample_rate)
    if seed is None:
        train = cfg.train if isinstance(cfg, (TeacherConfig, StudentConfig)) else None
        seed = train.seed if train is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = create_architecture(cfg.arch, num_outputs, in_chans, kwargs, cfg.pretrained, role,
                                     pretrained_file=cfg.pretrained_file)
        if cfg.frontend == "logmel":
            from compress.models.audio import LogMelFrontend

            module = nn.Sequential(LogMelFrontend(sample_rate=data.sample_rate), module)
    if cfg.checkpoint is not None:
        load_weights(module, cfg.checkpoint, role)
    return BuiltModel(module, pre, cfg.arch, "timm")


def is_audio_data(data: DataConfig) -> bool:
    """True when the recipe's samples are waveforms (audio folders, generated audio, CSV of WAVs)."""
    if data.source in ("audiofolder", "synthetic_audio"):
        return True
    if data.source == "csv" and data.root is not None and Path(data.root).is_file():
        from compress.data.files import manifest_kind

        return manifest_kind(data.root) == "audio"
    return False


def create_architecture(arch: str, num_outputs: int, in_chans: int, kwargs: dict, pretrained: bool,
                        role: str = "model", pretrained_file: Path | None = None) -> nn.Module:
    """A kdtool-local architecture or a timm model, with `num_outputs` outputs.

    `pretrained_file`: timm pretrained weights from a local file (safetensors or .pth), loaded as
    timm loads hub weights (`pretrained_cfg_overlay=dict(file=...)`): the classifier is
    re-initialised for `num_outputs` and the stem adapted to `in_chans`."""
    _import_local_models()
    if arch in LOCAL_MODELS and pretrained_file is not None:
        raise KdtoolError(f"{role}.pretrained_file: {arch} is a kdtool architecture, not timm's",
                          f"give its weights as {role}.checkpoint")
    if arch in LOCAL_MODELS:
        return LOCAL_MODELS.get(arch)(num_outputs=num_outputs, in_chans=in_chans, **kwargs)
    import timm

    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models() + list(LOCAL_MODELS), n=3)
        raise KdtoolError(f"{role}.arch: unknown architecture {arch!r}",
                          f"close: {', '.join(close)}" if close else "see `timm.list_models()`")
    if pretrained_file is not None:
        if not Path(pretrained_file).is_file():
            raise KdtoolError(f"{role}.pretrained_file {pretrained_file} does not exist", "check the path")
        pretrained, kwargs = True, {**kwargs, "pretrained_cfg_overlay": dict(file=str(pretrained_file))}
    try:
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_outputs, in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise KdtoolError(f"{role}.kwargs: {e}", "remove the keyword the architecture does not take") from e
    except (RuntimeError, OSError, ValueError) as e:
        if pretrained_file is not None:
            raise KdtoolError(f"{role}.pretrained_file {pretrained_file} is not {arch}'s timm weights "
                              f"({str(e).strip().splitlines()[0][:200]})",
                              f"use a file saved from timm.create_model({arch!r}) (safetensors or .pth)") from e
        if pretrained:
            raise KdtoolError(f"{role}: pretrained weights for {arch} could not be downloaded "
                              f"({str(e).strip().splitlines()[0][:200]})",
                              f"offline, set {role}.pretrained_file to a local timm weights file "
                              f"(safetensors or .pth) instead of {role}.pretrained") from e
        raise


def _import_local_models() -> None:
    import compress.models.audio  # noqa: F401  (registers audio architectures)
    import compress.models.wrn  # noqa: F401  (registers CIFAR wide resnets)


def _need_file(path: Path | None, role: str) -> Path:
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
    path = _need_file(Path(path), role)
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


def check_model_io(built: BuiltModel, raw: torch.Tensor, task: Any, role: str = "model") -> None:
    """Run a model once on a raw batch; an input it cannot take, or outputs that do not fit the task,
    become one-line errors before anything is trained or written.

    Args:
        built: the model and its preprocessing.
        raw: a few raw samples (N, C, H, W) or (N, samples), as the data source yields them.
        task: the `Task` (its `kind` and `num_outputs` fix the output shape: (N, num_outputs)).
        role: "teacher"/"student", named in the error.

    Raises:
        KdtoolError: the forward pass fails on the preprocessed input, or the output is not
            (N, num_outputs).
    """
    out = forward_checked(built, raw, role)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != task.num_outputs:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise KdtoolError(f"{role} ({built.arch}) outputs {shape} but the {task.kind} task needs "
                          f"(N, {task.num_outputs})",
                          f"match task.num_classes to the {role}'s head, or use a {role} trained for "
                          "this task")


def forward_checked(built: BuiltModel, raw: torch.Tensor, role: str = "model") -> Any:
    """The model's output on a raw batch (eval mode, no grad); an input it cannot take is a one-line error
    naming the shape received and the shape its first layer expects.

    Raises:
        KdtoolError: the forward pass fails on the preprocessed input.
    """
    x = built.preprocess(raw)
    was_training = built.module.training
    built.module.eval()
    try:
        with torch.no_grad():
            out = built.module(x)
    except (RuntimeError, AssertionError, ValueError, IndexError, TypeError) as e:
        fix = (f"set {role}.input_size (or data.image_size) to a size {built.arch} accepts"
               if built.preprocess.kind == "image" else f"give {role} inputs of the length it was built for")
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        wanted = expected_input(built.module)
        raise KdtoolError(f"{role}.arch {built.arch} cannot take input of shape {tuple(x.shape)}"
                          f"{f' (it expects {wanted})' if wanted else ''}: {first}", fix) from e
    finally:
        built.module.train(was_training)
    return out[0] if isinstance(out, tuple | list) else out


def expected_input(module: nn.Module) -> str | None:
    """The input shape a model's first convolution or linear layer takes, e.g. "(N, 3, H, W)"; None if unknown."""
    for m in module.modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            dims = "L" if isinstance(m, nn.Conv1d) else "H, W" if isinstance(m, nn.Conv2d) else "D, H, W"
            return f"(N, {m.in_channels}, {dims})"
        if isinstance(m, nn.Linear):
            return f"(N, …, {m.in_features})"
    return None


def load_torchscript(path: Path) -> nn.Module:
    """Load a TorchScript teacher (it is run frozen, never trained)."""
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as e:
        raise KdtoolError(f"teacher.checkpoint {path} is not a TorchScript file ({str(e).splitlines()[0]})",
                          "save it with torch.jit.save, or use source: timm with a state dict") from None


class OnnxTeacher(nn.Module):
    """A frozen teacher run by onnxruntime; returns torch tensors so the KD loss is unchanged."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        from compress.core.onnxrt import ort_session

        self.session = ort_session(path, error=KdtoolError,
                                   message=f"teacher.checkpoint {path} is not a loadable ONNX model",
                                   hint="export it with torch.onnx.export and check it with onnx.checker")
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def count_params(module: nn.Module) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def unwrap(module: nn.Module) -> nn.Module:
    """The bare model under DDP / compile wrappers."""
    while hasattr(module, "module") and isinstance(module.module, nn.Module):
        module = module.module
    return getattr(module, "_orig_mod", module)
