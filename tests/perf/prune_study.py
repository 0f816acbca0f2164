"""Structured pruning, measured: does the teacher recover a pruned student better than hard labels?

    python -m tests.perf.prune_study --part recovery             # (b) quickstart, 3 seeds (~15 min, 2 cores)
    python -m tests.perf.prune_study --part real-size            # (a) ResNet-18, MobileNetV3-L, MobileViTv2-050
    python -m tests.perf.prune_study --part real-size --no-latency --models resnet18

(b) `recovery`: the quickstart recipe through kdtool's own stages. The teacher is trained once; for each
seed (`distill.train.seed`) the KD student is distilled, then pruned (`prune.ratio`, L2, uniform) and
recovered two ways from the same pruned weights: `recover: kd` (the recipe's distillation loss, teacher
online) and `recover: hard` (hard labels), same epochs, lr and seed. Rows: validation accuracy of the
unpruned KD student, of the pruned student before recovery, and after each recovery.

(a) `real-size`: timm students at 224 px, briefly trained as the peers study trains them
(`tests.perf.trained.briefly_trained`), pruned by 30 % and 50 % of channels (L2, uniform, classifier
kept), against the unpruned model: params, GFLOPs, held-out accuracy (no recovery: what pruning alone
costs), ONNX Runtime and ExecuTorch (XNNPACK) fp32 exports checked for parity, and their batch-1
median latency unless `--no-latency`, each file timed alone in fresh processes as the peers study times
them (a loaded machine distorts it: the file records the load average).

Rows go to `docs/benchmarks/results/prune_recovery-<cpu kind>.csv` and `prune_real_size-<cpu kind>.csv`
(tests/perf/results.py: headed by the CPU model, its flags, the OS, the load average and the versions);
`python -m tests.perf.render_docs` renders them into docs/benchmarks/prune_recovery.md and prune_real_size.md.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

COLUMNS = {"recovery": ("model", "variant", "seed", "ratio", "params", "gflops", "accuracy", "retention_vs_unpruned",
                        "seconds"),
           "real-size": ("model", "variant", "ratio", "params", "gflops", "accuracy", "retention_vs_unpruned",
                         "ort_parity", "executorch_parity", "ort_ms", "executorch_ms")}
LATENCY_RUNS = 60
"""Timed batch-1 calls per artifact, each file alone in fresh processes (`tests.perf.peers.process_medians`)."""
STUDIES = {"recovery": "prune_recovery", "real-size": "prune_real_size"}
NOTES = {"recovery": "quickstart, prune.ratio {ratio} (L2, uniform); recovery {epochs} epochs at lr 0.005 from the "
                     "same pruned weights; accuracy on the validation split; ratio: channels actually removed",
         "real-size": "briefly trained on generated images ({steps} steps), pruned without recovery; accuracy on "
                      "64 held-out generated images; {latency}.{untrained}"}


def write_rows(part: str, rows: list[dict], **facts) -> Path:
    """The part's rows to docs/benchmarks/results/prune_<part>-<cpu kind>.csv (tests/perf/results.py)."""
    from tests.perf.results import write

    return write(STUDIES[part], COLUMNS[part], [[r.get(c) for c in COLUMNS[part]] for r in rows],
                 note=NOTES[part].format(**{"untrained": "", **facts}))


