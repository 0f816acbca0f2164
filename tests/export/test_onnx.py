"""ONNX export: parity in ONNX Runtime at two batch sizes, metadata, manifest, external data, int8."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compress.core.atomic import sha256_file, size_on_disk_mb

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_onnx_fp32_exports_loads_and_matches(exported):
    (art,) = exported("onnx")
    assert art.status == "ok", art.reason
    assert art.path.name == "student_kd.fp32.onnx"
    assert art.path.parent.parts[-3:] == ("custom", "onnx", "fp32")
    assert art.parity.status == "passed"
    assert art.parity.max_abs < 1e-5 * 100 and art.parity.agreement == 1.0
    assert art.parity.batches == [1, 4] and art.parity.samples == 16  # 8 digits + 8 random
    assert art.sha256 == sha256_file(art.path)
    assert art.info["output_shapes"] == {"logits": ["batch", 10]}
    assert sum(art.info["node_placement"]["CPUExecutionProvider"].values()) > 10


def test_onnx_metadata_and_manifest(exported):
    from export.formats.onnx.exporter import read_metadata

    (art,) = exported("onnx")
    meta = read_metadata(art.path)
    assert json.loads(meta["kdtool.labels"]) == [str(i) for i in range(10)]
    assert json.loads(meta["kdtool.preprocess"])["mean"] == [0.5]
    manifest = json.loads((art.path.parent / "manifest.json").read_text())
    assert manifest["schema"] == "kdtool.manifest/1"
    assert manifest["format"] == "onnx" and manifest["precision"] == "fp32" and manifest["opset"] == 18
    assert manifest["inputs"] == [{"name": "input", "shape": ["batch", 1, 32, 32], "dtype": "float32",
                                   "layout": "NCHW"}]
    assert manifest["sha256"] == art.sha256 and manifest["files"][0]["sha256"] == art.sha256
    assert manifest["parity"]["status"] == "passed" and manifest["parity"]["max_abs"] == art.parity.max_abs
    assert manifest["versions"]["onnxruntime"] and manifest["labels"][3] == "3"


def test_exporter_debug_metadata_is_not_shipped(exported):
    """torch.onnx records stack traces with this machine's paths on every node: stripped, kdtool's kept."""
    import onnx

    (art,) = exported("onnx")
    proto = onnx.load(str(art.path))
    keys = {p.key for node in proto.graph.node for p in node.metadata_props}
    assert not [k for k in keys if k.startswith("pkg.torch.onnx") or k == "namespace"], keys
    assert "site-packages" not in art.path.read_bytes().decode("latin-1")
    assert {p.key for p in proto.metadata_props} >= {"kdtool.labels", "kdtool.preprocess"}


def test_strip_debug_metadata_on_a_proto():
    import onnx
    from onnx import helper

    from export.formats.onnx.clean import strip_debug_metadata

    node = helper.make_node("Relu", ["x"], ["y"])
    for key, value in (("pkg.torch.onnx.stack_trace", 'File "/home/me/model.py", line 3'), ("namespace", "a/b"),
                       ("keep.me", "1")):
        entry = node.metadata_props.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    dropped = strip_debug_metadata(proto)
    assert [p.key for p in proto.graph.node[0].metadata_props] == ["keep.me"]
    assert dropped == len("pkg.torch.onnx.stack_trace") + len('File "/home/me/model.py", line 3') + len("namespacea/b")


def test_external_data_is_listed_and_counted(monkeypatch, tmp_path, example):
    from export_fixtures import context, tiny_convnet

    import export.formats.onnx.exporter as onnx_exporter
    from export.formats import get_runtime

    monkeypatch.setattr(onnx_exporter, "PROTOBUF_LIMIT_BYTES", 0)  # pretend the model is over 2 GB
    model = tiny_convnet()
    art = onnx_exporter.OnnxExporter().export(model, example, tmp_path, context())
    assert len(art.files) == 2 and art.files[1].suffix == ".data" and art.info["external_data"]
    total = size_on_disk_mb(art.files[0]) + size_on_disk_mb(art.files[1])
    assert art.size_mb == pytest.approx(total, abs=1e-5)
    assert size_on_disk_mb(art.files[1]) > 0.8 * sum(p.numel() * 4 for p in model.parameters()) / 1e6
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in art.files)  # no temporaries
    out = get_runtime("onnxruntime").load(art.path, 1).run(example.numpy())
    np.testing.assert_allclose(out, model(example).detach().numpy(), atol=1e-5)


def test_int8_adopts_ort_quantized_model_and_reports_quantized_share(tmp_path, example, real_inputs):
    from export_fixtures import context, tiny_convnet
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from export.formats.onnx.exporter import OnnxExporter
    from export.run import Quantized, export_model

    model = tiny_convnet()
    fp32 = OnnxExporter().export(model, example, tmp_path, context(name="tiny"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": real_inputs[i:i + 2].numpy()} for i in range(0, 8, 2)])

        def get_next(self):
            return next(self.batches, None)

    qdq = tmp_path / "tiny.qdq.onnx"
    quantize_static(str(fp32.path), str(qdq), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    (art,) = export_model(model, example, tmp_path / "out", formats=["onnx"], targets=["server"],
                          quantized=Quantized(onnx=qdq, onnx_mode="static"), spec=context(name="tiny"),
                          inputs=real_inputs)[1:]
    assert art.name == "tiny.onnx.int8" and art.status == "ok", art.reason
    from export.formats.onnx.exporter import read_metadata

    assert read_metadata(art.path)["kdtool.quantization"] == "static"
    manifest = json.loads((art.path.parent / "manifest.json").read_text())
    assert manifest["metadata"]["kdtool.quantization"] == "static"
    assert art.info["quantized"]["op_share"] >= 0.5 and art.info["quantized"]["int8_weight_share"] > 0.9
    assert art.parity.status == "passed" and art.parity.agreement >= 0.9
    # the quantizer's long tensor names are compacted: smaller file, same numbers, parameter names kept
    import onnx

    from export.formats import get_runtime

    raw, shipped = onnx.load(str(qdq)), onnx.load(str(art.path))
    assert shipped.ByteSize() < raw.ByteSize() - 40 * len(raw.graph.node)
    weights = lambda m: sorted(t.name for t in m.graph.initializer if len(t.dims) >= 2)  # noqa: E731
    assert weights(shipped) == weights(raw) and all(n.endswith("_quantized") for n in weights(raw))
    assert [v.name for v in shipped.graph.output] == [v.name for v in raw.graph.output]
    assert max(len(s) for n in shipped.graph.node for s in n.output) <= 8
    x = real_inputs[:4].numpy()
    np.testing.assert_array_equal(get_runtime("onnxruntime").load(art.path, 1).run(x),
                                  get_runtime("onnxruntime").load(qdq, 1).run(x))


def test_compact_names_leaves_graphs_with_subgraphs_alone():
    import onnx
    from onnx import helper

    from export.formats.onnx.clean import compact_names

    branch = helper.make_graph([helper.make_node("Identity", ["a_long_name"], ["b"])], "then", [],
                               [helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    relu = helper.make_node("Relu", ["x"], ["a_long_name"])
    graph = helper.make_graph([relu, node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]),
                                                  helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    assert compact_names(proto) == 0 and proto.graph.node[0].output[0] == "a_long_name"
    plain = helper.make_model(helper.make_graph([relu, helper.make_node("Relu", ["a_long_name"], ["y"])], "g",
                                                graph.input[:1], graph.output))
    assert compact_names(plain) > 0 and plain.graph.node[0].output[0] == "0" == plain.graph.node[1].input[0]
    assert plain.graph.node[1].output[0] == "y"


def test_ort_format_conversion(exported):
    from export.formats import get_runtime
    from export.formats.onnx.exporter import convert_to_ort

    (art,) = exported("onnx")
    ort_path = convert_to_ort(art.path)
    x = torch.zeros(3, 1, 32, 32).numpy()
    a = get_runtime("onnxruntime").load(ort_path, 1).run(x)
    b = get_runtime("onnxruntime").load(art.path, 1).run(x)
    assert ort_path.suffix == ".ort" and np.abs(a - b).max() < 1e-5
