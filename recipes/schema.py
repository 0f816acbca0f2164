"""The recipe: one YAML file describing a whole teacher → student → device run.

Strict: unknown keys are errors naming the key path and the closest valid key. Values are
checked here (T > 0, alpha in [0, 1], ...) so nothing below the CLI sees a raw dict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskKind = Literal["binary", "multiclass", "multilabel", "regression"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, use_attribute_docstrings=True)


class TaskConfig(Strict):
    """What the model predicts and how it is scored."""

    kind: TaskKind = "multiclass"
    """binary, multiclass, multilabel or regression: sets the hard loss, the KD loss and the metrics"""
    num_classes: int = Field(2, ge=1, description="classes (multiclass/multilabel); 1 or 2 logits for binary")
    labels: list[str] | None = Field(None, description="class names, in logit order")
    outputs: list[str] | None = Field(None, description="regression output names, e.g. [valence, arousal]")
    metric: str | None = Field(None, description="primary metric; default per task (auc, accuracy, f1, ccc)")

    @model_validator(mode="after")
    def _check(self) -> TaskConfig:
        if self.kind == "binary" and self.num_classes not in (1, 2):
            raise ValueError("binary tasks have num_classes 1 (one logit) or 2 (two logits)")
        if self.kind == "regression" and self.outputs is None:
            self.outputs = [f"y{i}" for i in range(self.num_classes)]
        if self.kind == "regression" and len(self.outputs) != self.num_classes:
            raise ValueError(f"outputs has {len(self.outputs)} names but num_classes is {self.num_classes}")
        named_classes = self.labels is not None and self.kind in ("multiclass", "multilabel")
        if named_classes and len(self.labels) != self.num_classes:
            raise ValueError(f"labels has {len(self.labels)} names but num_classes is {self.num_classes}")
        return self

    @property
    def num_outputs(self) -> int:
        """Width of the model's output layer."""
        return self.num_classes


class AugmentConfig(Strict):
    """Random augmentation applied to the raw training sample (recorded for the teacher cache)."""

    hflip: bool = False
    """random horizontal flip (images)"""
    crop_pad: int = Field(0, ge=0, description="pad then random-crop back by this many pixels")
    time_shift: float = Field(0.0, ge=0.0, le=0.5, description="audio: random roll, fraction of the clip")


