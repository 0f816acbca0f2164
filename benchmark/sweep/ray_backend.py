"""`--backend ray`: the trials run as Ray Tune trials on an existing Ray cluster, Optuna as Ray's search algorithm.

`ray start --head` on one machine, `ray start --address HEAD:6379` on the others, then
`kdtool sweep ... --backend ray --ray-address auto` on the head. Each trial asks Ray for the CPUs the
recipe trains and measures with (the larger of `train.threads` and `benchmark.threads`) and a GPU when it
trains on CUDA (`trial_resources`); the teacher's weights travel in
Ray's object store, so the nodes need no shared folder. Each trial's run folder is written on the node
that ran it (`<sweep>/trials/ray-NNNN` there); its numbers come back to the head through Ray.
Pruning is not wired here (a trial runs all its epochs); constraints are applied to the results.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from benchmark.sweep.study import SweepSpec, sampler_for, trial_recipe
from compress.core.atomic import write_bytes, write_json, write_text
from compress.core.errors import KdtoolError


def connect(address: str | None) -> Any:
    """Import Ray and join the cluster at `address` (`auto`: the one started on this machine).

    Raises:
        KdtoolError: Ray is not installed (the install hint), or no cluster answers at the address.
    """
    try:
        import ray
        from ray import tune  # noqa: F401
    except ImportError:
        raise KdtoolError("--backend ray: Ray Tune is not installed", 'pip install "kdtool[ray]"') from None
    _probe(address)
    root = str(Path(__file__).resolve().parents[2])
    env = {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p),
           "KDTOOL_QUIET": "1"}
    try:
        ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=False, logging_level="ERROR",
                 runtime_env={"env_vars": env})
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise KdtoolError(f"--ray-address {address or 'auto'}: no Ray cluster there ({str(e).splitlines()[0]})",
                          "start one with `ray start --head` (and `ray start --address HEAD:6379` on the others)"
                          ) from None
    return ray


def _probe(address: str | None) -> None:
    """A `host:port` that does not answer fails here in seconds (Ray itself retries for minutes)."""
    import socket

    if not address or address == "auto" or address.startswith("local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except ValueError:
        raise KdtoolError(f"--ray-address {address}: not HOST:PORT or auto", "e.g. --ray-address auto") from None
    except OSError as e:
        raise KdtoolError(f"--ray-address {address}: no Ray cluster there ({e.strerror or e})",
                          "start one with `ray start --head` (and `ray start --address HEAD:6379` on the others)"
                          ) from None


def trial_resources(spec: SweepSpec, ray: Any) -> dict[str, float]:
    """What one Ray trial asks for: the CPUs it trains and measures with, and a GPU when it trains on CUDA
    (`train.device: cuda`, or no device set while CUDA is there: on this machine or in the cluster)."""
    import torch

    device = spec.extra.get("device")
    cuda = device == "cuda" or (device is None and (torch.cuda.is_available()
                                                     or ray.cluster_resources().get("GPU", 0) > 0))
    return {"cpu": spec.extra["threads"], "gpu": 1 if cuda else 0}


def _trainable(config: dict[str, Any], spec: SweepSpec, teacher_bytes: bytes, teacher_name: str) -> dict[str, Any]:
    """One Ray trial: write the teacher and the trial's recipe on this node, run the trial process."""
    import yaml
    from ray import tune

    from benchmark.sweep.trial import run_trial_process

    number = trial_number(Path(tune.get_context().get_trial_dir()).name)
    folder = trial_folder(spec, number)
    folder.mkdir(parents=True, exist_ok=True)
    teacher = spec.sweep_dir / "teacher" / teacher_name
    if not teacher.exists():
        teacher.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(teacher, teacher_bytes)
    values = {p.path: config[p.path] for p in spec.params}
    write_json(folder / "params.json", {"number": number, "params": values})
    write_text(folder / "recipe.yaml", yaml.safe_dump(trial_recipe(spec, values, number, teacher), sort_keys=False))
    write_json(folder / "trial.json", {"target": spec.target, "number": number})
    result = run_trial_process(folder, None)
    if result["state"] != "complete":
        raise RuntimeError(f"trial {number} {result['state']}: {result.get('reason')}")
    point = result["point"]
    missing = [o for o in spec.objectives if point.get(o) is None]
    if missing:
        raise RuntimeError(f"trial {number}: no {', '.join(missing)} measured")
    return {**{k: v for k, v in point.items() if v is not None}, "number": number, "folder": str(folder)}


