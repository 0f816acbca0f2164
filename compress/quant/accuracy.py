"""Accuracy-aware static INT8: keep the layers int8 hurts most in float until retention holds.

    qm, evaluation = quantize_with_floor(student, Int8StaticConfig(min_retention=0.99), qi, val_loader, task)

1. Static PTQ of the whole model, scored on validation. At or above `config.min_retention` (a fraction
   of the fp32 student's primary metric), with its decisions agreeing with the fp32 student's on at
   least `INT8_MIN_AGREEMENT` of the samples (export parity's int8 bound, so that a model meeting the
   floor does not then fail parity), it is kept as it is.
2. Otherwise each unit (a Conv/Linear layer; a block when the model has more than `MAX_UNITS` of
   them) is quantized on its own, everything else left in float, and its output error against the
   fp32 student on up to `SCORING_SAMPLES` validation samples is its sensitivity (AIMET's quant
   analyzer does this per layer). Quantizing one at a time, not leaving one out: with two ruinous
   layers, leaving either out removes nothing (the other still ruins the output) and both score 0.
3. The most sensitive units go back to float in growing sets (1, 2, 3, 4, 6, 8, ... of them, at
   most half of the units) until the validation metric reaches the floor and the agreement its
   bound; the smallest set that does is the result. When none does, the plain PTQ model is kept and
   the report names the costliest units (QAT, when the recipe runs it, is the next step: the export
   takes whichever scored higher).
4. Units that are blocks can be too coarse: when no set of them reaches the floor, the `REFINE`
   costliest blocks are split into their parts one level down (their layers, or sub-blocks), each
   part is scored alone the same way, and step 3 is run again on the finer ranking (a block's
   harmless layers need not stay float with its ruinous one, and the cap of half the units grows).

The trials never write files: PT2E trials reuse one `torch.export` graph, ONNX Runtime trials one
pre-processed fp32 file, and every trial calibrates on the same cached batches.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.progress import console
from compress.core.tasks import INT8_MIN_AGREEMENT
from compress.quant.common import input_batches
from compress.quant.configs import Int8StaticConfig, QuantInputs, QuantizedModel
from compress.quant.evaluate import collect_outputs, evaluate_quantized
from compress.quant.formats import file_int8
from compress.quant.static import quantize_static, with_kept_float

MAX_UNITS = 24
"""More Conv/Linear layers than this are grouped into blocks (one calibration trial per unit)."""
SCORING_SAMPLES = 256
"""Validation samples the leave-one-out sensitivity is scored on."""
REFINE = 2
"""Costliest blocks split into their parts when no set of whole blocks reaches the floor."""

Runner = Callable[[torch.Tensor], torch.Tensor]


def quantize_with_floor(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs, validation: Iterable,
                        task: Any) -> tuple[QuantizedModel, dict[str, Any]]:
    """Static INT8 that keeps the most sensitive layers in float until `config.min_retention` holds.

    Args:
        model: the fp32 student (not modified).
        config: static config; `min_retention` None quantizes as asked and only records the retention.
        qi: example, calibration loader, preprocessing, output folder.
        validation: loader of (raw, target, index) batches the floor is checked on.
        task: the task (primary metric, retention).

    Returns:
        The quantized model (meta `accuracy_aware` filled and written) and its validation evaluation.
    """
    config = with_kept_float(model, config)
    qm = quantize_static(model, config, qi)
    evaluation = evaluate_quantized(qm, model, validation, qi.preprocess, task)
    before, agreed = evaluation.get("retention"), evaluation.get("agreement")
    floor = config.min_retention
    report: dict[str, Any] = {"min_retention": floor, "min_agreement": INT8_MIN_AGREEMENT,
                              "retention_before": before, "retention_after": before,
                              "agreement_before": agreed, "agreement_after": agreed,
                              "float_modules": list(config.float_modules), "sensitivity": []}
    met = meets_floor(before, agreed, floor)
    if floor is None or before is None or met or not searchable(config):
        report["status"] = "not checked" if floor is None or before is None else (
            "met" if met else f"not met: backend {config.backend} cannot keep layers in float")
        return _record(qm, report, model, qi), evaluation
    units = [u for u in sensitivity_units(model, MAX_UNITS)
             if not any(u == f or u.startswith(f"{f}.") for f in config.float_modules)]  # already float
    console.print(f"quantize static/{config.backend}: retention {before:.4f} (floor {floor}), agreement "
                  f"{agreed:.3f} (bound {INT8_MIN_AGREEMENT}); measuring the sensitivity of {len(units)} units")
    with tempfile.TemporaryDirectory(prefix="kdtool-sens-") as scratch:
        ranked, chosen = _search(_trial_factory(model, config, qi, Path(scratch)), model, units, validation,
                                 qi.preprocess, task, evaluation, floor)
        report["sensitivity"] = [{"module": name, "error_alone": round(score, 6)} for name, score in ranked[:10]]
    if chosen is None:
        report["status"] = "not met: " + ", ".join(name for name, _ in ranked[:3]) + " cost the most"
        console.print(f"[yellow]quantize static/{config.backend}: the floor {floor} is not reached with half "
                      f"the units in float; costliest: {', '.join(n for n, _ in ranked[:3])}[/]")
        return _record(qm, report, model, qi), evaluation
    config = dataclasses.replace(config, float_modules=(*config.float_modules, *chosen))
    qm = quantize_static(model, config, qi)
    evaluation = evaluate_quantized(qm, model, validation, qi.preprocess, task)
    after = evaluation.get("retention")
    report.update(retention_after=after, agreement_after=evaluation.get("agreement"),
                  float_modules=list(config.float_modules),
                  status="met" if meets_floor(after, evaluation.get("agreement"), floor)
                  else "not met after the final calibration")
    console.print(f"quantize static/{config.backend}: kept {', '.join(chosen)} in float: retention "
                  f"{before:.4f} -> {'n/a' if after is None else f'{after:.4f}'}")
    return _record(qm, report, model, qi), evaluation


def _search(trial, model: nn.Module, units: list[str], validation, preprocess, task, evaluation: dict[str, Any],
            floor: float) -> tuple[list[tuple[str, float]], tuple[str, ...] | None]:
    """Rank `units`, find the smallest float set; when none, refine the costliest blocks and search again."""
    inputs = _scoring_inputs(validation, preprocess)
    scores = task.scores if task.kind != "regression" else None
    ranked = rank_sensitivity(trial, units, inputs, model, scores=scores)
    chosen = _smallest_float_set(trial, model, [name for name, _ in ranked], validation, preprocess, task,
                                 evaluation, floor)
    split = {name: parts for name, _ in ranked[:REFINE] if len(parts := unit_parts(model, name)) > 1}
    if chosen is not None or not split:
        return ranked, chosen
    console.print(f"quantize: no set of whole blocks reached the floor; scoring the parts of {', '.join(split)}")
    finer = [item for item in ranked if item[0] not in split]
    for parts in split.values():
        finer += rank_sensitivity(trial, parts, inputs, model, scores=scores)
    finer.sort(key=lambda item: -item[1])
    chosen = _smallest_float_set(trial, model, [name for name, _ in finer], validation, preprocess, task,
                                 evaluation, floor)
    return finer, chosen


def unit_parts(model: nn.Module, unit: str) -> list[str]:
    """The parts of block `unit` one level down that hold Conv/Linear layers (descending through
    single-child levels); [] for a layer."""
    layers = [name for name, m in model.named_modules()
              if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear) and name.startswith(f"{unit}.")]
    depth = len(unit.split("."))
    while layers:
        depth += 1
        parts = list(dict.fromkeys(".".join(name.split(".")[:depth]) for name in layers))
        if len(parts) > 1 or parts == layers:
            return parts
    return []


def meets_floor(kept: float | None, agreement: float | None, floor: float | None) -> bool:
    """Retention at or above the floor and decisions agreeing with fp32 on `INT8_MIN_AGREEMENT` of them."""
    return (floor is not None and kept is not None and kept >= floor
            and agreement is not None and agreement >= INT8_MIN_AGREEMENT)


def sensitivity_units(model: nn.Module, limit: int = MAX_UNITS) -> list[str]:
    """Names of the Conv/Linear layers, or of the deepest blocks holding them when there are > `limit`."""
    layers = [name for name, m in model.named_modules()
              if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear) and name]
    if len(layers) <= limit:
        return layers
    depth = max(len(name.split(".")) for name in layers)
    while depth > 1:
        depth -= 1
        blocks = list(dict.fromkeys(".".join(name.split(".")[:depth]) for name in layers))
        if len(blocks) <= limit:
            return blocks
    return list(dict.fromkeys(name.split(".")[0] for name in layers))


def rank_sensitivity(trial: Callable[..., Runner], units: list[str], inputs: torch.Tensor,
                     model: nn.Module, scores: Callable[[torch.Tensor], torch.Tensor] | None = None
                     ) -> list[tuple[str, float]]:
    """Units by the output error each makes when it alone is quantized (most sensitive first).

    The error is the mean squared difference from the fp32 outputs over their variance (0: identical).
    With `scores` (a classification task's probabilities, `Task.scores`) it is measured on those
    instead, where decisions are made: on a trained wake-word MobileNetV3-Small the logits of its
    confident clips reach +-50, and raw-logit errors there (a unit that clips them from 50 to 40
    changes no decision) outranked the units that moved the borderline clips' probabilities.
    """
    project = scores or (lambda out: out)
    reference = project(_outputs(model.eval(), inputs))
    spread = reference.var().clamp_min(1e-12)

    def error(run: Runner) -> float:
        return float(((project(_outputs(run, inputs)) - reference) ** 2).mean() / spread)

    scored = []
    for i, name in enumerate(units):
        scored.append((name, error(trial(only=(name,)))))
        console.print(f"[dim]  sensitivity {i + 1}/{len(units)} {name}: {scored[-1][1]:+.4g}[/]")
    return sorted(scored, key=lambda item: -item[1])


def _outputs(run: Runner, inputs: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """`run` over `inputs` in batches (a real-size model at 256 samples would not fit at once)."""
    with torch.no_grad():
        return torch.cat([run(x).float() for x in inputs.split(batch)])


def _smallest_float_set(trial, model: nn.Module, ranked: list[str], validation, preprocess, task,
                        evaluation: dict[str, Any], floor: float) -> tuple[str, ...] | None:
    """The shortest prefix of `ranked` (sizes 1, 2, 3, 4, 6, 8, ...) whose model meets the floor."""
    from compress.core.tasks import retention

    primary = task.primary_metric
    reference = evaluation["fp32_metrics"][primary]
    fp32_outs, _ = collect_outputs(model, validation, preprocess)
    size = 1
    while size <= max(1, len(ranked) // 2):
        outs, targets = collect_outputs(trial(tuple(ranked[:size])), validation, preprocess)
        kept = retention(primary, task.metrics(outs, targets)[primary], reference)
        if meets_floor(kept, task.agreement(outs, fp32_outs), floor):
            return tuple(ranked[:size])
        size = size + 1 if size < 4 else size + size // 2
    return None


def _scoring_inputs(validation: Iterable, preprocess: Callable | None) -> torch.Tensor:
    return torch.cat(list(input_batches(validation, preprocess, SCORING_SAMPLES, "sensitivity inputs")))


def _trial_factory(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs,
                   scratch: Path) -> Callable[..., Runner]:
    """`trial(extra_float, only=())`: a runnable int8 model with `extra_float` (besides the config's) in
    float, or with only the modules `only` quantized."""
    batches = list(input_batches(qi.calibration, qi.preprocess, config.calibration_samples))
    if config.backend == "executorch":
        import copy

        from compress.quant.common import export_graph
        from compress.quant.pt2e import pt2e_calibrated

        graph = export_graph(copy.deepcopy(model).eval(), qi.example, "static").module()

        def pt2e_trial(extra: tuple[str, ...] = (), only: tuple[str, ...] = ()) -> Runner:
            trial_config = dataclasses.replace(config, float_modules=(*config.float_modules, *extra))
            return pt2e_calibrated(graph, trial_config, batches, only)[0]

        return pt2e_trial
    return file_int8(config).trials(model, config, qi, batches, scratch)


def searchable(config: Int8StaticConfig) -> bool:
    """Whether the backend's quantizer can leave named layers in float: PT2E can, and the file formats
    that say so (ONNX Runtime's `nodes_to_exclude`; CoreML compresses weights only)."""
    if config.backend in config.backends:
        return True
    return file_int8(config).searchable


def _record(qm: QuantizedModel, report: dict[str, Any], model: nn.Module, qi: QuantInputs) -> QuantizedModel:
    """Add the report (with the int8 share of conv/linear MACs) to the meta and rewrite meta.json."""
    from compress.core.atomic import write_json
    from compress.quant.common import META_FILE

    report["int8_compute_share"] = int8_compute_share(model, qi.example[:1], tuple(report["float_modules"]))
    qm.meta["accuracy_aware"] = report
    if qm.path is not None:
        write_json(qm.path.parent / META_FILE, qm.meta)
    return qm


def int8_compute_share(model: nn.Module, example: torch.Tensor, float_modules: tuple[str, ...]) -> float | None:
    """Share of the Conv/Linear multiply-accumulates (one sample) outside `float_modules`."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):
            def hook(mod, _inputs, out, name=name):
                per_output = mod.weight[0].numel()  # in/groups * kernel (conv) or in_features (linear)
                macs[name] = macs.get(name, 0) + out.numel() // max(out.shape[0], 1) * per_output
            hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    total = sum(macs.values())
    if not total:
        return None
    in_float = sum(v for k, v in macs.items() if any(k == f or k.startswith(f"{f}.") for f in float_modules))
    return round(1 - in_float / total, 4)
