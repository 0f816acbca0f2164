"""PT2E quantization with the XNNPACK quantizer: its `.pt2` is what ExecuTorch lowers to int8 kernels.

Static: `torch.export` → `prepare_pt2e` (observers) → calibrate on training samples → `convert_pt2e`.
Dynamic: the same quantizer's dynamic config (linear layers; activation scales computed per batch).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from compress.quant.common import (
    count_calibrated,
    export_graph,
    input_batches,
    int8_census_torch,
    provenance,
    require_quantized,
    save_torch_quantized,
    strip_unused_attributes,
)
from compress.quant.configs import Int8DynamicConfig, Int8StaticConfig, QuantConfig, QuantInputs, QuantizedModel


def xnnpack_quantizer(per_channel: bool, is_dynamic: bool = False, is_qat: bool = False,
                      float_modules: tuple[str, ...] = (), calibration_method: str | None = None,
                      only_modules: tuple[str, ...] = (), fused_with: frozenset[str] = frozenset()):
    """The XNNPACK quantizer with ExecuTorch's symmetric int8 config (per-channel weights by default).

    The dynamic config is set on `nn.Linear` modules only. Set globally it also quantizes standalone
    convolutions dynamically, and XNNPACK (executorch 1.5.1) then fails at run time on some of them
    (MobileViTv2's 1x1 convs fed by a broadcast multiply or F.fold: "Propagating input shapes failed:
    xnn_status_invalid_parameter", error 0x1); the program lowers but cannot run.
    Convolutions are what static PTQ is for.

    `float_modules` (module names; a block covers its children) are left unannotated, so they run in
    float: the quantizer's own `set_module_name` takes no "no config" value (executorch 1.5.1), its
    filter function does; `only_modules`, when given, quantizes those modules alone (the sensitivity
    trials of `compress.quant.accuracy`). The quantizer asks the filter about every node of a
    pattern, the weight's `get_attr` too, and those carry no module stack: they pass, or no
    convolution would ever be quantized alone (measured: MobileNetV3-Small's stem, head and 4 of
    its blocks scored 0 in the trials, so they were never chosen to stay float); `fused_with`
    names the BatchNorm/ReLU nodes that go with them (`fused_followers`).
    `calibration_method` "minmax" swaps the activation observer for `MinMaxObserver` (default:
    XNNPACK's `HistogramObserver`).
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=is_dynamic,
                                               is_qat=is_qat)
    if is_dynamic:
        return XNNPACKQuantizer().set_module_type(torch.nn.Linear, config)
    if calibration_method == "minmax" and not is_qat:
        config = _with_activation_observer(config, "MinMaxObserver")
    quantizer = XNNPACKQuantizer().set_global(config)
    if not float_modules and not only_modules:
        return quantizer
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    in_float = [get_module_name_filter(name) for name in float_modules]
    in_only = [get_module_name_filter(name) for name in only_modules]
    return quantizer.set_filter_function(
        lambda node: not any(f(node) for f in in_float)
        and (not in_only or not node.meta.get("nn_module_stack") or any(f(node) for f in in_only)
             or node.name in fused_with))


FUSED_AFTER = ("aten.batch_norm.", "aten._native_batch_norm_legit", "aten.relu.", "aten.relu_.", "aten.hardtanh.",
               "aten.hardtanh_.", "getitem")
"""Ops the XNNPACK quantizer annotates in one pattern with the conv/linear before them (conv-bn-relu)."""


def fused_followers(graph: torch.fx.GraphModule, modules: tuple[str, ...]) -> set[str]:
    """Names of the BatchNorm/ReLU nodes that directly follow a node of `modules`, in a chain.

    The quantizer annotates conv-bn-relu as one pattern and skips a conv whose only user is a ReLU,
    so a conv quantized alone must bring the BatchNorm and activation after it, wherever those
    modules sit (timm's `conv_stem` is followed by `bn1`, a sibling).
    """
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    if not modules:
        return set()
    filters = [get_module_name_filter(name) for name in modules]
    todo = [n for n in graph.graph.nodes if n.op == "call_function" and any(f(n) for f in filters)]
    followers: set[str] = set()
    while todo:
        node = todo.pop()
        if len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.name not in followers and user.op == "call_function" and str(user.target).startswith(FUSED_AFTER):
            followers.add(user.name)
            todo.append(user)
    return followers


def _with_activation_observer(config, observer: str):
    """The quantization config with another observer class for its (static) activations."""
    import dataclasses

    from torchao.quantization.pt2e import observer as observers

    ctr = getattr(observers, observer).with_args(eps=2**-12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def pt2e_calibrated(graph: torch.fx.GraphModule, config: Int8StaticConfig, batches: Iterable[torch.Tensor],
                    only_modules: tuple[str, ...] = ()) -> tuple[torch.fx.GraphModule, int]:
    """Observers on a copy of the exported `graph`, calibrated on `batches`, converted; samples seen.

    `only_modules`: quantize these modules alone (default: the whole graph but `config.float_modules`).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xnnpack_quantizer(config.per_channel, float_modules=tuple(config.float_modules),
                                  calibration_method=config.calibration_method, only_modules=only_modules,
                                  fused_with=frozenset(fused_followers(graph, only_modules)))
    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    calibrated = count_calibrated(batches, prepared)
    return convert_pt2e(prepared), calibrated


def finish_pt2e(converted: nn.Module, qi: QuantInputs, config: QuantConfig, calibrated: int | None, instead: str,
                fp32_mb: float, notes: list[str] | None = None, **facts: Any) -> QuantizedModel:
    """Strip the float leftovers, check int8 weights are present, re-export, save and record provenance.

    `facts` are extra meta entries (e.g. QAT's per-epoch loss history).
    """
    converted = strip_unused_attributes(converted)
    census = int8_census_torch(converted)
    require_quantized(census, config.mode, config.backend, instead)
    program = export_graph(converted, qi.example, config.mode)
    meta = provenance(config, qi.seed, calibrated, ("executorch",), notes,
                      weights="int8 symmetric " + ("per-channel" if isinstance(config, Int8DynamicConfig)
                                                   or config.per_channel else "per-tensor"),
                      activations="int8 dynamic (per batch)" if config.mode == "dynamic" else "int8 static",
                      int8=census, **facts)
    qm = QuantizedModel(config.mode, config.backend, module=converted, program=program, meta=meta)
    return save_torch_quantized(qm, qi.out, fp32_mb)


def pt2e_static(model: nn.Module, config: Int8StaticConfig, qi: QuantInputs,
                fp32_mb: float) -> QuantizedModel:
    """Static PTQ: observers calibrated on `config.calibration_samples` training samples, then convert."""
    if qi.calibration is None:
        from compress.core.errors import KdtoolError

        raise KdtoolError("quantize static: no calibration data given", "pass calibration=<training loader>")
    graph = export_graph(copy.deepcopy(model).eval(), qi.example, "static").module()
    batches = input_batches(qi.calibration, qi.preprocess, config.calibration_samples)
    converted, calibrated = pt2e_calibrated(graph, config, batches)
    notes = [] if calibrated >= config.calibration_samples else [
        f"only {calibrated} calibration samples available (asked {config.calibration_samples})"]
    if config.float_modules:
        notes.append(f"kept in float: {', '.join(config.float_modules)}")
    return finish_pt2e(converted, qi, config, calibrated, "mode dynamic with backend onnx", fp32_mb, notes)


def pt2e_dynamic(model: nn.Module, config: Int8DynamicConfig, qi: QuantInputs,
                 fp32_mb: float) -> QuantizedModel:
    """Dynamic int8 for ExecuTorch: XNNPACK's dynamic config quantizes linear layers (convs stay fp32)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = export_graph(copy.deepcopy(model).eval(), qi.example, "dynamic").module()
    prepared = prepare_pt2e(graph, xnnpack_quantizer(per_channel=True, is_dynamic=True))
    prepared(qi.example)  # dynamic observers only record weights; one pass inserts the q/dq pattern
    notes = ["XNNPACK dynamic quantization covers linear layers; convolutions stay fp32 (static covers them)"]
    return finish_pt2e(convert_pt2e(prepared), qi, config, None,
                       "mode static (it quantizes convolutions too)", fp32_mb, notes)
