"""The study results files: CPU kinds, the round trip through a file, and the docs rendered from them."""

from __future__ import annotations

from tests.perf import render_docs, results


def test_cpu_kind_names_the_family_and_the_widest_isa():
    assert results.cpu_kind("AMD EPYC 7B13 64-Core Processor", ["avx2"]) == "amd-epyc-avx2"
    assert results.cpu_kind("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz",
                            ["avx2", "avx512f", "avx512_vnni", "amx_tile"]) == "intel-xeon-avx512-vnni-amx"
    assert results.cpu_kind("AMD EPYC 9B14", ["avx2", "avx512f", "avx512_vnni"]) == "amd-epyc-avx512-vnni"


def test_results_file_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    header = dict(results.machine(), cpu_kind="test-kind")
    path = results.write("study", ("model", "ms"), [("a", 1.5), ("b", None)], note="how to read it", header=header)
    assert path == tmp_path / "study-test-kind.csv"
    meta, columns, rows = results.read(path)
    assert meta["cpu_kind"] == "test-kind" and meta["note"] == "how to read it" and "torch" in meta["versions"]
    assert columns == ["model", "ms"] and rows == [["a", "1.5"], ["b", ""]]


def test_render_page_fills_the_block_from_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RESULTS", tmp_path)
    monkeypatch.setattr(render_docs, "RESULTS", tmp_path)
    results.write("study", ("model", "ms"), [("a", 1.5)], header=dict(results.machine(), cpu_kind="k1"))
    page = f"# Study\n\n{render_docs.BEGIN}\nold\n{render_docs.END}\n\ntail\n"
    out = render_docs.render_page(page, "study")
    assert "| a | 1.5 |" in out and "`k1`" in out and "old" not in out and out.endswith("tail\n")
    assert render_docs.render_page(out, "study") == out


def test_benchmark_pages_match_their_results_files():
    assert not render_docs.stale_pages(), "run python -m tests.perf.render_docs"


def test_kd_ablation_rows_per_seed_then_mean_and_std():
    from tests.perf.kd_ablation import COLUMNS, rows

    summary = {"teacher": 0.93, "baseline": {"values": [0.88, 0.9], "mean": 0.89, "std": 0.014},
               "kd": {"values": [0.91, 0.94], "mean": 0.925, "std": 0.021}, "gain": 0.035,
               "paired_gain": {"std": 0.007}}
    out = rows("10 %", summary)
    assert [r[1] for r in out] == [0, 1, "mean", "std"] and all(len(r) == len(COLUMNS) for r in out)
    assert out[0][2:] == ("0.9300", "0.8800", "0.9100", "+0.0300") and out[2][5] == "+0.0350"