class DataConfig(Strict):
    """Where samples come from. `digits` and `synthetic_audio` ship offline."""

    source: str = Field("digits", description="a registered data source (checked after loading: "
                        "digits, imagefolder, csv, audiofolder, synthetic_audio, synthetic_images, ...)")
    root: Path | None = Field(None, description="folder (imagefolder/audiofolder) or CSV file")
    val_root: Path | None = Field(None, description="separate validation folder/CSV; else split from root")
    val_fraction: Probability = 0.2
    """share of `root` split off for validation when there is no val_root"""
    test_root: Path | None = Field(None, description="held-out test folder/CSV: the card's metrics come from it "
                                   "(the best checkpoint is still chosen on validation)")
    test_fraction: float | None = Field(None, gt=0.0, lt=1.0, description="hold out this fraction of the training "
                                        "split as the test split (when there is no test_root)")
    image_size: int = Field(32, ge=1, description="raw image side the loader decodes to")
    channels: Literal[1, 3] = 3
    """image channels the loader decodes to (1 grey, 3 RGB)"""
    sample_rate: int = Field(16000, ge=1000)
    """audio: samples per second the clips are decoded (and resampled) to"""
    clip_seconds: float = Field(1.0, gt=0.0)
    """audio: clip length in seconds (longer clips cropped, shorter padded)"""
    num_samples: int | None = Field(None, ge=2, description="generated data: how many samples")
    limit: int | None = Field(None, ge=2, description="use at most this many samples (smoke tests)")
    batch_size: int = Field(64, ge=1)
    """batch size of every loader (training stages may override it)"""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes"""
    max_bad_fraction: Probability = Field(0.01, description="abort when more undecodable files than this")
    augment: AugmentConfig = AugmentConfig()
    unlabeled_root: Path | None = Field(None, description=(
        "transfer set: a folder of unlabeled images/clips (any depth) that the KD student learns from the "
        "teacher's outputs alone; teacher and baseline never see it"))
    labeled_fraction: float = Field(1.0, gt=0.0, le=1.0, description=(
        "keep the labels of this share of the training split (stratified, fixed seed) and hide the rest: "
        "the hidden samples join the transfer set (teacher and baseline train on the labeled share)"))

    @model_validator(mode="after")
    def _one_test_split(self) -> DataConfig:
        if self.test_root is not None and self.test_fraction is not None:
            raise ValueError("give data.test_root or data.test_fraction, not both")
        if self.test_root is not None and self.source not in ("imagefolder", "csv", "audiofolder"):
            raise ValueError(f"data.test_root needs a file source (imagefolder, csv, audiofolder), not "
                             f"{self.source}: use data.test_fraction")
        return self


class ModelConfig(Strict):
    """A model: a timm (or kdtool-local) architecture, or a TorchScript/ONNX file."""

    arch: str = Field(..., description="timm name (e.g. mobilenetv3_small_050) or local (tiny_conv, ...)")
    source: Literal["timm", "torchscript", "onnx"] = "timm"
    """timm (or kdtool-local) architecture, or a TorchScript/ONNX file in `checkpoint`"""
    checkpoint: Path | None = Field(None, description="local weights: safetensors, .pt/.pth/.tar, .ts or .onnx")
    pretrained: bool = Field(False, description="download pretrained weights (needs the hub; off by default)")
    pretrained_file: Path | None = Field(None, description="timm pretrained weights as a local file (safetensors "
                                         "or .pth), classifier re-initialised for the task: offline `pretrained`")
    input_size: int | None = Field(None, ge=8, description="square input side; default the data's image_size")
    mean: tuple[float, ...] | None = None
    """input normalisation mean, one value per channel; default ImageNet's for RGB, 0.5 for grey"""
    std: tuple[float, ...] | None = None
    """input normalisation std, one value per channel; default ImageNet's for RGB, 0.5 for grey"""
    frontend: Literal["none", "logmel"] = Field(
        "none", description="audio: a log-mel front end inside the model, so the exported model takes audio"
    )
    kwargs: dict[str, int | float | str | bool | list[int]] = Field(default_factory=dict)
    """extra keyword arguments to the model constructor (timm.create_model)"""

    @model_validator(mode="after")
    def _one_weights_source(self) -> ModelConfig:
        if self.pretrained and self.pretrained_file is not None:
            raise ValueError("pretrained: true downloads the weights that pretrained_file names locally: set one")
        return self


class ScheduleConfig(Strict):
    """A scalar over epochs: constant, linear from `start` to `end` over `epochs`, or a step table."""

    kind: Literal["constant", "linear", "step"] = "constant"
    """constant, linear (start to end over epochs) or step (a table)"""
    start: float | None = None
    """linear: value at epoch 1"""
    end: float | None = None
    """linear: value from `epochs` on"""
    epochs: int | None = Field(None, ge=1, description="linear: epochs to go from start to end")
    steps: dict[int, float] | None = Field(None, description="step: {first_epoch: value}, 1-based")

    @model_validator(mode="after")
    def _check(self) -> ScheduleConfig:
        if self.kind == "linear" and (self.start is None or self.end is None or self.epochs is None):
            raise ValueError("a linear schedule needs start, end and epochs")
        if self.kind == "step" and not self.steps:
            raise ValueError("a step schedule needs steps: {epoch: value}")
        return self