def recovery_part(seeds: int, ratio: float, epochs: int, out: Path) -> list[dict]:
    """(b) the quickstart: unpruned KD student, pruned, pruned + KD recovery, pruned + hard recovery."""
    from compress.context import Context
    from compress.core.runfolder import KD_STUDENT, PRUNED, RunFolder
    from compress.distill.stage import run_stage, run_teacher
    from compress.prune.stage import run_prune
    from recipes.load import load_recipe

    rows = []
    for seed in range(seeds):
        def ctx_for(recover: str, train_epochs: int, seed: int = seed) -> Context:
            sets = [f"distill.train.seed={seed}", f"prune.ratio={ratio}", f"prune.recover={recover}",
                    f"prune.train.epochs={train_epochs}", "prune.train.lr=0.005", f"prune.train.seed={seed}",
                    "prune.train.scheduler=onecycle", "prune.train.weight_decay=0.02"]
            r, _, _ = load_recipe("quickstart", sets)
            return Context(r, RunFolder.for_recipe(out, r.name))

        ctx = ctx_for("none", 0)
        start = time.perf_counter()
        run_teacher(ctx, resume=True)  # trained once (its inputs do not depend on the seed); resumable
        kd = run_stage(ctx, KD_STUDENT, force=True)  # this seed's KD student
        unpruned = kd.metrics["accuracy"]
        rows.append(_row("recovery", "quickstart", "unpruned (KD)", seed, 0.0, ctx.run.stage(KD_STUDENT), unpruned,
                         unpruned, time.perf_counter() - start))
        for recover, n in (("none", 0), ("kd", epochs), ("hard", epochs)):
            ctx = ctx_for(recover, n)
            start = time.perf_counter()
            meta = run_prune(ctx, force=True)
            label = {"none": "pruned, no recovery", "kd": f"pruned + KD recovery ({n} ep)",
                     "hard": f"pruned + hard-label recovery ({n} ep)"}[recover]
            rows.append(_row("recovery", "quickstart", label, seed, meta["pruning"]["channels_removed"],
                             ctx.run.stage(PRUNED), meta["metrics"]["accuracy"], unpruned,
                             time.perf_counter() - start, meta))
            print(f"seed {seed} {label}: accuracy {meta['metrics']['accuracy']:.4f} (unpruned {unpruned:.4f})",
                  flush=True)
        write_rows("recovery", rows, ratio=ratio, epochs=epochs)  # a finished seed is kept if a later one stops
    return rows


def _row(part: str, model: str, variant: str, seed: int, ratio: float, folder: Path, accuracy: float,
         unpruned: float, seconds: float, meta: dict | None = None) -> dict:
    from compress.core.atomic import read_json

    meta = meta or read_json(folder / "meta.json")
    return {"model": model, "variant": variant, "seed": seed, "ratio": ratio,
            "params": meta.get("params"), "gflops": meta.get("gflops"), "accuracy": round(accuracy, 4),
            "retention_vs_unpruned": round(accuracy / unpruned, 4) if unpruned else None,
            "seconds": round(seconds, 1)}


def summarize(rows: list[dict]) -> None:
    """Mean ± std (over seeds) of each variant's accuracy."""
    by: dict[str, list[float]] = {}
    for r in rows:
        by.setdefault(f"{r['model']} {r['variant']}", []).append(float(r["accuracy"]))
    for name, values in by.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name}: accuracy {statistics.mean(values):.4f} ± {spread:.4f} over {len(values)} seed(s) "
              f"(min {min(values):.4f}, max {max(values):.4f})")


REAL_SIZE = {"resnet18": 224, "mobilenetv3_large_100": 224, "mobilevitv2_050": 224}


def real_size_part(models: list[str], ratios: list[float], steps: int, latency: bool, threads: int) -> list[dict]:
    """(a) real-size students: unpruned vs pruned by each ratio (no recovery), exports with parity."""
    import timm

    from compress.distill.sanity import gflops
    from compress.models.build import count_params
    from compress.prune.checks import check_forward
    from compress.prune.pruner import prune_ratio
    from tests.perf.trained import briefly_trained, held_out_accuracy, task_images

    torch.set_num_threads(threads)
    rows = []
    for name in models:
        size = REAL_SIZE[name]
        torch.manual_seed(0)
        trained = briefly_trained(timm.create_model(name, pretrained=False, num_classes=10), size, steps=steps)
        example, _ = task_images(2, size, seed=5)
        unpruned_acc = held_out_accuracy(trained, size)
        for ratio in (0.0, *ratios):
            start = time.perf_counter()
            model = copy.deepcopy(trained)
            if ratio:
                prune_ratio(model, example[:1], ratio, criterion="l2", scope="uniform", ignore=[])
                check_forward(model, example, trained, name)
            acc = held_out_accuracy(model, size)
            row = {"model": f"{name}@{size}", "variant": "unpruned" if not ratio else "pruned",
                   "seed": 0, "ratio": ratio, "params": count_params(model),
                   "gflops": round(gflops(model.eval(), example[:1]), 4), "accuracy": round(acc, 4),
                   "retention_vs_unpruned": round(acc / unpruned_acc, 4) if unpruned_acc else None}
            row.update(_exports(model, example, latency, threads))
            row["seconds"] = round(time.perf_counter() - start, 1)
            print(row, flush=True)
            rows.append(row)
    return rows


