"""`kdtool predict`: artifacts and checkpoints on the user's files reproduce the card; bad input is exit 2."""

from __future__ import annotations

import json
import shutil
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from cli_fixtures import cli, error_lines, write_recipe


def _write_digits(root: Path, indices: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Real 8×8 digits as 16×16 grayscale PNGs in root/<class>/."""
    from PIL import Image

    for i in indices:
        folder = root / str(y[i])
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8), mode="L")
        img.resize((16, 16), Image.Resampling.BILINEAR).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A whole tiny run on image files (train/ and a separate val/), exported to ONNX and TorchScript."""
    from sklearn.datasets import load_digits

    tmp = tmp_path_factory.mktemp("predict")
    x, y = load_digits(return_X_y=True)
    _write_digits(tmp / "train", np.arange(0, 160), x, y)
    _write_digits(tmp / "val", np.arange(1000, 1060), x, y)
    recipe = write_recipe(tmp, {
        "data": {"source": "imagefolder", "root": str(tmp / "train"), "val_root": str(tmp / "val"), "limit": None},
        "quantize": {"modes": ["dynamic"]},
        "export": {"formats": ["onnx", "torchscript"]},
        "benchmark": {"min_runs": 3, "min_time_s": 0.01, "warmup": 1, "batch_sizes": [1]},
    })
    result = cli("run", recipe, "--out", tmp / "runs")
    assert result.exit_code == 0, result.stderr[-3000:]
    return tmp / "runs" / "tiny", tmp / "val", recipe


def _card_metric(run_dir: Path, name: str) -> float:
    report = json.loads((run_dir / "report" / "report.json").read_text())
    return next(r for r in report["rows"] if r["name"] == name)["metrics"]["accuracy"]


def _accuracy(results: list[dict]) -> float:
    return float(np.mean([r["label"] == Path(r["input"]).parent.name for r in results]))


@pytest.mark.parametrize(("artifact", "row"), [
    ("export/server/onnx/fp32", "student_kd.onnx.fp32"),
    ("export/server/torchscript/fp32/student_kd.torchscript.pt", "student_kd.torchscript.fp32"),
    ("student_kd", "student_kd"),
])
def test_predict_on_the_validation_files_reproduces_the_card(run, artifact, row):
    from export.predict import predict

    run_dir, val, recipe = run
    results = predict(run_dir / artifact, [val], recipe=str(recipe))
    assert len(results) == 60
    assert _accuracy(results) == pytest.approx(_card_metric(run_dir, row), abs=1e-6)
    top = results[0]["top_k"]
    assert len(top) == 3 and top[0][1] >= top[1][1] >= top[2][1] and top[0][0] == results[0]["label"]


def test_predict_cli_prints_one_line_per_input_and_json(run, tmp_path):
    run_dir, val, _ = run
    files = sorted(val.rglob("*.png"))[:3]
    (tmp_path / "list.csv").write_text("path\n" + "\n".join(str(f) for f in files) + "\n")
    text = cli("predict", run_dir / "export/server/onnx/fp32", *files[:2], tmp_path / "list.csv")
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert len(lines) == 5 and all("(top 3:" in ln for ln in lines)
    as_json = cli("predict", run_dir / "export/server/onnx/fp32", files[0], "--json", "--top-k", "2")
    record = json.loads(as_json.stdout)
    assert record["input"] == str(files[0]) and len(record["top_k"]) == 2


def test_bad_inputs_are_one_line_and_exit_2(run, tmp_path):
    run_dir, val, _ = run
    onnx = run_dir / "export/server/onnx/fp32"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(onnx / "student_kd.fp32.onnx", lonely / "model.onnx")
    mac = tmp_path / "coreml"
    mac.mkdir()
    (mac / "model.mlpackage").mkdir()
    manifest = json.loads((onnx / "manifest.json").read_text())
    (mac / "manifest.json").write_text(json.dumps({**manifest, "format": "coreml", "runtime": "coreml",
                                                   "file": "model.mlpackage"}))
    cases = [((onnx, tmp_path / "missing.png"), "missing.png does not exist"),
             ((onnx, tmp_path / "broken.png"), "broken.png: cannot be read"),
             ((lonely / "model.onnx", next(val.rglob("*.png"))), "has no manifest.json"),
             # the hand-made manifest keeps the ONNX file's hashes: skip the check to reach the runtime's refusal
             ((mac / "model.mlpackage", next(val.rglob("*.png")), "--no-verify"), "needs macOS")]
    if sys.platform == "darwin":
        cases.pop()
    for args, named in cases:
        result = cli("predict", *args)
        assert result.exit_code == 2, (named, result.stderr)
        lines = error_lines(result.stderr)
        assert len(lines) == 1 and named in lines[0]


def test_a_wav_of_another_rate_is_refused_without_resampling(tmp_path):
    from compress.core.errors import KdtoolError
    from compress.data.files import Decoder
    from export.predict import decode

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes((np.sin(np.arange(8000) / 5) * 9000).astype(np.int16).tobytes())
    decoder = Decoder("audio", sample_rate=16000, num_samples=16000)
    with pytest.raises(KdtoolError, match="8000 Hz, the model takes 16000 Hz"):
        decode(path, decoder, resample=False)
    assert decode(path, decoder, resample=True).shape == (16000,)
