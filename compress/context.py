"""The context every stage of one run shares: the typed recipe, its task, its datasets (built once), the run folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.atomic import read_json, sha256_file
from compress.core.errors import KdtoolError
from compress.core.runfolder import KD_STUDENT, PRUNED, RunFolder, inputs_hash, unfinished
from compress.core.tasks import Task
from compress.data.loader import build_splits
from compress.data.transfer import folder_fingerprint
from compress.models.build import BuiltModel, build_model
from compress.models.shapes import SHAPES_FILE, apply_shapes
from compress.models.weights import load_weights
from recipes.schema import PruneConfig, Recipe


class Context:
    """Everything the stages of one run share: recipe, task, datasets (built once), run folder."""

    def __init__(self, recipe: Recipe, run: RunFolder, recipe_sha: str = "", recipe_arg: str | None = None) -> None:
        self.recipe, self.run, self.recipe_sha = recipe, run, recipe_sha
        self.recipe_arg = recipe_arg  # the recipe as the user named it, for the commands hints suggest
        self.task = Task.from_config(recipe.task)
        self._data = None
        # called with (stage, validation record) after each training epoch; a sweep prunes poor trials with it
        self.on_epoch: Callable[[str, dict[str, Any]], None] | None = None
        self.teacher_cache_dir: Path | None = None  # a sweep's shared teacher-output cache (keyed: reused if it fits)

    @property
    def datasets(self):
        """(train, val): training and the split the best checkpoint is chosen on."""
        if self._data is None:
            self._data = build_splits(self.recipe.data, self.task)
        return self._data[:2]

    @property
    def scored_split(self):
        """(name, dataset) the report card scores: the test split when the recipe has one, else validation."""
        _, val = self.datasets
        test = self._data[2]
        return ("test", test) if test is not None else ("validation", val)

    def stage_hash(self, name: str) -> str:
        """Inputs hash of a stage: its recipe sections and its upstream stages' outputs."""
        r = self.recipe
        common = [r.task, r.data.model_copy(update={"test_root": None})]  # the test split trains nothing
        if name == "teacher":
            if r.teacher.self_distill:  # the teacher is the baseline student's best checkpoint
                return inputs_hash(*common, r.teacher, self.output_hash("student_baseline"))
            # a given checkpoint is the teacher: a leftover train section changes nothing, so it is no input
            teacher = r.teacher.model_copy(update={"train": None}) if r.teacher.checkpoint else r.teacher
            return inputs_hash(*common, teacher, file_hash(r.teacher.checkpoint))
        if name == "student_baseline":
            return inputs_hash(*common, r.student, file_hash(r.student.checkpoint))
        if name == KD_STUDENT:
            transfer = [folder_fingerprint(r.data.unlabeled_root)] if r.data.unlabeled_root else []  # new files rerun
            return inputs_hash(*common, r.student, r.distill, self.output_hash("teacher"),
                               self.output_hash("student_baseline") if self.kd_train.init == "baseline" else None,
                               *transfer)
        if name == PRUNED:
            kd = r.prune.recover == "kd"
            return inputs_hash(*common, r.student, effective_prune(r.prune), r.distill if kd else None,
                               self.prune_train if r.prune.recover != "none" else None,
                               self.output_hash(KD_STUDENT), self.output_hash("teacher") if kd else None,
                               r.benchmark.threads if r.prune.max_latency_ms else None)
        raise KeyError(name)

    def output_hash(self, stage: str) -> str | None:
        """sha256 of a finished stage's best weights (None when it has none)."""
        meta_path = self.run.stage(stage, "meta.json")
        return read_json(meta_path).get("outputs_sha256") if meta_path.exists() else None

    def command(self, verb: str, *options: str) -> str:
        """The command a hint suggests, with this run's recipe and --out: `kdtool distill my.yaml --out x`."""
        out = self.run.root.parent
        parts = ["kdtool", verb, *([self.recipe_arg] if self.recipe_arg else []), *options,
                 *([] if out == Path("runs") else ["--out", str(out)])]
        return " ".join(parts)

    @property
    def kd_train(self):
        """Training config of stage 2: distill.train, else the baseline's with init=baseline."""
        return self.recipe.distill.train or self.recipe.student.train

    @property
    def prune_train(self):
        """Recovery training of the prune stage: prune.train, else the distillation's."""
        return (self.recipe.prune.train if self.recipe.prune and self.recipe.prune.train else None) or self.kd_train

    @property
    def final_student(self) -> str:
        """The student the later stages (quantize, export, benchmark) take: the pruned one when the recipe
        prunes, else the distilled one."""
        return PRUNED if self.recipe.prune is not None else KD_STUDENT

    def load(self, stage: str, folder: Path | None = None) -> BuiltModel:
        """The model a finished stage produced (teacher, student_baseline, student_kd or student_pruned).

        `folder`: read the stage's files from there instead of its run-folder directory (a pruning step)."""
        r = self.recipe
        cfg = r.teacher if stage == "teacher" else r.student
        role = stage.split("_")[0]
        if cfg.source != "timm":  # a TorchScript/ONNX teacher file is its own weights
            built = build_model(cfg, self.task.num_outputs, r.data, role)
        else:
            bare = cfg.model_copy(update={"checkpoint": None, "pretrained": False, "pretrained_file": None})
            built = build_model(bare, self.task.num_outputs, r.data, role)
            folder = folder or self.run.stage(stage)
            weights = folder / "best.safetensors"
            if unfinished(folder):  # a killed or interrupted run's weights
                verb = "prune" if stage == PRUNED else "distill"
                raise KdtoolError(f"{folder} holds an unfinished run",
                                  f"run `{self.command(verb)}` to finish it (stage {stage})")
            if not weights.exists():
                raise KdtoolError(f"{folder} has no trained model",
                                  f"run `{self.command('prune' if stage == PRUNED else 'distill')}` "
                                  f"(stage {stage}) first")
            shapes = folder / SHAPES_FILE
            if shapes.exists():  # a pruned model: resize the fresh build first (no pruning code needed)
                apply_shapes(built.module, read_json(shapes))
            load_weights(built.module, weights, stage)
        built.module.eval()
        return built


def file_hash(path: Path | None) -> str | None:
    """sha256 of a file, or None when there is none (no checkpoint named, or not a file)."""
    return sha256_file(path) if path is not None and Path(path).is_file() else None


def effective_prune(cfg: PruneConfig) -> dict[str, Any]:
    """The prune section as the stage uses it: keys it validates but ignores in this combination are
    left out, so editing them does not rerun the stage.

    Left out: `ratio` under a budget, `latency_runtime` without `max_latency_ms`, `calibration_batches`
    unless `importance: taylor`, and `train` (the recovery training is hashed as `Context.prune_train`,
    and only when `recover` is not none).
    """
    unused = {"train"}
    if any(v is not None for v in (cfg.max_params, cfg.max_gflops, cfg.max_latency_ms)):
        unused.add("ratio")
    if cfg.max_latency_ms is None:
        unused.add("latency_runtime")
    if cfg.importance != "taylor":
        unused.add("calibration_batches")
    return cfg.model_dump(mode="json", exclude_none=True, exclude=unused)