def trial_number(trial_dir_name: str) -> int:
    """A Ray trial's number in the sweep: Ray names a trial's folder
    `<trainable>_<8-hex trial id>_<count from 1>_<values>_<date>`; the count minus one (the recipe's own point,
    evaluated first, is trial 0). The trainable and the results both read it here, so the recipe's name, its
    `params.json`, `sweep.json` and `--promote N` name the same trial.

    Raises:
        ValueError: a folder name Ray did not make.
    """
    found = re.search(r"_[0-9a-f]{8}_(\d+)_", trial_dir_name)
    if found is None:
        raise ValueError(f"{trial_dir_name!r} is not a Ray trial folder name")
    return int(found.group(1)) - 1


def trial_folder(spec: SweepSpec, number: int) -> Path:
    """A Ray trial's run folder, on the node that ran it."""
    return spec.sweep_dir / "trials" / f"ray-{number:04d}"


def run_ray(spec: SweepSpec, teacher: Path, recipe_point: dict[str, Any] | None, resources: dict[str, float],
            ray: Any) -> list[dict[str, Any]]:
    """Run the sweep's trials on the Ray cluster; one record per trial (as `results.records_from_study`)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from benchmark.sweep.objectives import directions

    modes = [d[:3] for d in directions(spec.objectives, spec.lower_is_better)]
    sampler = sampler_for(spec, constraints=False)  # Ray's trials carry no constraint values
    search = OptunaSearch(space={p.path: p.distribution() for p in spec.params}, metric=list(spec.objectives),
                          mode=modes, sampler=sampler, seed=spec.seed,
                          points_to_evaluate=[recipe_point] if recipe_point else None)
    trainable = tune.with_resources(tune.with_parameters(_trainable, spec=spec, teacher_bytes=teacher.read_bytes(),
                                                         teacher_name=teacher.name), resources)
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(search_alg=search, num_samples=spec.trials,
                                                              max_concurrent_trials=spec.workers),
                       run_config=tune.RunConfig(name=spec.study_name, storage_path=str(spec.sweep_dir / "ray"),
                                                 verbose=0))
    grid = tuner.fit()
    records = [_record(spec, result, recipe_point, i) for i, result in enumerate(grid)]
    return sorted(records, key=lambda r: r["number"])


def _record(spec: SweepSpec, result: Any, recipe_point: dict[str, Any] | None, index: int) -> dict[str, Any]:
    """A Ray result → a sweep record (the point from the metrics the trial returned, the reason from its error)."""
    metrics = dict(result.metrics or {})
    number = metrics.get("number")
    if number is None:  # the trial raised before it returned: its number from the folder Ray named
        try:
            number = trial_number(Path(str(result.path)).name)
        except ValueError:
            number = index
    params = {p.path: result.config.get(p.path) for p in spec.params}
    point = {} if result.error else metrics
    folder = point.get("folder") or str(trial_folder(spec, number))
    reason = None
    if result.error:
        reason = str(result.error).strip().splitlines()[-1]
    feasible = None if result.error else all(c.violation(point.get(c.name)) <= 0 for c in spec.constraints)
    return {"number": number, "state": "failed" if result.error else "complete", "params": params,
            **{k: point.get(k) for k in ("retention", "p50_ms", "size_mb", "metric")},
            "artifact": point.get("artifact"), "feasible": feasible, "reason": reason, "folder": folder,
            "recipe_point": recipe_point is not None and params == recipe_point, "retry_of": None}
