"""Shared export fixtures: a tiny timm student, real digit inputs, and artifacts exported once per session."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import context, digits, tiny_student
from torch import nn


@pytest.fixture(scope="session")
def student() -> nn.Module:
    return tiny_student()


@pytest.fixture(scope="session")
def real_inputs() -> torch.Tensor:
    return digits(8)


@pytest.fixture(scope="session")
def example(real_inputs) -> torch.Tensor:
    return real_inputs[:2].clone()


@pytest.fixture(scope="session")
def exported(student, example, real_inputs, tmp_path_factory):
    """`exported(fmt, precision="fp32", **job)` → the Artifact from `export_model`, made once per session."""
    from export.run import export_model

    cache = {}

    def get(fmt: str, targets=None):
        key = (fmt, tuple(targets or ()))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"export_{fmt}")
            cache[key] = export_model(student, example, out, formats=[fmt], targets=targets, spec=context(),
                                      inputs=real_inputs)
        return cache[key]

    return get
