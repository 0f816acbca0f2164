"""`kdtool predict ARTIFACT INPUT...`: run an exported artifact (or a kdtool checkpoint) on the user's files.

The artifact's `manifest.json` says everything needed: the runtime, how files are decoded
(`preprocessing.decode`: raw image size and channels, or sample rate and clip length), how the
decoded batch becomes the model input (`preprocessing`: resize, mean/std), the task and the labels.
Decoding and preprocessing are the code the training data and the parity check went through
(`compress.data.files.Decoder`, `compress.models.build.Preprocess`), so predictions on the
validation files reproduce the card's metric for that artifact.

Inputs: image files, `.wav` files, folders of them (searched recursively, sorted), or a CSV whose
`path` column (else its first column) lists files relative to the CSV's folder.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.core.atomic import read_json
from compress.core.errors import ExportError, KdtoolError
from compress.data.files import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, Decoder
from compress.data.wav import read_wav
from compress.models.build import Preprocess
from export.manifest import MANIFEST, mismatches

STAGES = ("teacher", "student_baseline", "student_kd", "student_pruned")
MAX_BATCH = 64


@dataclass
class Predictor:
    """A loaded artifact with the facts from its manifest needed to decode, run and explain."""

    session: Any
    name: str
    task: str
    labels: list[str] | None
    output_names: list[str]
    decoder: Decoder
    preprocess: Preprocess
    fixed_batch: int | None
    max_batch: int


def load_predictor(artifact: str | Path, threads: int = 2, recipe: str | None = None,
                   verify: bool = True) -> Predictor:
    """Load an exported artifact (its file or folder, beside `manifest.json`) or a kdtool checkpoint.

    A checkpoint is a stage folder of a run (`runs/<name>/student_kd`) or a `.safetensors` file in
    one; it is rebuilt from `recipe` (default: the shipped recipe named like the run folder).
    With `verify`, an artifact's files must match the sha256 its manifest records.

    Raises:
        KdtoolError: a missing path, no manifest, a file that does not match its manifest (changed or
            damaged since export), a file its runtime cannot load (truncated), or a runtime that cannot
            run here (exit 2).
    """
    path = Path(artifact)
    if not path.exists():
        raise KdtoolError(f"artifact {path} does not exist", "pass an exported file or its folder")
    folder = path if path.is_dir() and path.suffix != ".mlpackage" else path.parent
    if folder.name in STAGES and (folder / "meta.json").exists():
        return _checkpoint_predictor(folder, path if path.is_file() else folder / "best.safetensors", recipe)
    if not (folder / MANIFEST).is_file():
        raise KdtoolError(f"artifact {path} has no {MANIFEST} beside it",
                          "predict runs artifacts exported by kdtool (kdtool export writes the manifest)")
    manifest = read_json(folder / MANIFEST)
    file = folder / manifest["file"] if path == folder else path
    if verify:
        _check_files(folder, manifest)
    from export.formats import get_runtime

    runtime = get_runtime(manifest["runtime"])
    reason = runtime.available()
    if reason is not None:
        raise KdtoolError(f"{file} cannot run here: {reason}", "run it on a machine that has its runtime")
    try:
        session = runtime.load(file, threads)
    except ExportError as e:  # a truncated or foreign file given to predict is bad input (exit 2), naming it
        raise KdtoolError(e.message, e.hint) from e
    shape = manifest["inputs"][0]["shape"]
    info = manifest.get("info") or {}
    return Predictor(
        session=session, name=manifest["name"], task=manifest["task"],
        labels=manifest.get("labels"), output_names=_output_names(manifest),
        decoder=_decoder(manifest["preprocessing"]), preprocess=_preprocess(manifest["preprocessing"]),
        fixed_batch=shape[0] if isinstance(shape[0], int) else None,
        max_batch=min(MAX_BATCH, info.get("max_batch") or MAX_BATCH))


def _check_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Refuse an artifact whose files differ from the sha256 its manifest recorded at export."""
    bad = mismatches(folder, manifest)
    if not bad:
        return
    path, expected, found = bad[0]
    if found is None:
        raise KdtoolError(f"{path}, listed in {folder / MANIFEST}, is missing", "export the artifact again")
    raise KdtoolError(f"{path} does not match its manifest: sha256 {found}, manifest says {expected}",
                      "the file changed after export (damaged or edited): export it again, or pass --no-verify "
                      "to run it anyway")


