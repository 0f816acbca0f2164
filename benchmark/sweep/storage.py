"""Where a study lives: SQLite in the sweep folder by default, any SQLAlchemy URL across machines.

Optuna's RDB storage is the engine: the same command started on N machines with one
`--storage postgresql://...` joins one study. A URL is printed only with its password masked.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from compress.core.errors import KdtoolError

HEARTBEAT_S = 30
"""Seconds between a running trial's heartbeats; a trial silent for GRACE_S is failed and re-queued
(on another machine: a worker that died there). Trials of a dead process on this machine are found
at once by their process id."""
GRACE_S = 120

DRIVERS = {"postgresql": ("psycopg2", "kdtool[postgres]"), "mysql": ("pymysql", "pymysql")}


def default_url(sweep_dir: Path) -> str:
    """`sqlite:///<sweep>/study.db` (an absolute path: workers may run from other folders)."""
    return f"sqlite:///{(Path(sweep_dir) / 'study.db').resolve()}"


def masked(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001  (an unparsable URL: mask everything between ':' and '@')
        head, sep, tail = url.rpartition("@")
        if not sep:
            return url
        scheme, _, creds = head.partition("://")
        user = creds.split(":")[0]
        return f"{scheme}://{user}:***@{tail}"


def open_storage(url: str) -> Any:
    """An Optuna RDB storage with heartbeats, failed trials re-queued; its tables made if missing.

    Raises:
        KdtoolError: a malformed URL, a missing database driver (with the install hint) or a server that
            cannot be reached (the URL named without its password).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError, ProgrammingError

    shown = masked(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise KdtoolError(f"--storage {shown} is not a database URL",
                          "e.g. postgresql://user:pass@host:5432/kdtool or sqlite:///sweep.db") from None
    backend = parsed.get_backend_name()
    url = _with_installed_driver(url, parsed)
    driver = DRIVERS.get(backend)
    kwargs: dict[str, Any] = {}
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    if backend == "sqlite":
        kwargs["connect_args"] = {"timeout": 60}  # several workers write one file
    try:
        try:
            return _rdb(url, kwargs)
        except (IntegrityError, ProgrammingError):  # another machine made the tables at this moment: use them
            time.sleep(2)
            return _rdb(url, kwargs)
    except (ImportError, NoSuchModuleError) as e:
        hint = f"pip install \"{driver[1]}\"" if driver else "install the SQLAlchemy driver for this database"
        raise KdtoolError(f"--storage {shown}: the database driver is not installed ({e})", hint) from None
    except OperationalError as e:
        first = str(e.orig if getattr(e, "orig", None) else e).strip().splitlines()[0]
        if parsed.password:
            first = first.replace(str(parsed.password), "***")
        raise KdtoolError(f"--storage {shown}: cannot reach the database ({first})",
                          "check the host, port, user and that the database exists") from None
    except (IntegrityError, ProgrammingError) as e:
        raise KdtoolError(f"--storage {shown}: cannot create the study tables ({str(e).splitlines()[0]})",
                          "rerun the command") from None


def _rdb(url: str, kwargs: dict[str, Any]) -> Any:
    """Optuna's RDB storage with heartbeats; a trial silent for GRACE_S is failed and its parameters queued again."""
    import optuna

    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5.0: said once, in the docs
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))


def _with_installed_driver(url: str, parsed: Any) -> str:
    """`postgresql://` means psycopg 3 to SQLAlchemy 2.1; with only psycopg2 installed (the `postgres`
    extra) use that driver instead."""
    import importlib.util

    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return url
