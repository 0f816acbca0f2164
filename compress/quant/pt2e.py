"""PT2E quantization with the XNNPACK quantizer: its `.pt2` is what ExecuTorch lowers to int8 kernels.

Static: `torch.export` → `prepare_pt2e` (observers) → calibrate on training samples → `convert_pt2e`.
Dynamic: the same quantizer's dynamic config (linear layers; activation scales computed per batch).
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterable, Iterator
from typing import Any
from unittest import mock

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
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=is_dynamic,
                                               is_qat=is_qat)
    if is_dynamic:
        return _quantizer_class()().set_module_type(torch.nn.Linear, config)
    if calibration_method == "minmax" and not is_qat:
        config = _with_activation_observer(config, "MinMaxObserver")
    quantizer = _quantizer_class()().set_global(config)
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


CONV_BN_PATTERNS = ("conv_bn_relu", "conv_bn", "conv_transpose_bn_relu", "conv_transpose_bn")
"""The XNNPACK quantizer's patterns that match a convolution feeding a batch norm."""


@functools.cache
def _quantizer_class() -> type:
    """`XNNPACKQuantizer`, less its conv-BN patterns of a convolution kind that feeds no batch norm.

    Each of those 4 annotators traces 3 pattern graphs with `torch.export` on every `prepare_pt2e`
    (about 1 s on 2 cores), and the accuracy-aware search prepares once per trial. A conv-BN pattern
    needs a convolution whose output is a batch norm's input; post-training `prepare_pt2e` folds every
    such pair before annotating, so there they never match; QAT keeps its pairs, and the patterns of
    their kind (convolution or transposed convolution) run.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.utils import _is_conv_node, _is_conv_transpose_node

    class Quantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            feeding = [n.args[0] for n in model.graph.nodes if "batch_norm" in str(n.target) and n.args
                       and isinstance(n.args[0], torch.fx.Node)]  # the nodes whose output a batch norm reads
            skip = set()
            if not any(_is_conv_node(n) for n in feeding):
                skip |= {"conv_bn_relu", "conv_bn"}
            if not any(_is_conv_transpose_node(n) for n in feeding):
                skip |= {"conv_transpose_bn_relu", "conv_transpose_bn"}
            if skip:
                self.SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if p.name not in skip]
            try:
                return super().annotate(model)
            finally:
                self.__dict__.pop("SUPPORTED_PATTERNS", None)

    return Quantizer


def _with_activation_observer(config, observer: str):
    """The quantization config with another observer class for its (static) activations."""
    import dataclasses

    from torchao.quantization.pt2e import observer as observers

    ctr = getattr(observers, observer).with_args(eps=2**-12)
    act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=ctr)
    return dataclasses.replace(config, input_activation=act, output_activation=act)


def _conv_kinds(graph: torch.fx.GraphModule) -> set[str]:
    """The aten op names in `graph` ("conv2d", "conv_transpose1d", ...; "convolution" is any kind)."""
    return {getattr(n.target, "_opname", "") for n in graph.graph.nodes if n.op == "call_function"}


def _present_kinds_only(helper: Any) -> Any:
    """torchao's per-convolution-kind conv-BN helper, run only for kinds the graph holds."""

    def run(m: torch.fx.GraphModule, conv_fn: Any, *args: Any, **kwargs: Any) -> torch.fx.GraphModule:
        kinds = _conv_kinds(m)
        if conv_fn.__name__ not in kinds and "convolution" not in kinds:
            return m  # no convolution of this kind: none of its patterns can match
        return helper(m, conv_fn, *args, **kwargs)

    return run


def _skip_fold(m: torch.fx.GraphModule) -> torch.fx.GraphModule:
    m.graph.eliminate_dead_code()
    m.recompile()
    return m


@contextlib.contextmanager
def _conv_bn_traces(qat: bool) -> Iterator[None]:
    """While torchao prepares or converts: its conv-BN pattern traces only where they can match.

    torchao traces small pattern graphs with `torch.export` (0.1-0.3 s each) to find conv-BN pairs,
    for each of 4 convolution kinds: 3 to fuse them in `prepare_qat_pt2e`, 24 to fold them in
    `convert_pt2e` (about 14 s on 2 cores for any graph holding a batch norm, whatever its size).
    After QAT only the kinds present in the graph are traced. After post-training `prepare_pt2e`
    nothing is: it folded every conv-BN pair already, and a batch norm left in the graph (after a
    log-mel front end, on the input) matches no pattern. The graph and outputs are torchao's own
    (`tests/compress/test_quantize.py`, slow). Another torchao without these functions runs untouched.
    """
    from torchao.quantization.pt2e import qat_utils, quantize_pt2e

    swaps = [(quantize_pt2e, "_fold_conv_bn_qat", lambda fold: _skip_fold)] if not qat else [
        (qat_utils, name, _present_kinds_only) for name in ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")]
    with contextlib.ExitStack() as stack:
        for module, name, wrap in swaps:
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, wrap(getattr(module, name))))
        yield


def convert(prepared: torch.fx.GraphModule, qat: bool = False, fold_quantize: bool = True,
            ) -> torch.fx.GraphModule:
    """torchao's `convert_pt2e` of a graph `prepare_pt2e` (or with `qat`, `prepare_qat_pt2e`) made,
    without tracing conv-BN patterns that cannot match it (`_conv_bn_traces`)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    with _conv_bn_traces(qat):
        return convert_pt2e(prepared, fold_quantize=fold_quantize)


def prepare_qat(graph: torch.fx.GraphModule, quantizer: Any) -> torch.fx.GraphModule:
    """torchao's `prepare_qat_pt2e`, tracing conv-BN patterns only for the convolution kinds in `graph`."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    with _conv_bn_traces(qat=True):
        return prepare_qat_pt2e(graph, quantizer)


def pt2e_calibrated(graph: torch.fx.GraphModule, config: Int8StaticConfig, batches: Iterable[torch.Tensor],
                    only_modules: tuple[str, ...] = ()) -> tuple[torch.fx.GraphModule, int]:
    """Observers on a copy of the exported `graph`, calibrated on `batches`, converted; samples seen.

    `only_modules`: quantize these modules alone (default: the whole graph but `config.float_modules`).
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    quantizer = xnnpack_quantizer(config.per_channel, float_modules=tuple(config.float_modules),
                                  calibration_method=config.calibration_method, only_modules=only_modules,
                                  fused_with=frozenset(fused_followers(graph, only_modules)))
    prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
    calibrated = count_calibrated(batches, prepared)
    return convert(prepared), calibrated


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
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    graph = export_graph(copy.deepcopy(model).eval(), qi.example, "dynamic").module()
    prepared = prepare_pt2e(graph, xnnpack_quantizer(per_channel=True, is_dynamic=True))
    prepared(qi.example)  # dynamic observers only record weights; one pass inserts the q/dq pattern
    notes = ["XNNPACK dynamic quantization covers linear layers; convolutions stay fp32 (static covers them)"]
    return finish_pt2e(convert(prepared), qi, config, None,
                       "mode static (it quantizes convolutions too)", fp32_mb, notes)
