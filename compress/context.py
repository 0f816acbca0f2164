"""The context every stage of one run shares: the typed recipe, its task, its datasets (built once), the run folder."""

from __future__ import annotations

from pathlib import Path

from compress.core.atomic import read_json, sha256_file
from compress.core.errors import KdtoolError
from compress.core.runfolder import KD_STUDENT, RunFolder, inputs_hash
from compress.core.tasks import Task
from compress.data.loader import build_datasets
from compress.models.build import BuiltModel, build_model, load_weights
from recipes.schema import Recipe


class Context:
    """Everything the stages of one run share: recipe, task, datasets (built once), run folder."""

    def __init__(self, recipe: Recipe, run: RunFolder, recipe_sha: str = "") -> None:
        self.recipe, self.run, self.recipe_sha = recipe, run, recipe_sha
        self.task = Task.from_config(recipe.task)
        self._data = None

    @property
    def datasets(self):
        if self._data is None:
            self._data = build_datasets(self.recipe.data, self.task)
        return self._data

    def stage_hash(self, name: str) -> str:
        """Inputs hash of a stage: its recipe sections and its upstream stages' outputs."""
        r = self.recipe
        common = [r.task, r.data]
        if name == "teacher":
            if r.teacher.self_distill:  # the teacher is the baseline student's best checkpoint
                return inputs_hash(*common, r.teacher, self.output_hash("student_baseline"))
            return inputs_hash(*common, r.teacher, file_hash(r.teacher.checkpoint))
        if name == "student_baseline":
            return inputs_hash(*common, r.student, file_hash(r.student.checkpoint))
        if name == KD_STUDENT:
            return inputs_hash(*common, r.student, r.distill, self.output_hash("teacher"),
                               self.output_hash("student_baseline") if self.kd_train.init == "baseline" else None)
        raise KeyError(name)

    def output_hash(self, stage: str) -> str | None:
        """sha256 of a finished stage's best weights (None when it has none)."""
        meta_path = self.run.stage(stage, "meta.json")
        return read_json(meta_path).get("outputs_sha256") if meta_path.exists() else None

    @property
    def kd_train(self):
        """Training config of stage 2: distill.train, else the baseline's with init=baseline."""
        return self.recipe.distill.train or self.recipe.student.train

    def load(self, stage: str) -> BuiltModel:
        """The model a finished stage produced (teacher, student_baseline or student_kd)."""
        r = self.recipe
        cfg = r.teacher if stage == "teacher" else r.student
        role = stage.split("_")[0]
        if cfg.source != "timm":  # a TorchScript/ONNX teacher file is its own weights
            built = build_model(cfg, self.task.num_outputs, r.data, role)
        else:
            bare = cfg.model_copy(update={"checkpoint": None, "pretrained": False})
            built = build_model(bare, self.task.num_outputs, r.data, role)
            weights = self.run.stage(stage, "best.safetensors")
            if not weights.exists():
                raise KdtoolError(f"{self.run.stage(stage)} has no trained model",
                                  f"run `kdtool distill` (stage {stage}) first")
            load_weights(built.module, weights, stage)
        built.module.eval()
        return built


def file_hash(path: Path | None) -> str | None:
    """sha256 of a file, or None when there is none (no checkpoint named, or not a file)."""
    return sha256_file(path) if path is not None and Path(path).is_file() else None