class TrainConfig(Strict):
    """One training stage (teacher, student baseline, or distillation)."""

    epochs: int = Field(10, ge=0)
    """training epochs (0: no training)"""
    lr: float = Field(1e-3, gt=0.0)
    """peak learning rate"""
    weight_decay: float = Field(0.05, ge=0.0)
    """decoupled weight decay (AdamW) or L2 (SGD)"""
    optimizer: Literal["adamw", "sgd", "sam"] = "adamw"
    """adamw, sgd, or sam (sharpness-aware, with rho = sam_rho)"""
    sam_rho: float = Field(0.05, gt=0.0)
    """optimizer sam: neighbourhood radius"""
    scheduler: Literal["cosine", "onecycle", "constant"] = "onecycle"
    """learning-rate schedule per step: cosine, onecycle or constant"""
    warmup_epochs: float = Field(0.0, ge=0.0)
    """linear warm-up from 1 % of lr to lr over this many epochs (fractions allowed)"""
    batch_size: int | None = Field(None, ge=1, description="default data.batch_size")
    grad_clip: float | None = Field(None, gt=0.0)
    """clip the gradient norm to this value"""
    label_smoothing: Probability = 0.0
    """smoothing of the hard labels (never of the teacher's soft targets)"""
    ema_decay: float | None = Field(None, gt=0.0, lt=1.0, description=(
        "keep an exponential moving average of the weights (timm ModelEmaV3, with warm-up); validation, "
        "the best checkpoint and everything downstream use the averaged weights"))
    amp: Literal["off", "bf16", "fp16"] = "off"
    """mixed precision on CUDA: off, bf16, or fp16 (with a GradScaler)"""

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        """YAML reads a bare `off` as false: accept it."""
        return "off" if value is False else value
    seed: int = 0
    """seed of the weights' initialisation, data order and augmentation"""
    threads: int = Field(2, ge=1, description=(
        "torch intra-op threads while training on CPU: CPU float sums depend on it, so it is fixed "
        "(not the machine's core count) for the same weights on every machine; recorded in meta.json"))
    nan_policy: Literal["stop", "skip"] = "stop"
    """on a non-finite loss: stop (exit 3, last good checkpoint kept) or skip the step"""
    max_bad_steps: int = Field(0, ge=0, description="nan_policy=skip: abort after this many skipped steps")
    init: Literal["scratch", "baseline"] = Field(
        "baseline", description="distillation only: start from the baseline's best checkpoint or from scratch"
    )
    # None (not "auto") when unset: stage hashes leave unset settings out, so existing runs stay valid
    device: Literal["cpu", "cuda"] | None = Field(
        None, description="where to train; unset: CUDA when present, else CPU; cuda without a GPU is an error")

    @model_validator(mode="after")
    def _sam_fp16(self) -> TrainConfig:
        """SAM's second backward pass bypasses the fp16 GradScaler (its unscale/update run once per step)."""
        if self.optimizer == "sam" and self.amp == "fp16":
            raise ValueError("optimizer: sam does not work with amp: fp16 (the GradScaler scales one backward "
                             "pass per step, SAM runs two): use amp: bf16 or another optimizer")
        return self


class LossTermConfig(Strict):
    """One extra KD term (feature, attention, relation, ...), weighted into the total."""

    name: str = Field(..., description="registered KD loss: fitnet, attention, rkd, sp, dkd, ...")
    weight: float = Field(1.0, ge=0.0)
    """weight wᵢ of the term in the total loss"""
    student_layer: str | None = None
    """student module path whose output the term reads (forward hook)"""
    teacher_layer: str | None = None
    """teacher module path whose output the term reads (forward hook)"""
    params: dict[str, float | int | str] = Field(default_factory=dict)
    """the loss's own parameters"""


class CacheConfig(Strict):
    """Teacher-output cache: teacher logits computed once per sample and recorded view."""

    enabled: bool = False
    """compute the teacher's outputs once and train from the cache instead of online"""
    views: int = Field(1, ge=1, description="recorded augmented views per sample")
    dtype: Literal["float16", "float32"] = "float16"
    """storage type of the cached logits"""
    top_k: int | None = Field(None, ge=1, description="keep only the top-k logits (multiclass)")


