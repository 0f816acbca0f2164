"""Decompose the ops a converter lacks, for that converter only, and say so on the artifact.

A converter that takes a `torch.export` program (coremltools, ...) may have no translation for an
ATen op that torch itself can write in simpler ops: ConvNeXt-V2's GRN layer exports `aten.addcmul`,
and coremltools 9 stops with "Unsupported fx node addcmul". `convert_decomposing` converts; on a
failure whose message names ops of the graph with a decomposition in torch's core ATen table
(`torch._decomp.core_aten_decompositions()`), it decomposes those ops alone
(`ExportedProgram.run_decompositions`) and converts again. The other formats keep the program as
it was. Where no decomposition exists, the converter's error stands.

The decomposed program is checked against the model in torch (`max_abs`, the converted artifact's
own parity is checked afterwards like every other's), and `decomposition_facts` gives the
`Artifact.info` entries: `decomposed` (ops, the converter's message, max_abs) and a `notes` line
the report card shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

import torch

T = TypeVar("T")

MAX_ROUNDS = 8
"""Conversion attempts at most: each one may name another op the converter lacks."""


def decomposition_of(op: Any) -> Callable | None:
    """torch's decomposition of ATen overload `op` into core ATen ops (`core_aten_decompositions`), or None.

    The core ATen table only: the wider `decomposition_table` lowers to `prims` ops, which converters
    lack more often than the op itself (`group_norm` became `prims::var`, unknown to coremltools 9)."""
    from torch._decomp import core_aten_decompositions

    core = core_aten_decompositions()
    return core[op] if op in core else None


def _words(error: BaseException) -> set[str]:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))


def _graph_ops(program: torch.export.ExportedProgram) -> set[Any]:
    return {n.target for n in program.graph.nodes
            if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}


def named_ops(program: torch.export.ExportedProgram, error: BaseException) -> list[Any]:
    """The ATen ops of `program` the converter's message names (its first line, as words: `addcmul` in
    "Unsupported fx node addcmul") that torch can decompose."""
    names = _words(error)
    return sorted((op for op in _graph_ops(program) if op._opname in names and decomposition_of(op) is not None),
                  key=str)


def convert_decomposing(program: torch.export.ExportedProgram, convert: Callable[[torch.export.ExportedProgram], T]
                        ) -> tuple[T, torch.export.ExportedProgram, list[str], str | None]:
    """`convert(program)`, decomposing the ops each failure names until it converts.

    Args:
        program: the exported program the converter takes.
        convert: the converter call; raises on an op it lacks.

    Returns:
        (converted, the program converted, the ops decomposed as `aten.<op>.<overload>`, the
        converter's first failure line or None).

    Raises:
        The converter's own error when it names no op torch can decompose. When a decomposed program
        fails too, its error if that names an op of the original program (a second op the converter
        lacks), else the first error (the decomposition brought in ops the converter lacks as well).
    """
    decomposed: list[str] = []
    original = {op._opname for op in _graph_ops(program)}
    first: BaseException | None = None
    for _ in range(MAX_ROUNDS):
        try:
            converted = convert(program)
        except Exception as e:  # converters raise many types; only a named, decomposable op is retried
            ops = [op for op in named_ops(program, e) if str(op) not in decomposed]
            if not ops:
                if first is not None and not (_words(e) & original):
                    raise first from e
                raise
            first = first or e
            program = program.run_decompositions({op: decomposition_of(op) for op in ops})
            decomposed += [str(op) for op in ops]
            continue
        message = (str(first).strip().splitlines() or [type(first).__name__])[0] if first is not None else None
        return converted, program, decomposed, message
    raise first  # MAX_ROUNDS decompositions did not make it convert


def decomposition_facts(converter: str, decomposed: list[str], message: str | None, model: torch.nn.Module,
                        program: torch.export.ExportedProgram, example: torch.Tensor) -> dict[str, Any]:
    """`Artifact.info` entries for a conversion that needed decompositions ({} when none did).

    `max_abs`: the decomposed program against the model on `example`, in torch: what the rewrite
    itself changed, known even where the artifact cannot run (CoreML off macOS).
    """
    if not decomposed:
        return {}
    with torch.no_grad():
        expected, got = model(example), program.module()(example)
    max_abs = float((got.float() - expected.float()).abs().max()) if torch.is_tensor(got) else None
    ops = ", ".join(op.split(".")[1] if op.startswith("aten.") else op for op in decomposed)
    note = (f"{converter} lacks {ops}: torch decomposed it into simpler ops before conversion "
            f"(decomposed program vs model max abs {max_abs:.2g})" if max_abs is not None else
            f"{converter} lacks {ops}: torch decomposed it into simpler ops before conversion")
    return {"decomposed": {"ops": decomposed, "converter_message": message, "max_abs": max_abs},
            "notes": [note]}
