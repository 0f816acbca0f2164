"""`export.batch`: phone targets get a static batch of 1 under `auto`, the server a dynamic one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from export_fixtures import context, tiny_convnet

from export.targets import plan


def test_auto_batch_is_one_on_phones_and_dynamic_on_the_server():
    jobs = {(j.target, j.format, j.precision): j.batch for j in plan(["all"])}
    assert jobs[("android", "executorch", "int8")] == 1 and jobs[("ios", "coreml", "fp16")] == 1
    assert jobs[("server", "onnx", "fp32")] is None and jobs[("server", "torchscript", "fp32")] is None
    # android's ONNX is its own static file, no longer the server's dynamic one
    assert jobs[("android", "onnx", "fp32")] == 1 and len(plan(["all"])) == 13
    assert jobs[("android", "litert", "int8")] == 1 and jobs[("server", "openvino", "int8")] is None


def test_dynamic_and_fixed_batch_apply_to_every_target():
    assert {j.batch for j in plan(["all"], batch="dynamic")} == {None}
    assert len(plan(["all"], batch="dynamic")) == 12  # android and server share one dynamic ONNX file again
    assert {j.batch for j in plan(["android", "server"], batch=4)} == {4}
    assert {j.batch for j in plan(None, ["onnx"])} == {None}  # --format alone: the custom target, dynamic


def test_android_artifacts_are_static_batch_one_and_say_so(tmp_path, example, real_inputs):
    import onnx

    from export.run import export_model

    arts = export_model(tiny_convnet(), example, tmp_path, targets=["android", "server"], formats=["onnx"],
                        spec=context(), inputs=real_inputs, int8=False)
    android, server = arts
    assert (android.target, server.target) == ("android", "server")
    assert (android.name, server.name) == ("student_kd.onnx-b1.fp32", "student_kd.onnx.fp32")
    for art in arts:
        assert art.status == "ok" and art.parity.status == "passed", art.reason
    assert android.info["dynamic_batch"] is False and android.info["batch"] == 1
    assert android.parity.batches == [1]
    dims = onnx.load(str(android.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 32, 32]
    manifest = json.loads((android.path.parent / "manifest.json").read_text())
    assert manifest["inputs"][0]["shape"] == [1, 1, 32, 32]
    assert server.info["dynamic_batch"] is True and "batch" not in server.info
    assert json.loads((server.path.parent / "manifest.json").read_text())["inputs"][0]["shape"][0] == "batch"


def test_a_fixed_batch_of_n_is_traced_with_n_real_rows(tmp_path, example, real_inputs):
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path, formats=["onnx"], spec=context(),
                          inputs=real_inputs, batch=3)
    assert art.status == "ok" and art.info["batch"] == 3 and art.parity.batches == [3]


def test_fix_batch_pins_a_dynamic_onnx_file(tmp_path, example, real_inputs):
    """An adopted (ONNX Runtime–quantized) file is dynamic: a static job pins its batch axis."""
    import onnx
    import onnxruntime as ort

    from export.formats.onnx.exporter import fix_batch
    from export.run import export_model

    (art,) = export_model(tiny_convnet(), example, tmp_path / "dyn", formats=["onnx"], spec=context(), verify=False)
    proto = onnx.load(str(art.path))
    fix_batch(proto, 1)
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    assert [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == [1, 10]
    static = ort.InferenceSession(str(fixed), providers=["CPUExecutionProvider"])
    dynamic = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    x = real_inputs[:1].numpy()
    np.testing.assert_allclose(static.run(None, {"input": x})[0], dynamic.run(None, {"input": x})[0], atol=1e-6)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        static.run(None, {"input": real_inputs[:2].numpy()})


def test_executorch_int8_is_retraced_at_a_static_batch(tmp_path, example, real_inputs):
    """A PT2E model quantized with a dynamic batch still gives android a batch-1 int8 program."""
    pytest.importorskip("executorch")
    from test_executorch import _pt2e

    from export.run import Quantized, export_model

    model = tiny_convnet()
    program = torch.export.export(_pt2e(model, example, real_inputs), (example,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    arts = export_model(model, example, tmp_path, targets=["android"], formats=["executorch"],
                        inputs=real_inputs, quantized=Quantized(pt2e=program), spec=context(name="tiny"))
    (int8,) = [a for a in arts if a.precision == "int8"]
    assert int8.status == "ok" and int8.parity.status == "passed", int8.reason
    assert int8.info["batch"] == 1 and int8.info["max_batch"] == 1
