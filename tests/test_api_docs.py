"""The Python API's examples run as tests: every ```python block of docs/api.md (in order, one namespace)
and of the public modules' docstrings, so the documentation cannot drift from the code."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
DOCSTRING_MODULES = ["compress.distill.api", "compress.quant.api", "benchmark.api"]
PUBLIC = {"compress": ["Distiller", "KDConfig", "KdtoolError", "QuantizedModel", "Task", "TrainConfig", "quantize"],
          "export": ["Artifact", "Quantized", "export_model"], "benchmark": ["BenchmarkConfig", "Card", "benchmark"]}


def test_docs_api_examples_run(tmp_path, monkeypatch):
    blocks = BLOCK.findall((REPO / "docs" / "api.md").read_text())
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)  # the examples write api-out/ here
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/api.md block {i + 1}", "exec"), namespace)
    assert (tmp_path / "api-out" / "report" / "report.json").is_file()
    assert namespace["card"].recommendation  # the chain ended in a recommendation


@pytest.mark.parametrize("module", DOCSTRING_MODULES)
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    doc = importlib.import_module(module).__doc__
    blocks = BLOCK.findall(doc)
    assert blocks, f"{module} has no example"
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        exec(compile(code, f"{module} docstring", "exec"), {})


def test_every_public_name_is_importable_and_documented():
    text = (REPO / "docs" / "api.md").read_text()
    for package, names in PUBLIC.items():
        mod = importlib.import_module(package)
        assert sorted(mod.__all__) == sorted(names)
        for name in names:
            assert getattr(mod, name) is not None
            assert f"`{name}` | `from {package} import {name}`" in text, name
