"""`export.decompose`: ops a converter lacks are decomposed for it alone; its own error stands otherwise."""

from __future__ import annotations

import pytest
import torch

from export.decompose import convert_decomposing, decomposition_facts, named_ops


class _Addcmul(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, x, x, value=0.5).sum(1)


def _program() -> torch.export.ExportedProgram:
    return torch.export.export(_Addcmul(), (torch.randn(2, 3),)).run_decompositions({})


def _lacking(*names: str):
    """A converter that lacks the ATen ops `names` (says so as coremltools does) and returns the op names."""
    def convert(program: torch.export.ExportedProgram) -> list[str]:
        ops = [n.target._opname for n in program.graph.nodes if n.op == "call_function"]
        for name in names:
            if name in ops:
                raise NotImplementedError(f"Unsupported fx node {name}, kind {name}\nmore detail")
        return ops
    return convert


def test_the_named_op_is_decomposed_and_the_facts_say_so():
    program = _program()
    converted, decomposed_program, decomposed, message = convert_decomposing(program, _lacking("addcmul"))
    assert "addcmul" not in converted and "mul" in converted
    assert decomposed == ["aten.addcmul.default"] and message == "Unsupported fx node addcmul, kind addcmul"
    facts = decomposition_facts("conv", decomposed, message, _Addcmul(), decomposed_program, torch.randn(2, 3))
    assert facts["decomposed"]["max_abs"] < 1e-6
    assert facts["notes"][0].startswith("conv lacks addcmul: torch decomposed it")
    assert decomposition_facts("conv", [], None, _Addcmul(), program, torch.randn(2, 3)) == {}


def test_a_converter_that_converts_gets_the_program_untouched():
    program = _program()
    _, same, decomposed, message = convert_decomposing(program, _lacking())
    assert same is program and decomposed == [] and message is None


def test_an_op_without_a_decomposition_keeps_the_converters_error():
    with pytest.raises(NotImplementedError, match="Unsupported fx node sum"):
        convert_decomposing(_program(), _lacking("sum"))  # sum.dim_IntList: no core ATen decomposition
    assert named_ops(_program(), ValueError("Unsupported fx node sum")) == []


def test_when_the_decomposition_brings_an_op_the_converter_also_lacks_its_first_error_stands():
    with pytest.raises(NotImplementedError, match="Unsupported fx node addcmul"):
        convert_decomposing(_program(), _lacking("addcmul", "mul"))  # addcmul → mul + add; mul is new