class DistillConfig(Strict):
    """Stage 2: the student learns from the teacher. loss = alpha*hard + (1-alpha)*soft + Σ wᵢ·termᵢ."""

    temperature: float = Field(4.0, gt=0.0, le=100.0)
    """softmax temperature T of the soft loss"""
    alpha: Probability = Field(0.5, description="weight of the hard-label loss; (1-alpha) weighs the soft loss")
    alpha_schedule: ScheduleConfig | None = None
    """alpha per epoch (overrides alpha)"""
    temperature_schedule: ScheduleConfig | None = None
    """temperature per epoch (overrides temperature)"""
    soft_loss: str | None = Field(None, description="response KD loss; default fits the task (kl, bce_kd, mse)")
    terms: list[LossTermConfig] = Field(default_factory=list)
    """extra KD terms (feature, attention, relation, ...), each weighted into the total"""
    train: TrainConfig | None = Field(None, description="default: student.train with init=baseline")
    cache: CacheConfig = CacheConfig()


class TeacherConfig(ModelConfig):
    """The teacher: trained here from scratch when `train` is given and no checkpoint is.

    `self_distill: true` is self-distillation (born-again networks, Furlanello et al. 2018): the
    teacher is the stage-1 student itself (same architecture, its best baseline checkpoint), and
    stage 2 trains the same architecture again from it. The teacher's architecture fields are then
    taken from the student section.
    """

    arch: str | None = Field(None, description="timm name; left out with self_distill (the student's is used)")
    train: TrainConfig | None = None
    # None (not False) when unset: stage hashes leave unset settings out, so existing runs stay valid
    self_distill: bool | None = Field(None, description="the teacher is the stage-1 student (born-again "
                                      "self-distillation)")

    @model_validator(mode="after")
    def _check(self) -> TeacherConfig:
        if self.self_distill:
            extra = [k for k in ("checkpoint", "train") if getattr(self, k) is not None]
            extra += ["pretrained"] if self.pretrained else []
            extra += ["pretrained_file"] if self.pretrained_file is not None else []
            extra += ["source"] if self.source != "timm" else []
            if extra:
                raise ValueError("self_distill takes the teacher from the student's baseline: "
                                 f"remove teacher.{extra[0]}")
            return self
        if self.arch is None:
            raise ValueError("the teacher needs an arch (or self_distill: true to use the student's baseline)")
        if self.checkpoint is None and self.train is None and not self.pretrained and self.pretrained_file is None:
            raise ValueError("the teacher needs a checkpoint, pretrained: true, or a train section to train it here")
        return self


class StudentConfig(ModelConfig):
    """The student and its baseline (hard labels only) training."""

    train: TrainConfig = TrainConfig()


class QATTrainConfig(TrainConfig):
    """`quantize.qat`: fine-tuning through the same training step as distillation, every key read.

    Refused, because QAT cannot honour them: `init` (QAT always starts from the distilled student),
    `ema_decay` (an average of fake-quantized graphs mixes observer ranges of different shapes),
    `amp` (the fake quantizers compute in float32), `device: cuda` (PT2E QAT trains on the CPU) and
    `label_smoothing` (QAT's hard loss is the distillation objective's, unsmoothed).
    """

    @model_validator(mode="after")
    def _refuse_unread(self) -> QATTrainConfig:
        refused = {"init": self.init != "baseline", "ema_decay": self.ema_decay is not None, "amp": self.amp != "off",
                   "device": self.device == "cuda", "label_smoothing": self.label_smoothing != 0}
        for key, bad in refused.items():
            if bad:
                raise ValueError(f"quantize.qat.{key} cannot be honoured by QAT: remove it")
        return self


QuantMode = Literal["dynamic", "static", "qat"]


