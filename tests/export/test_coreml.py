"""CoreML export: an ML Program package converted and validated by its spec; prediction only on macOS."""

from __future__ import annotations

import json
import platform

import pytest
import torch

pytest.importorskip("coremltools")


def test_coreml_fp16_package_is_valid(exported):
    import coremltools as ct

    from export.formats.coreml.exporter import read_metadata

    (art,) = exported("coreml")
    assert art.status == "ok", art.reason
    assert art.path.name == "student_kd.fp16.mlpackage" and art.path.is_dir() and art.size_mb > 0.3
    spec = ct.utils.load_spec(str(art.path))
    assert spec.WhichOneof("Type") == "mlProgram" and art.info["ml_program_ops"] > 50
    assert [i.name for i in spec.description.input] == ["input"]
    assert set(art.info["outputs"]) == {"logits", "classLabel"} and art.info["classifier"]
    assert spec.description.predictedFeatureName == "classLabel"
    assert json.loads(read_metadata(art.path)["kdtool.labels"])[9] == "9"
    if platform.system() != "Darwin":
        assert art.parity.status == "not verified on this OS" and "macOS" in art.parity.reason
        manifest = json.loads((art.path.parent / "manifest.json").read_text())
        assert manifest["parity"]["status"] == "not verified on this OS"


def test_group_norm_falls_back_to_fixed_batch(tmp_path):
    """coremltools' group_norm translation cannot take a symbolic batch: the package gets a fixed one."""
    import torch

    from export.formats.coreml.exporter import CoreMLExporter
    from export.registry import ExportContext

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Flatten()).eval()
    art = CoreMLExporter().export(model, torch.randn(2, 3, 8, 8), tmp_path, ExportContext(precision="fp16"))
    assert art.status == "ok" and art.info["dynamic_batch"] is False
    assert "'group_norm'" in art.info["dynamic_batch_reason"] and "Cannot add const" in art.info["dynamic_batch_reason"]
    assert art.info["ml_program_ops"] > 3


class _Aliased(torch.nn.Module):
    """Returns an unchanged tensor through `aten.alias` (GhostNet's identity shortcuts export so)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.ops.aten.alias.default(y) + y


def test_alias_nodes_are_dropped_before_conversion(tmp_path):
    """coremltools 9 has no `alias` translation ("Unsupported fx node alias"): the no-op views go."""
    pytest.importorskip("coremltools")
    from export.formats.coreml.exporter import CoreMLExporter, drop_aliases
    from export.registry import ExportContext, export_program

    model, x = _Aliased().eval(), torch.randn(1, 1, 8, 8)
    program = export_program(model, x, ExportContext(dynamic_batch=False)).run_decompositions({})
    assert drop_aliases(program) == 1
    torch.testing.assert_close(program.module()(x), model(x))
    art = CoreMLExporter().export(model, x, tmp_path, ExportContext(precision="fp16", dynamic_batch=False))
    assert art.status == "ok" and art.size_mb > 0


class _Addcmul(torch.nn.Module):
    """ConvNeXt-V2's GRN exports `aten.addcmul`, which coremltools 9 lacks ("Unsupported fx node addcmul")."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.gamma = torch.nn.Parameter(torch.linspace(0.5, 2.0, 4).view(1, 4, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return torch.addcmul(y, self.gamma, y, value=0.5).mean((2, 3))


def test_an_op_coremltools_lacks_is_decomposed_and_the_card_says_so(tmp_path):
    """The program converts after torch decomposes `addcmul`; the artifact, its manifest and its card row
    say so, and the parity of CoreML itself stays "not verified on this OS" off macOS."""
    from export_fixtures import context

    from benchmark.report.card import ReportRow, row_notes
    from export.run import export_model

    torch.manual_seed(0)
    model, x = _Addcmul().eval(), torch.randn(2, 1, 8, 8)
    (art,) = export_model(model, x, tmp_path, formats=["coreml"], spec=context(labels=None), inputs=x)
    assert art.status == "ok", art.reason
    facts = art.info["decomposed"]
    assert facts["ops"] == ["aten.addcmul.default"] and "addcmul" in facts["converter_message"]
    assert facts["max_abs"] < 1e-5
    manifest = json.loads((art.path.parent / "manifest.json").read_text())
    assert manifest["info"]["decomposed"]["ops"] == ["aten.addcmul.default"]
    assert manifest["parity"]["status"] in ("not verified on this OS", "passed")
    (note,) = row_notes([ReportRow(name=art.name, stage="export", notes=art.info["notes"])])
    assert note.startswith(f"{art.name}: coremltools lacks addcmul: torch decomposed it")


@torch.library.custom_op("kdtool_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def test_an_op_without_a_decomposition_fails_with_the_converters_first_line(tmp_path):
    """A custom op has no decomposition in torch's tables: the converter's own error stands, one line."""
    from compress.core.errors import ExportError
    from export.formats.coreml.exporter import CoreMLExporter
    from export.registry import ExportContext

    class Custom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.kdtool_test.twice(x) + 1

    with pytest.raises(ExportError, match="coremltools conversion failed for model.*twice") as e:
        CoreMLExporter().export(Custom().eval(), torch.randn(1, 3), tmp_path, ExportContext(dynamic_batch=False))
    assert "\n" not in e.value.message and e.value.exit_code == 4