def _checkpoint_predictor(stage: Path, weights: Path, recipe: str | None) -> Predictor:
    """A stage's weights rebuilt from the recipe (architecture, task, preprocessing)."""
    from compress.context import Context
    from compress.core.runfolder import RunFolder
    from compress.models.weights import load_weights
    from export.formats.pytorch.runtime import TorchSession
    from recipes.load import load_recipe

    r, _, _ = load_recipe(recipe or stage.parent.name)
    ctx = Context(r, RunFolder(stage.parent))
    built = ctx.load(stage.name)
    if weights.name != "best.safetensors":
        load_weights(built.module, weights, stage.name)
    pre = built.preprocess
    decoder = Decoder.for_config(pre.kind if pre.kind in ("image", "audio") else "image", r.data)
    return Predictor(session=TorchSession(built.module), name=stage.name, task=ctx.task.kind,
                     labels=list(ctx.task.labels) if ctx.task.labels else None,
                     output_names=list(ctx.task.outputs or []), decoder=decoder, preprocess=pre,
                     fixed_batch=None, max_batch=MAX_BATCH)


def _output_names(manifest: dict[str, Any]) -> list[str]:
    """Regression output names, from the manifest's output meaning (`values (N, 2): valence, arousal`)."""
    meaning = (manifest.get("outputs") or [{}])[0].get("meaning", "")
    if manifest.get("task") != "regression" or "): " not in meaning:
        return []
    return [n.strip() for n in meaning.split("): ", 1)[1].split(",") if n.strip()]


def _preprocess(d: dict[str, Any]) -> Preprocess:
    names = {f.name for f in fields(Preprocess)}
    return Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def _decoder(d: dict[str, Any]) -> Decoder:
    """The file decoder the artifact's data went through (`preprocessing.decode`; older manifests: input size)."""
    if d.get("decode"):
        return Decoder(**d["decode"])
    kind = "audio" if d.get("kind") == "audio" else "image"
    return Decoder(kind, image_size=d.get("input_size") or 224, channels=d.get("channels") or 3,
                   sample_rate=d.get("sample_rate") or 16000, num_samples=d.get("num_samples") or 16000)


def collect_inputs(items: list[str | Path]) -> list[Path]:
    """Files from paths, folders (recursive, sorted) and CSVs of paths; each must exist."""
    files: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise KdtoolError(f"input {item} does not exist", "pass image or .wav files, folders, or a CSV of paths")
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS | AUDIO_EXTENSIONS)
            if not found:
                raise KdtoolError(f"input folder {item} holds no image or .wav file", "point at the files")
            files += found
        elif item.suffix.lower() == ".csv":
            files += _csv_paths(item)
        else:
            files.append(item)
    return files


def _csv_paths(path: Path) -> list[Path]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise KdtoolError(f"input {path} is empty", "a CSV with a `path` column")
    col = rows[0].index("path") if "path" in rows[0] else 0
    files = [path.parent / row[col] for row in rows[1:] if row]
    for p in files:
        if not p.is_file():
            raise KdtoolError(f"{path}: listed file {p} does not exist", "paths are relative to the CSV's folder")
    return files


def decode(file: Path, decoder: Decoder, resample: bool = True) -> torch.Tensor:
    """One file → the raw sample the training data loader would make of it."""
    suffix = file.suffix.lower()
    want = "image" if decoder.kind == "image" else "audio"
    have = "image" if suffix in IMAGE_EXTENSIONS else "audio" if suffix in AUDIO_EXTENSIONS else None
    if have != want:
        raise KdtoolError(f"input {file}: not {'an image' if want == 'image' else 'a .wav file'}",
                          f"this model takes {want} files")
    if want == "audio" and not resample:
        _, rate = read_wav(file, header_only=True)
        if rate != decoder.sample_rate:
            raise KdtoolError(f"input {file}: {rate} Hz, the model takes {decoder.sample_rate} Hz",
                              "resample it, or drop --no-resample to resample linearly")
    try:
        return decoder.to_tensor(decoder.decode(file))
    except KdtoolError:
        raise
    except Exception as e:  # PIL and the WAV reader raise many types for a bad file
        raise KdtoolError(f"input {file}: cannot be read ({type(e).__name__}: {e})",
                          "is it a valid image or PCM .wav file?") from e


