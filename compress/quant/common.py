"""Shared pieces of every quantization mode: export, calibration batches, int8 census, provenance, saving."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path, write_json
from compress.core.errors import ExportError, KdtoolError
from compress.core.versions import package_versions
from compress.quant.configs import QuantConfig, QuantizedModel

META_SCHEMA = "kdtool.quantized/1"
META_FILE = "meta.json"
KEEP_FLOAT = "keep_float_in_int8"
"""A module class attribute: True keeps the module in float in INT8 (e.g. the log-mel front end)."""


def kept_float_modules(model: nn.Module) -> tuple[str, ...]:
    """Names of the modules whose class declares `keep_float_in_int8 = True` (see `KEEP_FLOAT`)."""
    return tuple(name for name, m in model.named_modules() if name and getattr(m, KEEP_FLOAT, False))


def export_graph(model: nn.Module, example: torch.Tensor, mode: str) -> torch.export.ExportedProgram:
    """`torch.export` with a dynamic batch dimension; a failure becomes an ExportError naming a way out."""
    if example.shape[0] < 2:
        raise KdtoolError(f"quantize: example batch has {example.shape[0]} sample(s)",
                          "give at least 2 so the batch dimension stays dynamic")
    try:
        return torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as e:  # torch.export raises many error types (Unsupported, UserError, ...)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ExportError(f"quantize {mode}: torch.export could not capture the model "
                          f"({type(e).__name__}: {first})",
                          "PT2E modes need an exportable model; use mode dynamic with backend torch "
                          "(torchao, no export) or backend onnx") from e


def save_program(program: torch.export.ExportedProgram | None) -> bytes:
    """Serialize an exported program (`torch.export.save`) to bytes."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def program_size_mb(model: nn.Module, example: torch.Tensor, mode: str) -> float:
    """Size in MB of the fp32 `model` serialized the way quantized torch models are (a `.pt2`)."""
    return len(save_program(export_graph(model, example, mode))) / 1e6


def input_batches(loader: Iterable, preprocess: Callable | None, limit: int | None = None,
                  description: str = "calibrating") -> Iterator[torch.Tensor]:
    """Preprocessed batches from a loader of (raw, target, index) or bare tensors, up to `limit` samples.

    Shows a rich progress bar; the last batch is trimmed so exactly `limit` samples are used.
    """
    from rich.progress import Progress

    seen = 0
    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=limit)
        for batch in loader:
            raw = batch[0] if isinstance(batch, list | tuple) else batch
            if limit is not None:
                raw = raw[: limit - seen]
            x = preprocess(raw) if preprocess is not None else raw
            seen += len(x)
            bar.advance(task, len(x))
            yield x
            if limit is not None and seen >= limit:
                return
    if seen == 0:
        raise KdtoolError("quantize: the calibration loader yielded no samples",
                          "check data.source and data.limit")


def count_calibrated(batches: Iterable[torch.Tensor], run: Callable[[torch.Tensor], Any]) -> int:
    """Run every batch through `run` (no grad) and return how many samples went through."""
    n = 0
    with torch.no_grad():
        for x in batches:
            run(x)
            n += len(x)
    return n


def strip_unused_attributes(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop parameters/buffers the converted graph no longer reads (the fp32 weights PT2E leaves behind).

    Without this a PT2E model keeps both the float and the int8 copy of each weight, and its `.pt2`
    is larger than the float model.
    """
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner_name, _, leaf = name.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            delattr(owner, leaf)
    gm.recompile()
    return gm


def int8_census_torch(module: nn.Module) -> dict[str, Any]:
    """Count int8 tensors in a quantized torch model and the share of weight elements stored in int8.

    Looks inside tensor subclasses (torchao's `Int8Tensor` keeps `qdata` int8); float tensors of rank
    >= 2 count as unquantized weights (biases and norms are rank 1 and stay float by design).
    """
    int8_tensors = int8_elems = float_weight_elems = 0
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    for t in tensors.values():
        inner = _inner_tensors(t)
        q = [x for x in inner if x.dtype in (torch.int8, torch.uint8) and x.dim() >= 2]
        if q:
            int8_tensors += len(q)
            int8_elems += sum(x.numel() for x in q)
        elif t.is_floating_point() and t.dim() >= 2:
            float_weight_elems += t.numel()
    return _census(int8_tensors, int8_elems, float_weight_elems)


def _inner_tensors(t: torch.Tensor) -> list[torch.Tensor]:
    data = t.data if isinstance(t, nn.Parameter) else t
    if hasattr(data, "__tensor_flatten__") and type(data) is not torch.Tensor:
        names, _ = data.__tensor_flatten__()
        return [x for n in names for x in _inner_tensors(getattr(data, n))]
    return [data]


def _census(int8_tensors: int, int8_elems: int, float_weight_elems: int) -> dict[str, Any]:
    total = int8_elems + float_weight_elems
    return {"int8_tensors": int8_tensors, "int8_weight_elements": int8_elems,
            "float_weight_elements": float_weight_elems,
            "quantized_share": round(int8_elems / total, 4) if total else 0.0}


def require_quantized(census: dict[str, Any], mode: str, backend: str, instead: str) -> None:
    """Raise an ExportError when a backend quantized nothing (e.g. dynamic INT8 on a net without Linear)."""
    if census["int8_tensors"] == 0:
        raise ExportError(f"quantize {mode} ({backend}): no weight was quantized to int8 "
                          f"({census['float_weight_elements']} float weight elements left)",
                          f"the backend found no layer it quantizes; use {instead}")


def versions(*extra: str) -> dict[str, str]:
    """Versions of torch, torchao and the named backend packages ("not installed" where absent)."""
    return package_versions(("torch", "torchao", *extra))


def provenance(config: QuantConfig, seed: int, calibration_samples: int | None, backend_pkgs: tuple[str, ...] = (),
               notes: list[str] | None = None, **facts: Any) -> dict[str, Any]:
    """The meta dict every quantized model carries. It never holds a speed: speed comes from the benchmark."""
    from dataclasses import asdict

    return {"schema": META_SCHEMA, "mode": config.mode, "backend": config.backend, "precision": "int8",
            "config": {"type": type(config).__name__, **asdict(config)},
            "calibration_samples": calibration_samples,
            "seed": seed, "versions": versions(*backend_pkgs), "notes": notes or [], **facts}


def save_torch_quantized(qm: QuantizedModel, out: Path | None, fp32_mb: float) -> QuantizedModel:
    """Write `model.pt2` (the exported quantized program) and meta.json atomically; fill size facts."""
    data = save_program(qm.program)
    if out is not None:
        out = Path(out)
        with atomic_path(out / "model.pt2") as tmp:
            tmp.write_bytes(data)
        qm.path = out / "model.pt2"
    finish_meta(qm, len(data) / 1e6, fp32_mb)
    return qm


def finish_meta(qm: QuantizedModel, size_mb: float, fp32_mb: float) -> None:
    """Add size facts to the meta and write meta.json beside the model (atomically) when it was saved."""
    qm.meta.update({"file": qm.path.name if qm.path else None, "size_mb": round(size_mb, 4),
                    "fp32_size_mb": round(fp32_mb, 4),
                    "compression": round(fp32_mb / size_mb, 3) if size_mb else None})
    if qm.path is not None:
        write_json(qm.path.parent / META_FILE, qm.meta)
