"""The seam between the quantize stage and the formats' own int8 writers (`compress.quant.formats`)."""

from __future__ import annotations

import pytest

import export.formats  # noqa: F401  (registers the formats' own int8 writers: onnx, coreml)
from compress.core.errors import KdtoolError
from compress.quant.formats import FILE_INT8, file_backends, file_int8
from compress.quant.quantize import Int8DynamicConfig, Int8StaticConfig
from compress.quant.stage import quant_backends
from recipes.load import load_recipe


def test_each_file_format_registers_its_int8_writer_from_its_own_folder():
    assert list(FILE_INT8) == ["coreml", "onnx"]
    for name in FILE_INT8:
        assert type(FILE_INT8.get(name)).__module__ == f"export.formats.{name}.int8"
    assert FILE_INT8.get("onnx").searchable and not FILE_INT8.get("coreml").searchable


def test_the_stage_makes_model_level_backends_first_then_the_formats_for_the_targets():
    assert file_backends("static", ["server"]) == ("onnx",)
    assert file_backends("static", ["server", "ios"]) == ("onnx", "coreml")
    assert file_backends("dynamic", ["ios"]) == ("onnx",)
    recipe, _, _ = load_recipe(None, ["export.targets=[server, ios]", "quantize.backends=null"])
    assert quant_backends(recipe, "static") == ("executorch", "onnx", "coreml")
    assert quant_backends(recipe, "dynamic") == ("torch", "onnx")
    assert quant_backends(recipe, "qat") == ("executorch",)


def test_an_unknown_backend_names_the_ones_that_write_the_mode():
    with pytest.raises(KdtoolError, match="backend 'tflite' is not supported") as e:
        file_int8(Int8StaticConfig(backend="tflite"))
    assert e.value.hint == "static works with: executorch, coreml, onnx" and e.value.exit_code == 2
    with pytest.raises(KdtoolError, match="CoreML has no dynamic"):
        file_int8(Int8DynamicConfig(backend="coreml"))
