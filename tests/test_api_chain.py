"""The whole chain from Python on padded variable-length audio: distill → quantize → export → benchmark → card."""

from __future__ import annotations

import json

import pytest
import torch
from api_fixtures import Clips, TinyAudioNet, pad_collate
from torch.utils.data import DataLoader

from benchmark import BenchmarkConfig, Card, benchmark
from compress import Distiller, KDConfig, KdtoolError, TrainConfig, quantize
from export import export_model

FAST_BENCH = BenchmarkConfig(min_runs=3, min_time_s=0.01, warmup=1, threads=1, min_retention=0.8)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chain")
    train = DataLoader(Clips(96), batch_size=16, shuffle=True, collate_fn=pad_collate)
    val = DataLoader(Clips(48, seed=1), batch_size=16, collate_fn=pad_collate)
    teacher = Distiller(None, TinyAudioNet(16), train=TrainConfig(epochs=4, lr=0.02, threads=1),
                        out_dir=tmp / "teacher").fit(train, val)
    student = Distiller(teacher, TinyAudioNet(4), kd=KDConfig(temperature=2, alpha=0.5),
                        train=TrainConfig(epochs=4, lr=0.02, threads=1), out_dir=tmp / "student").fit(train, val)
    q = quantize(student, train, mode="static", backend="onnx", val_loader=val, task="multiclass",
                 calibration_samples=64, out_dir=tmp / "int8")
    example = next(iter(val))[0][:2]
    artifacts = export_model(student, example, tmp / "export", targets=["server"], formats=["onnx"], quantized=q,
                             inputs=next(iter(val))[0])
    card = benchmark(artifacts, val, teacher=teacher, student=student, task="multiclass", config=FAST_BENCH,
                     name="wakeword", out_dir=tmp / "report")
    return tmp, student, val, q, artifacts, card


def test_quantized_model_is_evaluated_on_the_users_loader(chain):
    _, _, _, q, _, _ = chain
    assert q.path.name.endswith(".onnx") and q.path.is_file()
    assert q.evaluation["status"] == "ok" and 0.5 <= q.evaluation["metrics"]["accuracy"] <= 1.0
    assert q.evaluation["agreement"] >= 0.9  # int8 decides like the fp32 student on nearly every clip


def test_export_makes_fp32_and_int8_onnx_that_pass_parity(chain):
    _, _, _, _, artifacts, _ = chain
    assert {(a.format, a.precision, a.status) for a in artifacts} == {("onnx", "fp32", "ok"), ("onnx", "int8", "ok")}
    assert all(a.parity.status == "passed" for a in artifacts)


def test_card_scores_every_row_on_the_padded_loader(chain):
    tmp, student, val, _, _, card = chain
    assert isinstance(card, Card)
    assert [r.name for r in card.rows] == ["teacher", "student_kd", "model.onnx.fp32", "model.onnx.int8"]
    fp32 = card.row("model.onnx.fp32")
    assert fp32.metrics["accuracy"] == pytest.approx(card.row("student_kd").metrics["accuracy"])  # same clips
    outputs = torch.cat([student(x) for x, *_ in val])
    labels = torch.cat([y for _, y, _ in val])
    assert card.row("student_kd").metrics["accuracy"] == pytest.approx(float((outputs.argmax(1) == labels)
                                                                             .float().mean()))
    assert card.row("teacher").retention == 1.0 and fp32.latency_ms.p50 > 0
    assert card.recommendation["server"] in {"model.onnx.fp32", "model.onnx.int8"}
    saved = json.loads((tmp / "report" / "report.json").read_text())
    assert saved == card.to_json() and saved["schema"] == "kdtool.report/1"
    assert "| model.onnx.int8 |" in card.to_markdown()
    assert card.to_html().startswith("<!DOCTYPE html>") and "<table" in card._repr_html_()
    assert "<style>" not in card._repr_html_()  # a notebook's own page is not restyled


def test_benchmark_with_a_loader_the_models_cannot_take_fails_in_one_line(chain):
    _, student, _, _, artifacts, _ = chain
    wrong = DataLoader([(torch.zeros(2, 480), 0)] * 4, batch_size=2)  # (N, 2, 480): a channel axis too many
    with pytest.raises(KdtoolError) as err:
        benchmark(artifacts, wrong, student=student, task="multiclass", config=FAST_BENCH)
    assert err.value.line().startswith("kdtool: error: val_loader: student_kd.arch TinyAudioNet cannot take "
                                       "input of shape (2, 2, 480) (it expects (N, 1, L))")
