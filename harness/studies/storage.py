"""Where a study lives: Optuna storages (RDB URLs, journal files), samplers, and a study opened
and checked against what this command asks (see :mod:`harness.studies`)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from ..errors import StudyError
from ..io import redact_url
from .spec import GRACE_INTERVALS, SEED_STRIDE, StudyConfig


def default_storage(tracking_uri: str) -> str:
    """``sqlite:///<dir of the MLflow SQLite file>/optuna.db``, else ``sqlite:///optuna.db``."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve().parent / 'optuna.db'}"
    return f"sqlite:///{Path('optuna.db').resolve()}"


CONNECT_TIMEOUT_S = 5


def open_storage(spec: str, heartbeat: int | None = None, on_stale=None):
    """An Optuna storage from a URL or ``journal:FILE``; errors name the storage.

    RDB storages record a heartbeat every ``heartbeat`` seconds for each running trial and call
    ``on_stale(study, trial)`` for a trial failed because its heartbeat stopped. A server that does
    not answer fails within ``CONNECT_TIMEOUT_S`` (libpq would wait for the operating system's TCP
    timeout); a refused login or a missing database fails with the server's own message.
    """
    import optuna

    try:
        if spec.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(spec[len("journal:"):]).expanduser()
            if not path.parent.is_dir():
                raise StudyError(f"--storage {spec}: directory {path.parent} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        engine: dict[str, Any] = {}
        if spec.startswith("sqlite:///"):
            db = Path(spec[len("sqlite:///"):])
            if not db.resolve().parent.is_dir():
                raise StudyError(f"--storage {spec}: directory {db.resolve().parent} does not exist")
        elif spec.startswith(("postgresql", "mysql")):
            engine = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs = dict(heartbeat_interval=heartbeat, grace_period=GRACE_INTERVALS * heartbeat,
                          heartbeat_stale_trial_callback=on_stale)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(spec, engine_kwargs=engine or None, **kwargs)
    except StudyError:
        raise
    except ModuleNotFoundError as exc:
        raise StudyError(f"cannot open Optuna storage {spec!r}: the database driver is missing ({exc}); "
                         "install the extra: pip install 'snn-harness[distributed]'") from None
    except Exception as exc:  # noqa: BLE001 - any failure to open the storage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StudyError(f"cannot open Optuna storage {redact_url(spec)!r}: {type(exc).__name__}: {first}") from None


def make_sampler(name: str, seed: int, grid: dict[str, list[str]]):
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def check_study_attrs(study, name: str, storage_spec: str, scfg: StudyConfig) -> None:
    """Record what the study searches; refuse a process that joins it asking something else."""
    base = scfg.run
    mine = {"harness.objectives": [str(o) for o in scfg.objectives], "harness.method": base.method,
            "harness.search_space": {"sampler": scfg.sampler, "grid": scfg.grid, "fixed": base.method_sets,
                                     "dataset": base.dataset}}
    stored = study.user_attrs
    for key, value in mine.items():
        if key in stored and _jsonable(stored[key]) != _jsonable(value):
            what = key.split(".", 1)[1].replace("_", " ")
            raise StudyError(f"study {name!r} in {redact_url(storage_spec)} exists with {what} {stored[key]}; this "
                             f"command asks for {value}: use another --study-name, or the study's own settings")
    for key, value in mine.items():
        if key not in stored:
            study.set_user_attr(key, value)


def _jsonable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)



def sampler_seed(storage, name: str, scfg: StudyConfig, index: int) -> int:
    """The seed of this worker's sampler. A sampler seeded alike in every process would replay the
    trials a resumed study already ran (Optuna's samplers keep their random state in memory only),
    so the seed moves on by the number of trials stored: a fresh study is reproducible, a resumed
    one asks new questions; and by the worker's index, so that workers started together ask
    different ones. Not for the grid: GridSampler's seed shuffles the grid and its first trials take
    their cell by trial number, so every process must shuffle alike (it skips visited cells by itself)."""
    base = scfg.run.seed
    if scfg.sampler == "grid":
        return base
    try:
        stored = storage.get_n_trials(storage.get_study_id_from_name(name))
    except KeyError:
        stored = 0
    return base + stored + SEED_STRIDE * index


def open_study(storage, storage_spec: str, name: str, scfg: StudyConfig, seed: int):
    """The study ``name`` in ``storage``, created or loaded, checked against this command (its
    objectives' directions, method and search space), its objectives named for optuna-dashboard."""
    import optuna

    directions: list[Any] = [o.direction for o in scfg.objectives]
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, directions=directions,
            sampler=make_sampler(scfg.sampler, seed, scfg.grid),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    except ValueError as exc:
        raise StudyError(f"study {name!r} in {redact_url(storage_spec)}: {exc}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                            optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StudyError(f"study {name!r} in {redact_url(storage_spec)} exists with other objective directions; "
                         "use another --study-name")
    check_study_attrs(study, name, storage_spec, scfg)
    if study.metric_names is None:  # so that optuna-dashboard names the objectives, not "0", "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.key for o in scfg.objectives])
    return study