class QuantizeConfig(Strict):
    """INT8 quantization of the distilled student."""

    modes: list[QuantMode] = Field(default_factory=lambda: ["dynamic"])
    """int8 modes to run: dynamic, static (calibrated PTQ), qat (with the teacher)"""
    backends: dict[QuantMode, list[Literal["torch", "executorch", "onnx", "coreml"]]] | None = Field(
        None, description="backends per mode; default dynamic: [torch, onnx], static: [executorch, onnx] "
        "(+ coreml for the ios target), qat: [executorch]")
    calibration_samples: int = Field(256, ge=1)
    """static: calibration samples from the training split"""
    onnx_activations: Literal["uint8", "int8"] | None = Field(
        None, description="static ONNX: uint8 (default; U8S8, fast on x86) or int8 (S8S8, for TensorRT int8)")
    min_retention: Probability | None = Field(
        0.99, description="static: floor on the int8 model's primary metric as a fraction of the fp32 student's "
        "(validation); below it the most sensitive layers are kept in float until it holds (null: off)")
    calibration_method: Literal["histogram", "minmax"] | None = Field(
        None, description="static: activation ranges from a histogram (PT2E L2 search, ORT 99.999th percentile) "
        "or the min-max; default: the backend's (PT2E histogram, ONNX Runtime min-max)")
    qat: QATTrainConfig = QATTrainConfig(epochs=2, lr=1e-4, scheduler="constant")


class PruneConfig(Strict):
    """Structured (channel) pruning of the distilled student, then recovery training (`kdtool prune`).

    Channels go with everything that depends on them (torch-pruning's DepGraph): residual adds,
    depthwise convolutions, concatenations, whole attention heads. The target is a channel `ratio`,
    or a budget (`max_params`, `max_gflops`, `max_latency_ms`) that more channels are pruned until
    it is met.
    """

    ratio: float = Field(0.5, ge=0.0, lt=1.0, description="fraction of each prunable layer's channels to remove "
                         "(global: of all of them); unused with a budget, which prunes up to 0.9 until it is met")
    max_params: int | None = Field(None, ge=1, description="budget: prune until the student has at most this "
                                   "many parameters")
    max_gflops: float | None = Field(None, gt=0.0, description="budget: GFLOPs per sample (torch FlopCounterMode)")
    max_latency_ms: float | None = Field(None, gt=0.0, description="budget: median batch-1 latency on "
                                         "`latency_runtime` with benchmark.threads")
    latency_runtime: Literal["onnxruntime", "torch"] = Field(
        "onnxruntime", description="max_latency_ms: where latency is measured (the student exported to ONNX, or "
        "eager PyTorch)")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field(
        "l2", description="channel importance: weight magnitude (L1/L2), BatchNorm scale |gamma|, or first-order "
        "Taylor |w * dL/dw| from `calibration_batches` training batches")
    scope: Literal["uniform", "global"] = Field("uniform", description="uniform: the same ratio in every layer; "
                                                "global: rank channels across layers")
    steps: int = Field(1, ge=1, le=20, description="1: one shot; N: prune in N steps with recovery after each")
    recover: Literal["kd", "hard", "none"] = Field(
        "kd", description="recovery fine-tune: from the teacher with the recipe's distill loss (kd), on hard "
        "labels only (hard), or none")
    train: TrainConfig | None = Field(None, description="recovery training per step; default the distillation's "
                                      "(distill.train, else student.train)")
    ignore: list[str] = Field(default_factory=list, description="module paths (or their prefixes) kept whole, "
                              "beside the classifier")
    calibration_batches: int = Field(4, ge=1, description="taylor: training batches the gradients come from")

    @model_validator(mode="after")
    def _one_budget(self) -> PruneConfig:
        budgets = [k for k in ("max_params", "max_gflops", "max_latency_ms") if getattr(self, k) is not None]
        if len(budgets) > 1:
            raise ValueError(f"prune: give one budget, not {' and '.join(budgets)}")
        return self


Target = Literal["android", "ios", "server"]


