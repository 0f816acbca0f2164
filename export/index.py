"""The export stage's index (`export/meta.json`): a cache of the artifacts' own manifests.

Each artifact folder `<target>/<format>/<precision>/` is renamed into place whole, with its
`manifest.json` (inputs hash, files and their sha256, parity). That manifest is the truth: the
index is read, then every manifest on disk overrides or completes it, so an index that is missing
(a run killed before it was written), stale or unreadable is rebuilt from them. An artifact whose
files no longer match their manifest's sha256 is listed as failed (it is remade, never reused).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from export.manifest import MANIFEST, mismatches


def read_index(folder: Path) -> dict[str, dict[str, Any]]:
    """`{job folder: artifact entry}` of the export folder `folder`, rebuilt from the manifests on disk.

    Entries of the cached index whose folder is gone are dropped, except skipped artifacts (they have
    no files; the report shows them).
    """
    folder = Path(folder)
    index: dict[str, dict[str, Any]] = {}
    for entry in _cached_entries(folder):
        key = _job_key(entry, folder)
        if key is not None and (entry.get("status") == "skipped" or (folder / key).is_dir()):
            index[key] = entry
    for path in sorted(folder.glob(f"*/*/*/{MANIFEST}")):
        key = "/".join(path.parent.relative_to(folder).parts)
        if any(part.startswith(".") for part in key.split("/")):  # a temporary or a replaced folder
            continue
        manifest = load_manifest(path)
        cached = index.get(key)
        if manifest is not None and manifest.get("inputs_hash") and not _agrees(cached, manifest):
            index[key] = entry_from_manifest(folder, key, manifest)
        if index.get(key, {}).get("status") == "ok":
            index[key] = _checked(index[key], path.parent, manifest)
    for key, entry in list(index.items()):  # an ok entry needs its manifest to be verified
        if entry.get("status") == "ok" and not (folder / key / MANIFEST).is_file():
            index[key] = {**entry, "status": "failed", "reason": f"{folder / key / MANIFEST} is missing"}
    return index


def ordered(index: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Index entries by target (android, ios, server, custom), then in the order they were made."""
    from export.targets import CUSTOM_TARGET, TARGETS

    rank = {t: i for i, t in enumerate((*TARGETS, CUSTOM_TARGET))}
    return [index[k] for k in sorted(index, key=lambda k: rank.get(k.split("/")[0], len(rank)))]


def load_manifest(path: Path) -> dict[str, Any] | None:
    """A `manifest.json`, or None when it is missing or unreadable."""
    try:
        manifest = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def entry_from_manifest(folder: Path, key: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The index entry (an `Artifact` as JSON, plus `job` and `inputs_hash`) a manifest describes."""
    here = folder / key
    return {"name": manifest["name"], "format": manifest["format"], "precision": manifest["precision"],
            "path": str(here / manifest["file"]),
            "files": [str(here / item["name"]) for item in manifest.get("files") or []],
            "runtime": manifest["runtime"], "target": manifest.get("target"), "status": manifest["status"],
            "reason": manifest.get("reason"), "size_mb": manifest.get("size_mb"),
            "sha256": manifest.get("sha256"), "parity": manifest.get("parity"),
            "info": manifest.get("info") or {}, "job": key, "inputs_hash": manifest["inputs_hash"]}


def _cached_entries(folder: Path) -> list[dict[str, Any]]:
    """The entries of `folder/meta.json`; none when it is missing or unreadable (it is rebuilt)."""
    try:
        entries = json.loads((folder / "meta.json").read_text()).get("artifacts") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [e for e in entries if isinstance(e, dict)]


def _agrees(cached: dict[str, Any] | None, manifest: dict[str, Any]) -> bool:
    return (cached is not None and cached.get("inputs_hash") == manifest.get("inputs_hash")
            and cached.get("status") == manifest.get("status"))


def _checked(entry: dict[str, Any], artifact_folder: Path, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """`entry`, or the same entry marked failed when its files do not match its manifest."""
    if manifest is None:
        return {**entry, "status": "failed", "reason": f"{artifact_folder / MANIFEST} is unreadable"}
    bad = mismatches(artifact_folder, manifest)
    if not bad:
        return entry
    path, expected, found = bad[0]
    reason = (f"{path} is missing" if found is None
              else f"{path} does not match its manifest (sha256 {found[:12]}…, manifest {str(expected)[:12]}…)")
    return {**entry, "status": "failed", "reason": reason}


def _job_key(entry: dict[str, Any], folder: Path) -> str | None:
    """`<target>/<format>/<precision>` of an index entry (its folder relative to the export folder)."""
    if entry.get("job"):
        return entry["job"]
    try:
        rel = Path(entry["path"]).relative_to(folder)
    except (KeyError, TypeError, ValueError):
        return None
    return "/".join(rel.parts[:3]) if len(rel.parts) >= 3 else str(rel)
