"""Every recipe key does something: the schema is walked and each key is exercised, or listed with the reason.

Training keys (`TrainConfig`, used by teacher.train, student.train and distill.train) are proven here
by training a tiny model on real digits twice, with the default and with a changed value, and
comparing the weights. Keys of other sections are exercised by the named test files (checked to
exist and to use the key); the few that cannot be exercised on a CPU are listed with the reason.
"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

from compress.core.errors import KdtoolError
from recipes.load import load_recipe
from recipes.schema import Recipe, TrainConfig

TESTS = Path(__file__).resolve().parents[1]

TRAIN_CHANGES = {
    "epochs": 3, "lr": 0.03, "weight_decay": 0.5, "optimizer": "sgd", "scheduler": "cosine",
    "warmup_epochs": 1.0, "batch_size": 16, "grad_clip": 1e-3, "label_smoothing": 0.3, "ema_decay": 0.5,
    "amp": "bf16", "seed": 1,
}
"""A non-default value of each training key that fit() must honour (changes the trained weights)."""

TRAIN_ELSEWHERE = {
    "sam_rho": "tests/compress/test_sam.py",
    "nan_policy": "tests/compress/test_numerics.py",  # needs a non-finite loss
    "max_bad_steps": "tests/compress/test_numerics.py",
    "init": "tests/e2e/test_pipeline.py",  # distillation stage only: scratch vs the baseline's checkpoint
    "threads": "tests/compress/test_determinism.py",  # the thread count changes the trained weights
    "device": "tests/compress/test_amp.py",  # cuda without a GPU is refused; CUDA itself needs a GPU
}

QAT_WHERE = {
    **dict.fromkeys(["epochs", "lr", "weight_decay", "optimizer", "scheduler", "grad_clip", "seed", "nan_policy",
                     "max_bad_steps", "init", "ema_decay", "amp", "device", "label_smoothing"],
                    "tests/compress/test_qat_train.py"),  # honoured through TrainStep, or refused by QATTrainConfig
    "warmup_epochs": "tests/compress/test_schedules.py",  # the same build_scheduler
    "threads": "tests/compress/test_determinism.py",  # the same determinism.configure
}
"""Where each `quantize.qat` key (the shared training step's settings) is exercised."""


ELSEWHERE = {
    "data.test_root": "tests/compress/test_test_split.py",
    "data.test_fraction": "tests/compress/test_test_split.py",
    "data.unlabeled_root": "tests/compress/test_transfer.py",
    "data.labeled_fraction": "tests/compress/test_transfer.py",
    "teacher.pretrained_file": "tests/compress/test_pretrained_file.py",
    "student.pretrained_file": "tests/compress/test_pretrained_file.py",
    "quantize.min_retention": "tests/compress/test_accuracy_aware.py",
    "quantize.calibration_method": "tests/compress/test_accuracy_aware.py",
    "task": "tests/e2e/test_pipeline.py", "data": "tests/compress/test_data_files.py",
    "data.augment": "tests/compress/test_teacher_cache.py",
    "data.augment.time_shift": "tests/recipes/test_recipe_keys.py",
    "data.batch_size": "tests/cli/test_bad_input.py", "data.num_workers": "tests/compress/test_numerics.py",
    "quantize.backends": "tests/export/test_executorch.py", "export.opset": "tests/export/test_onnx.py",
    "benchmark.batch_sizes": "tests/e2e/test_recipe_smoke.py",
    "teacher": "tests/cli/test_bad_input.py", "student": "tests/cli/test_bad_input.py",
    "teacher.self_distill": "tests/compress/test_self_distill.py", "distill": "tests/compress/test_objective.py",
    "distill.cache": "tests/compress/test_teacher_cache.py",
    "distill.alpha_schedule": "tests/compress/test_schedules.py",
    "distill.temperature_schedule": "tests/compress/test_qat_features.py",
    "distill.terms": "tests/compress/test_objective.py", "quantize": "tests/compress/test_quantize.py",
    "export": "tests/e2e/test_pipeline.py", "benchmark": "tests/e2e/test_pipeline.py",
    "sweep": "tests/benchmark/test_sweep_space.py",
    "prune": "tests/compress/test_prune_stage.py",
}
"""Section (or key path) → a test file that exercises its keys (it must exist and name each key)."""

UNTESTED = {
    "quantize.qat.sam_rho": "SAM is built by the TrainStep fit and QAT share; tests/compress/test_sam.py checks SAM "
                            "with its rho, and QAT with optimizer: sam is tests/compress/test_qat_train.py",
    "quantize.qat.batch_size": "read by the quantize stage (compress/quant/stage.py) for QAT's loader; no "
                               "stage-level QAT test checks it yet",
    "student.frontend": "the log-mel front end is built by compress/models/audio.py; exercised by the wake-word "
                        "recipes (tests/compress/test_audio.py builds it), the key name only appears in YAML",
    "teacher.frontend": "as student.frontend",
    "teacher.pretrained": "downloads hub weights: no network here (pretrained=False everywhere in tests)",
    "student.pretrained": "as teacher.pretrained",
    "data.augment.hflip": "exercised by tests/compress/test_teacher_cache.py (hflip views)",
    "task.labels": "names only: shown on the card and embedded in artifacts (tests/export/test_coreml.py)",
    "task.outputs": "names only: the per-output metric keys (tests/compress/test_tasks.py)",
}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key path of the schema, descending into nested sections."""
    out = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = [a for a in (field.annotation, *typing.get_args(field.annotation))
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        out += _leaves(nested[0], f"{path}.") if nested else [path]
    return out


def _where(path: str) -> str | None:
    """The test file claimed to exercise `path` (most specific prefix), if any."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in ELSEWHERE:
            return ELSEWHERE[".".join(parts[:i])]
    return None


def test_every_schema_key_is_exercised_or_listed_with_a_reason():
    unaccounted, unused = [], []
    for path in _leaves(Recipe):
        key = path.rsplit(".", 1)[-1]
        if path in UNTESTED or path == "name":
            continue
        if path.startswith("quantize.qat."):
            where = QAT_WHERE.get(key)
            if where is None:
                unaccounted.append(path)
            elif key not in (TESTS.parent / where).read_text():
                unused.append(f"{path} (not in {where})")
            continue
        if ".train." in f".{path}" and (key in TRAIN_CHANGES or key in TRAIN_ELSEWHERE):
            continue
        where = TRAIN_ELSEWHERE.get(key) if ".train." in f".{path}" else _where(path)
        if where is None:
            unaccounted.append(path)
        elif key not in (TESTS.parent / where).read_text():
            unused.append(f"{path} (not in {where})")
    assert unaccounted == [], f"schema keys no test exercises: {unaccounted}"
    assert unused == [], f"claimed test files do not use: {unused}"
    assert set(TRAIN_CHANGES) | set(TRAIN_ELSEWHERE) == set(TrainConfig.model_fields)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`trained(**changes)` → the best weights of a 2-epoch fit on digits with those TrainConfig changes."""
    from compress.distill.trainer import fit
    from tests.compress.kd_fixtures import TASK, digits, model_tensors, tiny_net, train_cfg

    data_cfg, train, val = digits(limit=128, crop_pad=0)

    done: dict[str, dict[str, torch.Tensor]] = {}

    def run(**changes):
        if repr(changes) not in done:  # the default run is shared by every key
            out = tmp_path_factory.mktemp("fit")
            fit(tiny_net(seed=0), train, val, TASK, train_cfg(**{"epochs": 2, **changes}), out, data_cfg=data_cfg)
            done[repr(changes)] = model_tensors(out, "best.safetensors")
        return done[repr(changes)]

    return run


@pytest.mark.parametrize("key", sorted(TRAIN_CHANGES))
def test_training_key_changes_the_trained_weights(trained, key):
    default, changed = trained(), trained(**{key: TRAIN_CHANGES[key]})
    assert any(not torch.equal(default[k], changed[k]) for k in default), f"train.{key} changed nothing"


@pytest.mark.parametrize("kind,classes,loss,fits", [
    ("multiclass", 10, "bce_kd", "kl"), ("binary", 2, "bce_kd", "kl"),
    ("multilabel", 4, "kl", "bce_kd"), ("binary", 1, "kl", "bce_kd"),
])
def test_soft_loss_that_does_not_fit_the_task_is_refused(tmp_path, kind, classes, loss, fits):
    p = tmp_path / "r.yaml"
    p.write_text(f"name: t\ntask: {{kind: {kind}, num_classes: {classes}}}\n"
                 "teacher: {arch: resnet18, train: {epochs: 1}}\nstudent: {arch: mobilenetv3_small_050}\n"
                 f"distill: {{soft_loss: {loss}}}\n")
    with pytest.raises(KdtoolError) as err:
        load_recipe(p)
    assert err.value.exit_code == 2 and f"distill.soft_loss: {loss}" in err.value.message
    assert f"use soft_loss: {fits}" in err.value.message
    p.write_text(p.read_text().replace(f"soft_loss: {loss}", f"soft_loss: {fits}"))
    assert load_recipe(p)[0].distill.soft_loss == fits


def test_time_shift_rolls_audio():
    from compress.data.loader import augment_batch
    from recipes.schema import AugmentConfig, DataConfig

    audio = torch.linspace(0, 1, 1600).repeat(4, 1)
    shifted, _ = augment_batch(audio, DataConfig(augment=AugmentConfig(time_shift=0.25)), torch.Generator())
    plain, _ = augment_batch(audio, DataConfig(), torch.Generator())
    assert torch.equal(plain, audio) and not torch.equal(shifted, audio)