def run_files(p: Predictor, files: list[Path], resample: bool = True) -> np.ndarray:
    """The artifact's raw outputs for `files`, (N, outputs), in batches the artifact accepts."""
    step = p.fixed_batch or p.max_batch
    outs = []
    for start in range(0, len(files), step):
        raw = torch.stack([decode(f, p.decoder, resample) for f in files[start:start + step]])
        x = p.preprocess(raw).numpy().astype(np.float32)
        n = len(x)
        if p.fixed_batch and n < p.fixed_batch:  # pad a fixed-batch artifact; keep the real rows
            x = np.concatenate([x, np.repeat(x[-1:], p.fixed_batch - n, axis=0)])
        outs.append(np.asarray(p.session.run(x), dtype=np.float32).reshape(len(x), -1)[:n])
    return np.concatenate(outs)


def explain(row: np.ndarray, p: Predictor, top_k: int = 3) -> dict[str, Any]:
    """One output row in the user's terms: label and score (binary P(positive), multiclass top-k,
    multilabel labels over 0.5, regression named values)."""
    n = len(row)
    labels = p.labels or ([f"output_{i}" for i in range(n)] if p.task == "regression" else [str(i) for i in range(n)])
    if p.task == "regression":
        names = p.output_names if len(p.output_names) == n else labels
        return {"label": None, "outputs": {k: float(v) for k, v in zip(names, row, strict=True)}}
    if p.task == "multilabel" or (p.task == "binary" and n == 1):
        prob = 1.0 / (1.0 + np.exp(-row.astype(np.float64)))
        if p.task == "binary":
            names = p.labels or ["negative", "positive"]
            return {"label": names[1] if prob[0] >= 0.5 else names[0], "p_positive": float(prob[0])}
        on = [labels[i] for i in range(n) if prob[i] >= 0.5]
        return {"label": ",".join(on) or "-", "scores": {labels[i]: float(prob[i]) for i in range(n)}}
    e = np.exp(row.astype(np.float64) - row.max())
    prob = e / e.sum()
    order = np.argsort(-prob)[:top_k]
    out: dict[str, Any] = {"label": labels[order[0]], "score": float(prob[order[0]]),
                           "top_k": [[labels[i], float(prob[i])] for i in order]}
    if p.task == "binary":
        out["p_positive"] = float(prob[1])
    return out


def line(file: Path, result: dict[str, Any]) -> str:
    """One printed line per input."""
    if "outputs" in result:
        return f"{file}  " + "  ".join(f"{k}={v:.4f}" for k, v in result["outputs"].items())
    if "p_positive" in result:
        return f"{file}  {result['label']}  P(positive)={result['p_positive']:.3f}"
    if "top_k" in result:
        return f"{file}  {result['label']}  {result['score']:.3f}  (top {len(result['top_k'])}: " + ", ".join(
            f"{lab} {s:.3f}" for lab, s in result["top_k"]) + ")"
    over = {k: v for k, v in result["scores"].items() if v >= 0.5}
    return f"{file}  {result['label']}  " + " ".join(f"{k}={v:.3f}" for k, v in over.items())


def predict(artifact: str | Path, inputs: list[str | Path], top_k: int = 3, threads: int = 2,
            resample: bool = True, recipe: str | None = None, verify: bool = True) -> list[dict[str, Any]]:
    """Run `artifact` on `inputs`; one result per file (`input`, `label`, and scores per task).

    `verify`: refuse an artifact whose files do not match its manifest's sha256 (see `load_predictor`)."""
    files = collect_inputs(inputs)  # a missing input is named before the artifact loads
    p = load_predictor(artifact, threads, recipe, verify)
    outputs = run_files(p, files, resample)
    return [{"input": str(f), **explain(row, p, top_k)} for f, row in zip(files, outputs, strict=True)]
