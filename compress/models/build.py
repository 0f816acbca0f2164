"""Build models: timm names, kdtool-local architectures, TorchScript and ONNX files; checkpoints load via `weights`.

Every model carries its own preprocessing (`Preprocess`): teacher and student may differ in input
size and normalization, and both are fed from the same raw batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compress.core.errors import KdtoolError
from compress.models.registry import LOCAL_MODELS
from compress.models.weights import load_weights, need_file
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
        return BuiltModel(load_torchscript(need_file(cfg.checkpoint, role)), pre, cfg.arch, "torchscript")
    if cfg.source == "onnx":
        return BuiltModel(OnnxTeacher(need_file(cfg.checkpoint, role)), pre, cfg.arch, "onnx")

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