def _exports(model: torch.nn.Module, example: torch.Tensor, latency: bool, threads: int) -> dict:
    """ONNX Runtime and ExecuTorch fp32 artifacts of `model` (kdtool's exporters and parity check on
    held-out images), and their batch-1 median latency."""
    from export.run import export_model
    from tests.perf.trained import task_images

    inputs, _ = task_images(16, example.shape[-1], seed=6)
    tmp = Path(tempfile.mkdtemp(prefix="prune_study_"))
    out: dict = {}
    try:
        artifacts = export_model(model, example, tmp, formats=["onnx", "executorch"], inputs=inputs, int8=False,
                                 threads=threads, batch="dynamic")
        for a in artifacts:
            key = "ort" if a.format == "onnx" else "executorch"
            parity = a.parity.model_dump() if a.parity is not None else {}
            out[f"{key}_parity"] = (f"{parity.get('status')} (max_abs {parity.get('max_abs') or 0:.1e}, agreement "
                                    f"{parity.get('agreement')})" if a.status == "ok" else f"{a.status}: {a.reason}")
        timed = {key: ("kdtool", Path(a.path)) for a in artifacts if a.status == "ok"
                 for key in ["ort" if a.format == "onnx" else "executorch"]}
        if latency and timed:
            from tests.perf.peers import process_medians

            ms, _ = process_medians(timed, example[:1].numpy(), runs=LATENCY_RUNS, threads=threads)
            out.update({f"{key}_ms": round(value, 3) for key, value in ms.items()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def merged_rows(part: str, rows: list[dict]) -> list[dict]:
    """The rows of this CPU kind's results file whose model this run did not measure (`--merge`)."""
    from tests.perf.results import cpu_kind, path_for, read

    path = path_for(STUDIES[part], cpu_kind())
    if not path.exists():
        return []
    _, columns, old = read(path)
    ran = {r["model"] for r in rows}
    return [row for row in (dict(zip(columns, values, strict=False)) for values in old) if row["model"] not in ran]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("recovery", "real-size"), required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5, help="recovery: channel ratio pruned")
    parser.add_argument("--epochs", type=int, default=5, help="recovery: fine-tune epochs of each recovery")
    parser.add_argument("--models", default=",".join(REAL_SIZE))
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--steps", type=int, default=200, help="real-size: briefly_trained steps")
    parser.add_argument("--no-latency", dest="latency", action="store_false")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="recovery: run folder (default: a temporary one)")
    parser.add_argument("--merge", action="store_true",
                        help="real-size: keep the results file's rows of the models not in --models")
    a = parser.parse_args()
    if a.part == "recovery":
        out = a.out or Path(tempfile.mkdtemp(prefix="prune_study_runs_"))
        rows = recovery_part(a.seeds, a.ratio, a.epochs, out)
    else:
        rows = real_size_part(a.models.split(","), [float(r) for r in a.ratios.split(",")], a.steps, a.latency,
                              a.threads)
    kept = merged_rows(a.part, rows) if a.merge else []
    summarize(rows)
    latency = (f"latency batch 1, {a.threads} threads, median of {LATENCY_RUNS} calls, each file alone in fresh "
               "processes taking turns" if a.latency else "latency not measured")
    if kept:
        latency += (f"; rows of {', '.join(sorted({r['model'] for r in kept}))} kept from the file's earlier run "
                    "(--merge), the others measured by this command")
    write_rows(a.part, kept + rows, ratio=a.ratio, epochs=a.epochs, steps=a.steps, latency=latency,
               untrained=" UNTRAINED (0 steps): accuracy is chance; only params, GFLOPs and parity mean anything."
               if a.part == "real-size" and a.steps == 0 else "")


if __name__ == "__main__":
    main()
