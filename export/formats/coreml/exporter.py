"""CoreML ML Program (`.mlpackage`) via coremltools from a `torch.export` program.

fp16 (default for iOS: the Neural Engine computes in fp16) or fp32 compute precision; class labels
for classifiers (`ClassifierConfig`: the model also outputs `classLabel`); metadata in
`user_defined_metadata`. Ops coremltools lacks but torch can decompose (`aten.addcmul` of
ConvNeXt-V2's GRN) are decomposed for this converter only, and the artifact says so
(`export.decompose`). CoreML prediction needs macOS: on Linux the package is validated by
reloading its spec, and parity is recorded as "not verified on this OS", never as passed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compress.core.atomic import atomic_path
from compress.core.errors import ExportError
from export.artifact import Artifact
from export.decompose import convert_decomposing, decomposition_facts
from export.registry import (
    EXPORTERS,
    ExportContext,
    build_artifact,
    check_precision,
    export_program,
    first_line,
)

CLASS_LABEL_OUTPUT = "classLabel"


@EXPORTERS.register("coreml")
class CoreMLExporter:
    """CoreML ML Program (.mlpackage, coremltools): iOS/macOS; converted anywhere, runs on Apple OSes."""

    name = "coreml"
    runtime = "coreml"
    precisions = ("fp16", "fp32")

    def export(self, model: nn.Module, example: torch.Tensor, out_dir: Path, spec: ExportContext) -> Artifact:
        """Convert to `<name>.<precision>.mlpackage` and validate it by reloading the spec."""
        check_precision(self, spec)
        try:
            import coremltools  # noqa: F401  (fail early with the install hint)
        except ImportError as e:
            raise ExportError("coremltools is not installed", 'pip install "coremltools==9.0"') from e
        classifier = spec.task == "multiclass" and bool(spec.labels)
        info: dict[str, Any] = {}
        try:
            mlmodel, facts = _convert(model, example, spec, classifier)
        except ExportError as e:
            if not spec.dynamic_batch:
                raise
            # some coremltools translations (group_norm: a reshape built from a Python list) cannot
            # take a symbolic batch; a fixed batch is what iOS apps run anyway
            spec.dynamic_batch = False
            info["dynamic_batch_reason"] = f"coremltools could not convert a dynamic batch: {e.message}"
            mlmodel, facts = _convert(model, example, spec, classifier)
        info.update(facts)
        mlmodel = _rename(mlmodel, spec, classifier)
        mlmodel.short_description = f"{spec.name} ({spec.task}); {spec.output_meaning}"
        mlmodel.user_defined_metadata.update(spec.embedded_metadata())
        path = Path(out_dir) / f"{spec.name}.{spec.precision}.mlpackage"
        with atomic_path(path, is_dir=True) as tmp:
            staged = tmp.with_name(tmp.name + ".mlpackage")  # coremltools wants the extension
            mlmodel.save(str(staged))
            os.replace(staged, tmp)
        info.update(validate(path))
        info["classifier"] = classifier
        return build_artifact(self.name, path, spec, self.runtime, info=info)


def _convert(model: nn.Module, example: torch.Tensor, spec: ExportContext,
             classifier: bool) -> tuple[Any, dict[str, Any]]:
    """torch.export (batch per spec) → coremltools ML Program, decomposing the ops coremltools lacks
    (`export.decompose`); returns the model and the decomposition facts for `Artifact.info`. A
    failure no decomposition cures names the torch op at fault."""
    import coremltools as ct

    from compress.core.native import quiet_native

    program = export_program(model.eval(), example, spec).run_decompositions({})

    def convert(p: torch.export.ExportedProgram) -> Any:
        drop_aliases(p)
        return ct.convert(
            p, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
            compute_precision=ct.precision.FLOAT16 if spec.precision == "fp16" else ct.precision.FLOAT32,
            classifier_config=ct.ClassifierConfig(list(spec.labels)) if classifier else None,
            skip_model_load=True)

    try:
        with quiet_native():  # the converter's native prints (shown with --debug)
            mlmodel, converted, decomposed, message = convert_decomposing(program, convert)
    except Exception as e:
        op = failing_op(e)
        where = f" in the translation of torch op {op!r}" if op else ""
        raise ExportError(f"coremltools conversion failed for {spec.name}{where}: {first_line(e)}",
                          "an op has no CoreML translation: try --format executorch") from e
    return mlmodel, decomposition_facts("coremltools", decomposed, message, model, converted, example)


def drop_aliases(program: torch.export.ExportedProgram) -> int:
    """Replace `aten.alias` nodes by their input (coremltools 9 has no translation for them).

    `alias` is a view with the same data, shape and strides: a no-op in an inference graph.
    torch.export keeps it where a module returns a tensor it did not change (GhostNet's
    `nn.Identity` shortcuts); coremltools then stops with "Unsupported fx node alias".
    Returns how many were removed."""
    graph = program.graph_module.graph
    aliases = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.alias.default]
    for node in aliases:
        node.replace_all_uses_with(node.args[0])
        graph.erase_node(node)
    if aliases:
        program.graph_module.recompile()
    return len(aliases)


def failing_op(error: BaseException) -> str | None:
    """The coremltools torch-frontend translation function (named after the torch op) that raised."""
    import traceback

    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "coremltools/converters/mil/frontend/torch/ops.py" in f.filename.replace("\\", "/")]
    named = [f.name for f in frames if f.name not in {"convert_nodes", "convert_single_node", "add_op"}
             and not f.name.startswith("_")]
    return named[-1] if named else None


def validate(path: Path) -> dict[str, Any]:
    """Reload the saved package's spec (no prediction: that needs macOS) and describe its I/O."""
    import coremltools as ct

    try:
        proto = ct.utils.load_spec(str(path))
        ct.models.MLModel(str(path), skip_model_load=True)
    except Exception as e:
        raise ExportError(f"{path.name} is not a loadable CoreML package: {first_line(e)}",
                          "re-export; check disk space") from e
    ops = sum(len(block.operations) for fn in proto.mlProgram.functions.values()
              for block in fn.block_specializations.values())
    return {"spec_version": proto.specificationVersion, "ml_program_ops": ops,
            "inputs": [i.name for i in proto.description.input],
            "outputs": [o.name for o in proto.description.output]}


def read_metadata(path: Path) -> dict[str, str]:
    """The `user_defined_metadata` of a saved `.mlpackage`."""
    import coremltools as ct

    return dict(ct.utils.load_spec(str(path)).description.metadata.userDefined)


def _rename(mlmodel: Any, spec: ExportContext, classifier: bool) -> Any:
    """Give inputs/outputs the context's names (torch.export names them after graph nodes)."""
    import coremltools as ct

    proto = mlmodel.get_spec()
    for feature, new in zip(proto.description.input, spec.input_names, strict=False):
        if feature.name != new:
            ct.utils.rename_feature(proto, feature.name, new, rename_outputs=False)
    outputs = [o.name for o in proto.description.output if o.name != CLASS_LABEL_OUTPUT]
    for old, new in zip(outputs, spec.output_names, strict=False):
        if old != new:
            ct.utils.rename_feature(proto, old, new, rename_inputs=False)
    return ct.models.MLModel(proto, weights_dir=mlmodel.weights_dir, skip_model_load=True)
