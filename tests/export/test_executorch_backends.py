"""A .pte file naming a delegate this ExecuTorch build lacks is named before loading (`missing_backends`)."""

from __future__ import annotations


def test_a_pte_naming_an_unregistered_delegate_is_named(tmp_path):
    from export.formats.executorch.runtime import missing_backends

    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\x00ET12...CoreMLBackend\x00...XnnpackBackend\x00")
    assert missing_backends(pte, ["XnnpackBackend"]) == ["CoreMLBackend"]
    assert missing_backends(pte, ["XnnpackBackend", "CoreMLBackend"]) == []
