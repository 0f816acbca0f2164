"""The one place where the training loss is made: named KD terms, weighted and summed.

    total = alpha · hard + (1 − alpha) · soft + Σᵢ weightᵢ · termᵢ

- hard: `task.hard_loss(student_output, targets)` (CE / BCE / MSE) over the labeled rows; rows of
  the transfer set (unlabeled, `compress.data.transfer`) learn from the soft and feature terms only.
- soft: response KD on the final outputs, `distill.soft_loss` or the task's default (kl, bce_kd,
  mse). `soft_loss: none` switches it off (then the (1 − alpha) share is simply absent).
- termᵢ: each `distill.terms` entry by its name (fitnet, attention, rkd, sp, dkd, kl, ...), on a
  student/teacher layer pair, or on the final outputs when both layers are left out.

Every term is returned by name so the trainer logs them all. Without a distill config or a
teacher output (teacher training, student baseline) only {"hard", "total"} is returned.

The emotion notebook's `0.5·response + 0.3·feature + 0.2·attention` (T = 4) is written as::

    distill:
      temperature: 4
      alpha: 0.0            # no hard-label share
      soft_loss: none       # the response term is listed below with its own weight
      terms:
        - {name: kl, weight: 0.5}                                             # response, on outputs
        - {name: fitnet, weight: 0.3, student_layer: blocks.3, teacher_layer: layer3}
        - {name: attention, weight: 0.2, student_layer: blocks.3, teacher_layer: layer3}

Adapters for layer pairs are sized by a dry run (`compress.distill.adapters.probe`) in `__init__` and
held in `self.adapters` (an `nn.ModuleDict`): `objective.parameters()` hands them to the
optimizer and `objective.state_dict()` checkpoints them. Student and teacher are *not*
submodules of the objective (move them to the device yourself; the objective's state holds only
adapters), so the exported student never carries an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from compress.core.errors import KdtoolError
from compress.core.tasks import Task
from compress.data.transfer import labeled_mask
from compress.distill.adapters import build_adapter, probe
from compress.distill.hooks import capture, find_layer
from compress.distill.losses import build_loss
from recipes.schema import DistillConfig

NO_SOFT_LOSS = "none"
"""`distill.soft_loss` value that switches the response-KD term off."""

ADAPTER_PARAMS = ("adapter_bn",)
"""Term params read by the adapter, not the loss (`adapter_bn: 1` adds BatchNorm after the 1x1 conv)."""


@dataclass(frozen=True)
class _Term:
    """One configured extra term: the key it is logged under and where its inputs come from."""

    key: str
    name: str
    weight: float
    student_layer: str | None
    teacher_layer: str | None
    adapter_bn: bool = False


class KDObjective(nn.Module):
    """Loss of one training step: hard, soft and extra KD terms, and their weighted total.

    Args:
        task: the task (hard loss, output kind).
        distill: the recipe's `distill` section; None for teacher training / student baseline.
        student: the student model (not modified; hooks are added only during forwards).
        teacher: the teacher model; may be None when its outputs come from a cache.
        student_example: one student input batch, for the adapter shape probe.
        teacher_example: one teacher input batch (its own preprocessing), for the probe.

    Raises:
        KdtoolError: unknown loss or parameter, unknown layer (listing valid names), a loss
            undefined for the task (e.g. DKD on binary), a layer pair that cannot be mapped, or
            feature terms without a teacher model.
    """

    needs_teacher_features: bool

    def __init__(self, task: Task, distill: DistillConfig | None, student: nn.Module, teacher: nn.Module | None,
                 student_example: Tensor | None = None, teacher_example: Tensor | None = None) -> None:
        super().__init__()
        self.task = task
        self.distill = distill
        self._models = {"student": student, "teacher": teacher}  # a plain dict: not submodules
        self.losses = nn.ModuleDict()
        self.adapters = nn.ModuleDict()
        self.terms: list[_Term] = []
        if distill is not None:
            soft = distill.soft_loss or task.default_soft_loss
            if soft != NO_SOFT_LOSS:
                self.losses["soft"] = build_loss(soft)
                self.losses["soft"].check_task(task)
            self._add_terms(distill.terms)
        self.student_layers = list(dict.fromkeys(t.student_layer for t in self.terms if t.student_layer))
        self.teacher_layers = list(dict.fromkeys(t.teacher_layer for t in self.terms if t.teacher_layer))
        self.needs_teacher_features = bool(self.teacher_layers)
        for name in self.student_layers:
            find_layer(student, name, "student")
        if self.needs_teacher_features:
            if teacher is None:
                raise KdtoolError(f"distill.terms use teacher layer {self.teacher_layers[0]!r} but no "
                                  "teacher model is loaded",
                                  "feature terms need the teacher itself, not a cache of its outputs")
            for name in self.teacher_layers:
                find_layer(teacher, name, "teacher")
        if teacher is not None:
            teacher.eval()
        if self.terms:
            self._probe_and_build_adapters(student_example, teacher_example)

    @property
    def student(self) -> nn.Module:
        """The student model."""
        return self._models["student"]

    @property
    def teacher(self) -> nn.Module | None:
        """The teacher model (None when distilling from a cache or not distilling)."""
        return self._models["teacher"]

    def _add_terms(self, configs: list[Any]) -> None:
        """Build each configured term's loss; check names, params, layer pairing and the task."""
        used: dict[str, int] = {}
        for i, cfg in enumerate(configs):
            where = f"distill.terms[{i}] ({cfg.name})"
            if (cfg.student_layer is None) != (cfg.teacher_layer is None):
                raise KdtoolError(f"{where} names only one of student_layer/teacher_layer",
                                  "give both layers, or neither to apply the term to the final outputs")
            params = {k: v for k, v in cfg.params.items() if k not in ADAPTER_PARAMS}
            try:
                loss = build_loss(cfg.name, params)
            except KdtoolError as err:
                raise KdtoolError(f"{where}: {err.message}", err.hint) from None
            if "adapter_bn" in cfg.params and not loss.needs_adapter:
                raise KdtoolError(f"{where}: adapter_bn is set but {cfg.name!r} uses no adapter",
                                  "remove adapter_bn; only fitnet-style terms have adapters")
            if cfg.student_layer is None:
                loss.check_task(self.task)
            used[cfg.name] = used.get(cfg.name, 0) + 1
            key = cfg.name if used[cfg.name] == 1 else f"{cfg.name}_{used[cfg.name]}"
            self.losses[key] = loss
            self.terms.append(_Term(key, cfg.name, float(cfg.weight), cfg.student_layer, cfg.teacher_layer,
                                    bool(cfg.params.get("adapter_bn", 0))))

    def _probe_and_build_adapters(self, student_example: Tensor | None,
                                  teacher_example: Tensor | None) -> None:
        """Dry-run both models, size an adapter per term, and try each term once on the probed tensors."""
        if student_example is None or (self.teacher is not None and teacher_example is None):
            raise KdtoolError("the KD objective needs example inputs to size its adapters",
                              "pass student_example and teacher_example (one batch each)")
        s_out, s_feats = probe(self.student, self.student_layers, student_example, "student")
        if self.teacher is None:  # output terms from a cache: shapes are checked on the first batch
            return
        t_out, t_feats = probe(self.teacher, self.teacher_layers, teacher_example, "teacher")
        targets = torch.zeros(len(s_out), dtype=torch.long, device=s_out.device)
        was_training = self.training
        self.eval()  # a fresh adapter BatchNorm must not learn from the probe batch
        try:
            for term in self.terms:
                s = s_feats[term.student_layer] if term.student_layer else s_out
                t = t_feats[term.teacher_layer] if term.teacher_layer else t_out
                s_name, t_name = term.student_layer or "output", term.teacher_layer or "output"
                if self.losses[term.key].needs_adapter:
                    adapter = build_adapter(s.shape, t.shape, student_layer=s_name, teacher_layer=t_name,
                                            batchnorm=term.adapter_bn)
                    self.adapters[term.key] = adapter.to(s.device).eval()
                try:
                    with torch.no_grad():
                        self._term_value(term, s.float(), t.float(), 1.0, targets)
                except KdtoolError as err:
                    raise KdtoolError(f"distill term {term.key!r} (student {s_name!r} {tuple(s.shape)}, "
                                      f"teacher {t_name!r} {tuple(t.shape)}): {err.message}",
                                      err.hint) from None
        finally:
            self.train(was_training)

    def _term_value(self, term: _Term, s: Tensor, t: Tensor, temperature: float,
                    targets: Tensor | None) -> Tensor:
        """One term's loss: adapter on the student side (if any), teacher side without grad."""
        if term.key in self.adapters:
            s = self.adapters[term.key](s)
        return self.losses[term.key](s, t.detach(), temperature=temperature, targets=targets)

    def student_forward(self, x: Tensor, runner: nn.Module | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the student, capturing the layers the terms use (with grad).

        Args:
            x: the student's input batch.
            runner: what to call instead of the bare student (e.g. its DDP or compiled wrapper);
                the hooks sit on the bare student's layers.

        Returns:
            (output, {layer name: feature}).
        """
        run = runner if runner is not None else self.student
        if not self.student_layers:
            return run(x), {}
        with capture(self.student, self.student_layers, "student") as feats:
            out = run(x)
        return out, dict(feats)

    @torch.no_grad()
    def teacher_forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the teacher in eval mode without grad, capturing the layers the terms use.

        Args:
            x: the teacher's input batch (its own preprocessing).

        Returns:
            (output, {layer name: feature}).
        """
        if self.teacher is None:
            raise KdtoolError("teacher_forward called without a teacher model",
                              "build the objective with a teacher")
        if self.teacher.training:
            self.teacher.eval()
        if not self.teacher_layers:
            return self.teacher(x), {}
        with capture(self.teacher, self.teacher_layers, "teacher") as feats:
            out = self.teacher(x)
        return out, dict(feats)

    def _hard(self, s_out: Tensor, targets: Tensor) -> Tensor:
        """The hard loss over the labeled rows (mean over them); exactly 0, with zero gradient, without any.

        Transfer-set rows (`compress.data.transfer`) carry no label: they train on the soft and
        feature terms only.
        """
        mask = labeled_mask(targets)
        if bool(mask.all()):
            return self.task.hard_loss(s_out, targets)
        if not bool(mask.any()):
            return s_out.float().sum() * 0.0
        return self.task.hard_loss(s_out[mask], targets[mask])

    def forward(self, s_out: Tensor, s_feats: dict[str, Tensor], t_out: Tensor | None,
                t_feats: dict[str, Tensor] | None, targets: Tensor, *, alpha: float,
                temperature: float) -> dict[str, Tensor]:
        """Every loss term by name, and "total" = alpha·hard + (1 − alpha)·soft + Σ weightᵢ·termᵢ.

        Args:
            s_out: student output (N, K).
            s_feats: student features from `student_forward`.
            t_out: teacher output (N, K), live or from a cache; None when not distilling.
            t_feats: teacher features from `teacher_forward` (empty when `t_out` is cached).
            targets: ground-truth labels.
            alpha: weight of the hard loss this step (schedules apply before).
            temperature: KD temperature this step.

        Returns:
            {"hard", "soft" (if any), one entry per term key, "total"}: fp32 scalars.

        Raises:
            KdtoolError: a feature term has no teacher feature (a logits cache cannot serve it).
        """
        hard = self._hard(s_out.float(), targets)  # AMP: fp16/bf16 logits, the loss in fp32
        out: dict[str, Tensor] = {"hard": hard}
        if self.distill is None or t_out is None:
            out["total"] = hard
            return out
        total = alpha * hard
        if "soft" in self.losses:
            out["soft"] = self.losses["soft"](s_out, t_out.detach(), temperature=temperature, targets=targets)
            total = total + (1.0 - alpha) * out["soft"]
        t_feats = t_feats or {}
        for term in self.terms:
            s = s_feats[term.student_layer] if term.student_layer else s_out
            if term.teacher_layer and term.teacher_layer not in t_feats:
                raise KdtoolError(f"distill term {term.key!r} needs teacher layer {term.teacher_layer!r}, "
                                  "which was not captured",
                                  "a teacher-output cache cannot serve feature terms: "
                                  "disable distill.cache or run the teacher online")
            t = t_feats[term.teacher_layer] if term.teacher_layer else t_out
            out[term.key] = self._term_value(term, s, t, temperature, targets)
            total = total + term.weight * out[term.key]
        out["total"] = total
        return out
