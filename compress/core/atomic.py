"""Atomic writes and content hashes: nothing half-written, nothing overwritten by accident."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from compress.core import faults
from compress.core.errors import KdtoolError

DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}
"""Write errors a user fixes by freeing space or choosing another folder: one line, exit code 2."""


LOW_SPACE = 1 << 20
"""A write that fails with less free space than this (bytes) is reported as a full disk."""


class DiskWriteError(KdtoolError):
    """A write failed for a reason of the disk (full, quota, read-only, permissions); nothing was replaced."""


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it into place, else remove it.

    The temporary lives in the same folder so `os.replace` is atomic. A failure (including a
    full disk) leaves any previous `final` byte-identical and no temporary behind. The result gets
    the mode of the file it replaces, else the usual mode for new files (0666/0777 minus the umask),
    not `mkstemp`'s private 0600.

    Raises:
        DiskWriteError: the disk is full, over quota, read-only or not writable (exit code 2).
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KdtoolError(f"cannot create folder {final.parent}: {e.strerror}",
                          "choose a writable --out") from e
    if not os.access(final.parent, os.W_OK):
        raise KdtoolError(f"folder {final.parent} is not writable",
                          "choose a writable --out or fix permissions")
    mode = final.stat().st_mode & 0o777 if final.exists() else (0o777 if is_dir else 0o666) & ~_umask()
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(final), suffix=TMP_SUFFIX, dir=final.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=_tmp_prefix(final), suffix=TMP_SUFFIX, dir=final.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:  # creating the temporary: a full disk, or a folder we may not write
        reason = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}.get(e.errno)
        disk = _disk_error(e, final, reason)
        if disk is None:
            raise
        raise disk from e
    try:
        yield tmp
        os.chmod(tmp, mode)
        if is_dir:
            old = final.with_name(f".{final.name}.old")  # a kill between the two renames below left it
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                _replace(final, old)
                try:
                    _replace(tmp, final)
                except BaseException:
                    os.replace(old, final)  # the previous folder goes back: a failure replaces nothing
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                _replace(tmp, final)
        else:
            _replace(tmp, final)
    except BaseException as e:
        # judged before the temporary is removed (that frees the space); our own errors stay as they are
        disk = _disk_error(e, final) if isinstance(e, Exception) and not isinstance(e, KdtoolError) else None
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if disk is not None:
            raise disk from e
        raise


TMP_SUFFIX = ".tmp"
"""Temporaries are `.<final name>.<writer pid>.<random>.tmp`: a kill leaves one, `remove_orphans` clears it."""


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}."


def remove_orphans(root: str | os.PathLike) -> list[Path]:
    """Remove the temporaries under `root` left by writers that were killed (their pid is gone).

    A temporary of a live process (another run writing into the same folder) is left alone, and so is
    one without a pid in its name. Returns the paths removed."""
    removed = []
    for path in sorted(Path(root).rglob(f".*{TMP_SUFFIX}")) if Path(root).is_dir() else []:
        parts = path.name.split(".")  # ['', <final name parts...>, <pid>, <random>, 'tmp']
        pid = parts[-3] if len(parts) >= 5 else ""
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _replace(src: Path, dst: Path) -> None:
    """`os.replace`, with the crash tests' kill points around it (`compress.core.faults`)."""
    faults.point("before", dst)
    os.replace(src, dst)
    faults.point("after", dst)


def _disk_error(e: Exception, final: Path, reason: str | None = None) -> DiskWriteError | None:
    """The one-line error for a full or read-only disk, else None.

    Writers such as safetensors wrap the OS error in their own exception types, so the cause chain
    is searched and a full disk is also recognised by the OS's message; torch's zip writer only says
    "unexpected pos", so a failed write on a disk left with under `LOW_SPACE` bytes counts as full.
    """
    seen: BaseException | None = e
    for _ in range(8):  # the cause chain, a few links deep
        if reason is not None or seen is None:
            break
        if isinstance(seen, OSError):
            reason = DISK_ERRNOS.get(seen.errno)
        if reason is None and ("No space left on device" in str(seen) or "StorageFull" in str(seen)):
            reason = DISK_ERRNOS[errno.ENOSPC]
        seen = seen.__cause__ or seen.__context__
    if reason is None:
        try:
            if shutil.disk_usage(final.parent).free < LOW_SPACE:
                reason = DISK_ERRNOS[errno.ENOSPC]
        except OSError:
            pass
    if reason is None:
        return None
    return DiskWriteError(f"cannot write {final}: {reason}; the previous file, if any, is unchanged",
                          "free space or fix permissions and rerun, or choose another --out")


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is a global swap)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (fsync before rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def json_text(obj: Any, indent: int | None = 2) -> str:
    """`obj` as JSON text (paths, pydantic models and numpy/torch scalars included)."""
    return json.dumps(obj, indent=indent, sort_keys=False, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    write_text(path, json_text(obj) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a missing or corrupt file into a KdtoolError."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise KdtoolError(f"{path} not found", "run the stage that makes it first") from e
    except IsADirectoryError as e:
        raise KdtoolError(f"{path} is a folder, not a JSON file", "name the file inside it") from e
    except json.JSONDecodeError as e:
        raise KdtoolError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})",
                          "delete it and rerun") from e


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, or of every file under a folder (sorted by relative path)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Stable hash of a JSON-serialisable object (keys sorted)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def size_on_disk_mb(path: str | os.PathLike) -> float:
    """Size in MB (1e6 bytes) of a file or a folder's files (ONNX external `.data` included by the caller)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    return path.stat().st_size / 1e6
