"""ExecuTorch artifacts built in a forked child process while the parent makes and checks the rest.

ExecuTorch's `to_edge_transform_and_lower` is single-threaded Python: its fx passes re-trace the
graph, XNNPACK's passes once per delegate partition (80 partitions for a MobileViTv2-2.0's fp32 and
int8 programs). In a profile of the MobileViTv2-2.0 android + ios + server export it was 59 % of
the time, one core busy and the other idle. A thread cannot use that core: the lowering holds the
GIL, and a parity run beside it in a thread went from 12.8 s to 62 s. A process can.

`Lowering` forks one child before anything else of the export runs (no other thread is alive
then, so no lock is copied held). The child builds the ExecuTorch XNNPACK jobs (fp32, int8) one after
another (the CoreML-delegate variant, short, stays in the parent to balance the two sides), each into
its own scratch folder, with one intra-op thread (PyTorch's rule for forked workers: OpenMP is not
fork-safe past one thread), and sends back the `Artifact`, the context fields the exporter set
(`dynamic_batch`, `max_batch`) and its own time, or the failure's reason. The parent, meanwhile,
exports and verifies the other formats, then `Lowering.take` waits for each ExecuTorch artifact,
moves its files into the atomic output folder and verifies it (the runtimes and parity run in the
parent, as before); while it waits, the parent computes the reference outputs that artifact's parity
will need (for int8 the PT2E model's, 45 s on MobileViTv2-2.0's 64 parity images here). Nothing
changes in the artifacts: only the order and the overlap. While the
child runs, the parent computes with one thread fewer (`threads - 1`, at least 1): with both at full
width, 3 busy threads on 2 cores made the parent's ONNX Runtime and PyTorch parity 2.6x slower
(OpenMP and ORT workers spin-wait at their barriers).

Not used once JAX runs in the process (litert-torch's converter starts its native threads: a LiteRT
export earlier in the same process, as in the peers study or a test session).
Used on Linux only (macOS: fork is unsafe once Apple's frameworks are loaded, as coremltools does)
when the machine has more than one core, and turned off with `KDTOOL_EXPORT_PROCESSES=0`.
With `--debug` the child's output goes to the terminal; otherwise to `lowering.log` in its scratch
folder, removed with it (ExecuTorch and coremltools print INFO lines and bars that would break the
parent's spinner; a failure's reason comes back through the pipe either way).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.errors import ExportError, KdtoolError
from export.artifact import Artifact
from export.registry import ExportContext, first_line

PARALLEL_FORMATS = ("executorch",)
"""Formats built in the child (XNNPACK variant only): their lowering is the long, single-threaded one."""
ENV = "KDTOOL_EXPORT_PROCESSES"
"""Set to 0 to build every artifact in the one process, in plan order."""
SPEC_FIELDS = ("dynamic_batch", "max_batch")
"""ExportContext fields an exporter may change; the child sends them back."""

Build = Callable[[Path], Artifact]


class LoweringFailed(ExportError):
    """The child's exporter raised: `str()` is the reason it gave (the artifact's failure reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)


def parallel_enabled(n_parallel: int, n_other: int) -> bool:
    """Whether a child is worth forking: jobs for both sides, Linux, more than one core, not turned off."""
    return (n_parallel > 0 and n_other > 0 and sys.platform.startswith("linux") and (os.cpu_count() or 1) > 1
            and os.environ.get(ENV, "1") != "0" and not jax_threads())


def jax_threads() -> bool:
    """Whether JAX has started its backends (native threads) in this process: litert-torch's converter
    does; a fork after that may deadlock in the child, as JAX itself warns."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bridge is not None and bool(getattr(bridge, "backends_are_initialized", lambda: True)())


class Lowering:
    """The forked child building `builds` (key → (build, spec)) in order; `take(key, ...)` collects one."""

    def __init__(self, builds: dict[int, tuple[Build, ExportContext]], debug: bool = False) -> None:
        import multiprocessing

        self.keys = set(builds)
        self.scratch = Path(tempfile.mkdtemp(prefix="kdtool-lowering-"))
        self._results: dict[int, tuple] = {}
        self._received = 0
        fork = multiprocessing.get_context("fork")
        self._receive, send = fork.Pipe(duplex=False)
        self._process = fork.Process(target=_child, args=(builds, self.scratch, send, debug), daemon=True)
        self._process.start()
        send.close()

    def take(self, key: int, into: Path, spec: ExportContext) -> tuple[Artifact, float]:
        """Wait for `key`'s artifact, move its files into `into`, apply the child's context changes.

        Returns:
            The artifact (paths under `into`) and the child's export time in seconds.

        Raises:
            LoweringFailed: the exporter failed in the child, or the child died (its exit code).
        """
        while key not in self._results:
            try:
                message = self._receive.recv()
            except (EOFError, OSError):
                self._process.join(timeout=5)
                code = self._process.exitcode
                raise LoweringFailed(f"the ExecuTorch lowering process died (exit code {code}) before "
                                     "this artifact was made; rerun with KDTOOL_EXPORT_PROCESSES=0 "
                                     "to lower in this process") from None
            self._results[message[1]] = message
            self._received += 1
        status, _, *rest = self._results.pop(key)
        if status == "failed":
            raise LoweringFailed(rest[0])
        artifact, fields, seconds = rest
        for name, value in fields.items():
            setattr(spec, name, value)
        source = self.scratch / str(key)
        for item in source.iterdir():
            shutil.move(str(item), into / item.name)

        def move(p: Path) -> Path:
            return into / Path(p).relative_to(source)

        artifact = artifact.model_copy(update={"path": move(artifact.path), "files": [move(f) for f in artifact.files]})
        return artifact, seconds

    def busy(self) -> bool:
        """Whether the child is still lowering: alive, with results still to send."""
        return self._received < len(self.keys) and self._process.is_alive()

    def close(self) -> None:
        """Stop the child if it is still running and remove the scratch folder."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(timeout=10)
        self._receive.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _child(builds: dict[int, tuple[Build, ExportContext]], scratch: Path, send: Any, debug: bool) -> None:
    """In the child: build each job, send ("ok", key, artifact, spec fields, seconds) or ("failed", key, reason)."""
    import torch

    torch.set_num_threads(1)
    if not debug:
        log = os.open(scratch / "lowering.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    for key, (build, spec) in builds.items():
        folder = scratch / str(key)
        folder.mkdir()
        t0 = time.perf_counter()
        try:
            artifact = build(folder)
            fields = {name: getattr(spec, name) for name in SPEC_FIELDS if hasattr(spec, name)}
            send.send(("ok", key, artifact, fields, round(time.perf_counter() - t0, 2)))
        except KdtoolError as e:
            send.send(("failed", key, str(e)))
        except Exception as e:  # a library bug in one format must not stop the others
            send.send(("failed", key, f"{type(e).__name__}: {first_line(e)}"))
    send.close()