class ExportConfig(Strict):
    """Which artifacts to make: presets per target, or an explicit format list."""

    targets: list[Target] = Field(default_factory=lambda: ["server"])
    """deployment targets (android, ios, server): each has a preset list of formats"""
    formats: list[str] | None = Field(None, description="registered export formats (checked after loading); "
                                      "overrides the targets' presets")
    opset: int = Field(18, ge=13)
    """ONNX opset"""
    int8: bool = Field(True, description="also export the quantized students where the format takes them")
    parity_samples: int = Field(64, ge=1)
    """validation samples each artifact is checked on against the PyTorch model"""
    batch: Literal["auto", "dynamic"] | Annotated[int, Field(ge=1, le=1024)] = Field(
        "auto", description="the artifacts' batch axis: `auto` (a static batch of 1 for android and ios, "
        "where a fixed shape lets the runtime fold shapes; dynamic for server), `dynamic`, or a static size N")


class BenchmarkConfig(Strict):
    """How latency is measured and which artifacts are acceptable."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1])
    """batch sizes timed (a static-batch artifact is timed at its own batch only)"""
    threads: int = Field(2, ge=1)
    """intra-op threads while timing (fixed and recorded)"""
    warmup: int = Field(10, ge=0)
    """untimed calls before timing"""
    min_runs: int = Field(50, ge=1)
    """timed calls at least (timing stops when both min_runs and min_time_s are met)"""
    min_time_s: float = Field(1.0, ge=0.0)
    """timed seconds at least"""
    min_retention: Probability = Field(0.97, description="floor for the per-target recommendation")


class Recipe(Strict):
    """A whole run: task, data, teacher, student, distillation, quantization, export, benchmark."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    """run name: the run folder is runs/<name>"""
    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    teacher: TeacherConfig
    student: StudentConfig
    distill: DistillConfig = DistillConfig()
    prune: PruneConfig | None = Field(None, description="structured pruning between distill and quantize")
    quantize: QuantizeConfig = QuantizeConfig()
    export: ExportConfig = ExportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    sweep: dict[str, Any] | None = Field(None, description=(
        "`kdtool sweep`'s search space: recipe key paths (as --set takes them) -> a list of values or "
        "{low, high, log, step}; checked against this schema by the sweep (benchmark/sweep/space.py)"))

    @model_validator(mode="after")
    def _soft_loss_fits_task(self) -> Recipe:
        """Softmax tasks distil with kl, sigmoid ones with bce_kd: the other trains the wrong objective."""
        loss, task = self.distill.soft_loss, self.task
        softmax = task.kind == "multiclass" or (task.kind == "binary" and task.num_classes == 2)
        sigmoid = task.kind == "multilabel" or (task.kind == "binary" and task.num_classes == 1)
        if loss == "bce_kd" and softmax:
            raise ValueError(f"distill.soft_loss: bce_kd treats each logit as an independent sigmoid, but this "
                             f"{task.kind} task with {task.num_classes} logits is a softmax: use soft_loss: kl")
        if loss == "kl" and sigmoid:
            raise ValueError(f"distill.soft_loss: kl is a softmax over the logits, but this {task.kind} task with "
                             f"{task.num_classes} logit(s) uses independent sigmoids: use soft_loss: bce_kd")
        return self

    @model_validator(mode="after")
    def _self_distill_teacher(self) -> Recipe:
        """With teacher.self_distill the teacher is built as the student is (architecture and preprocessing)."""
        if not self.teacher.self_distill:
            return self
        if self.teacher.arch not in (None, self.student.arch):
            raise ValueError(f"teacher.self_distill uses the student's architecture, but teacher.arch is "
                             f"{self.teacher.arch!r} and student.arch {self.student.arch!r}: remove teacher.arch")
        shared = ("arch", "source", "input_size", "mean", "std", "frontend", "kwargs")
        # in place: assigning a new section would re-run this validator (validate_assignment)
        self.teacher.__dict__.update({k: getattr(self.student, k) for k in shared})
        return self
