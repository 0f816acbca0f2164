"""ExecuTorch artifacts lowered in a forked child (`export.lowering`): same artifacts, failures kept apart."""

from __future__ import annotations

import os
import sys

import pytest
from export_fixtures import context, tiny_convnet

from export.lowering import ENV, parallel_enabled
from export.run import export_model


@pytest.fixture(autouse=True)
def _forks_here():
    """Judged when each test runs: a LiteRT export earlier in the session starts JAX, and then no child is forked."""
    if not parallel_enabled(1, 1):
        pytest.skip("the child is forked on multi-core Linux only, before JAX runs in the process")


def android(tmp_path, example, monkeypatch, processes: str):
    monkeypatch.setenv(ENV, processes)
    return export_model(tiny_convnet(), example, tmp_path / processes, targets=["android"], int8=False,
                        formats=["executorch", "onnx"], spec=context())


def test_child_lowering_gives_the_same_artifacts_in_plan_order(tmp_path, example, monkeypatch):
    serial = android(tmp_path, example, monkeypatch, "0")
    forked = android(tmp_path, example, monkeypatch, "1")
    assert [a.name for a in forked] == [a.name for a in serial] == ["student_kd.executorch.fp32",
                                                                   "student_kd.onnx-b1.fp32"]
    for a, b in zip(serial, forked, strict=True):
        assert (a.status, a.parity.status, a.parity.max_abs) == (b.status, b.parity.status, b.parity.max_abs)
        assert b.path.parent == tmp_path / "1" / "android" / a.format / "fp32"
        assert sorted(p.name for p in b.path.parent.iterdir()) == sorted(p.name for p in a.path.parent.iterdir())
        assert {k: v for k, v in b.info.items() if k != "export_s"} == {
            k: v for k, v in a.info.items() if k != "export_s"}
    pte = forked[0].path
    assert pte.read_bytes() == serial[0].path.read_bytes()  # the same program, byte for byte
    assert not any(p.name.startswith(".") for p in pte.parent.parent.iterdir())  # no temporary left


def test_a_failure_in_the_child_fails_that_artifact_only(tmp_path, example, monkeypatch):
    import export.formats.executorch.exporter as et
    from compress.core.errors import ExportError

    def broken(self, *a, **k):
        raise ExportError("ExecuTorch lowering failed for student_kd: aten.weird_op", "try --format onnx")

    monkeypatch.setattr(et.ExecuTorchExporter, "export", broken)
    pte, onnx = android(tmp_path, example, monkeypatch, "1")
    assert pte.status == "failed" and pte.reason == ("ExecuTorch lowering failed for student_kd: aten.weird_op "
                                                     "(try --format onnx)")
    assert not (tmp_path / "1" / "android" / "executorch" / "fp32").exists()
    assert onnx.status == "ok" and onnx.parity.status == "passed"


def test_a_child_that_dies_is_reported(tmp_path, example, monkeypatch):
    import export.formats.executorch.exporter as et

    monkeypatch.setattr(et.ExecuTorchExporter, "export", lambda self, *a, **k: os._exit(3))
    pte, onnx = android(tmp_path, example, monkeypatch, "1")
    assert pte.status == "failed" and "lowering process died (exit code 3)" in pte.reason, pte.reason
    assert "KDTOOL_EXPORT_PROCESSES=0" in pte.reason
    assert onnx.status == "ok"


def test_not_forked_when_one_side_is_empty_or_turned_off(monkeypatch):
    assert not parallel_enabled(0, 3) and not parallel_enabled(2, 0)
    monkeypatch.setenv(ENV, "0")
    assert not parallel_enabled(2, 3)
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv(ENV)
    assert not parallel_enabled(2, 3)


def test_the_parent_leaves_the_child_a_core_while_it_lowers(tmp_path, example, monkeypatch):
    import time

    import torch

    import export.formats.executorch.exporter as et
    import export.run

    lower = et.ExecuTorchExporter.export
    go = tmp_path / "go"

    def slow(self, *a, **k):  # the child stays busy until the parent has verified the ONNX file
        deadline = time.monotonic() + 300
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return lower(self, *a, **k)

    seen = []

    def verify(artifact, *a, threads=1, **k):
        seen.append((artifact.format, threads, torch.get_num_threads()))
        go.touch()
        return verify_artifact(artifact, *a, threads=threads, **k)

    verify_artifact = export.run.verify_artifact
    monkeypatch.setattr(et.ExecuTorchExporter, "export", slow)
    monkeypatch.setattr(export.run, "verify_artifact", verify)
    monkeypatch.setenv(ENV, "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pte, onnx = export_model(tiny_convnet(), example, tmp_path, targets=["android"], int8=False,
                                 formats=["executorch", "onnx"], spec=context(), threads=2)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert pte.status == onnx.status == "ok"
    assert seen == [("onnx", 1, 1), ("executorch", 2, 2)], seen  # the ExecuTorch file once the child is done
