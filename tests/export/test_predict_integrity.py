"""`kdtool predict` checks an artifact's sha256 against its manifest and refuses a changed file (issue 34)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import cli, error_lines


@pytest.fixture
def exported(crash_reference, tmp_path) -> tuple[Path, Path]:
    """A copy of a tiny run's server fp32 ONNX artifact, and a real handwritten 0 as a 16×16 PNG."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path / "fp32"
    shutil.copytree(crash_reference.after["export"] / "tiny" / "export" / "server" / "onnx" / "fp32", folder)
    x, y = load_digits(return_X_y=True)
    zero = x[np.flatnonzero(y == 0)[0]].reshape(8, 8) * 255 / 16
    image = tmp_path / "zero.png"
    Image.fromarray(zero.astype(np.uint8), mode="L").resize((16, 16)).save(image)
    return folder, image


def _flip_middle(path: Path, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_an_intact_artifact_predicts(exported):
    folder, image = exported
    result = cli("predict", folder, image, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["label"] in [str(d) for d in range(10)]


def test_64_flipped_bytes_are_refused_naming_the_file_and_both_hashes(exported):
    folder, image = exported
    onnx = folder / "student_kd.fp32.onnx"
    expected = json.loads((folder / "manifest.json").read_text())["files"][0]["sha256"]
    _flip_middle(onnx)
    found = hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert found != expected
    result = cli("predict", folder, image)
    assert result.exit_code == 2, result.stdout
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert str(onnx) in lines[0] and found in lines[0] and expected in lines[0]
    assert "--no-verify" in lines[0]
    assert not result.stdout.strip(), "no prediction from a file that failed its check"


def test_no_verify_skips_the_check(exported):
    folder, image = exported
    _flip_middle(folder / "student_kd.fp32.onnx")
    result = cli("predict", folder, image, "--no-verify")
    assert "does not match its manifest" not in result.stderr  # what the runtime makes of it is its own matter


def test_a_missing_listed_file_is_named(exported):
    folder, image = exported
    (folder / "student_kd.fp32.onnx").unlink()
    result = cli("predict", folder, image)
    assert result.exit_code == 2
    assert "student_kd.fp32.onnx" in error_lines(result.stderr)[0]
