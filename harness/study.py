"""``harness study``: an Optuna search over a method's parameters; every trial is one harness run.

* Objectives are metric keys with a direction (``test/accuracy:max``); several make the study
  multi-objective (its result is the Pareto front).
* Samplers: ``tpe``, ``nsga2``, ``random`` (the method's ``search_space``) and ``grid`` (every
  combination of ``--grid key=v1,v2,...``; values are checked against the parameter's type first).
* Storage: ``--storage`` is an RDB URL (``sqlite:///…``; ``postgresql://…`` for several machines,
  with the ``distributed`` extra) or ``journal:FILE`` (Optuna's journal file, for several local
  processes); the default is a SQLite file ``optuna.db`` beside the MLflow SQLite store.
* Workers: ``--workers N`` starts N-1 more processes on this machine beside this one, all on one
  storage; the same command on other machines joins the same study. ``--worker-index K`` (set by
  SLURM array jobs and Kubernetes indexed Jobs themselves) numbers a machine's workers K·N …
  K·N+N-1; worker 0 re-evaluates the best trials and closes the study's MLflow run. Each worker's
  sampler is seeded with ``seed + trials stored + 7919 × index`` (recorded in every trial), so workers
  started together ask different questions. The study ends when ``--trials`` trials have finished
  (complete + pruned), whichever worker finished them: a worker starts a trial only while finished
  trials and those holding a place (running, queued, or dead a moment ago and about to be retried)
  are fewer, and waits while the last ones run elsewhere (one of them may die and come back as a
  retry, which runs before any new trial).
* Dead workers, on any host: on RDB storage every running trial records an Optuna heartbeat every
  ``--heartbeat`` seconds; a trial whose heartbeat is older than three intervals is failed by the
  next worker that looks, retried once with its parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``),
  and its MLflow run marked FAILED with the reason and the trial that retries it. Optuna's journal
  storage has no heartbeat: there, trials left running by a process that no longer exists on this
  host are failed and re-queued when a study starts (processes on other hosts cannot be checked).
* Resume: re-running the same command loads the study and runs only the missing trials; MLflow
  runs a killed process left RUNNING are marked FAILED. An interrupted study (Ctrl-C, SIGTERM) marks
  the running trial's run KILLED and re-queues its parameters, and closes the parent run KILLED; the
  resumed study reopens it.
* Pruning: trials of methods that train (``surrogate``, ``sharpen``, ``prune``) report validation
  accuracy every epoch to Optuna's median pruner and stop early when it says so (single objective,
  not in a grid study, whose every cell is wanted); a diverging trial (NaN loss) is pruned.
* MLflow: the study is a parent run; every trial is a child run (params, metrics, trial number,
  state), pruned trials included, so the MLflow UI's compare view lines them up. Not
  optuna-integration's ``MLflowCallback``: it writes a trial's run once the trial has ended, with
  its parameters and objective values only, while a trial here is a whole harness run (every metric,
  per-layer keys, curves streamed per epoch, artifacts) whose MLflow run opens RUNNING when the
  trial starts, under the study's parent, and ends FAILED or KILLED when the trial dies.
* ``--eval-limit N`` evaluates trials on the first N test images; the best trials are then
  re-evaluated on the full test set (``--reevaluate K``) and logged as child runs too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig
from .errors import DivergedError, Interrupted, StudyError, TrackingError, UnknownNameError, set_phase
from .tracking import Tracker, TrackingSettings, owner, pid_alive

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "nsga2", "random", "grid")
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
HEARTBEAT_S = 10  # default --heartbeat
GRACE_INTERVALS = 3  # a trial is dead after this many missed heartbeats (Optuna's default is 2: too
#                      tight for a worker whose machine is busy training)
SEED_STRIDE = 7919  # sampler seeds of workers: seed + trials stored + SEED_STRIDE × worker index
WORKER_INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # SLURM arrays, Kubernetes indexed Jobs

@dataclass(frozen=True)
class Objective:
    key: str
    direction: str  # "maximize" | "minimize"

    @classmethod
    def parse(cls, text: str) -> "Objective":
        key, sep, d = text.rpartition(":")
        if not sep or not key:
            raise ConfigError(f"--objective {text!r}: expected METRIC:max or METRIC:min, "
                              "e.g. test/accuracy:max")
        if d not in DIRECTIONS:
            raise UnknownNameError(f"direction in --objective {text!r}", d, ["max", "min"])
        return cls(key, DIRECTIONS[d])

    def __str__(self) -> str:
        return f"{self.key}:{'max' if self.direction == 'maximize' else 'min'}"


def check_metric_key(key: str, classes: list) -> None:
    """Refuse a metric no run of these methods writes (the metric schema, with the methods' own
    metrics), with did-you-mean, before any trial runs."""
    from .energy import ENERGY_MODELS
    from .metrics import method_schema

    schema = method_schema(classes)
    spec = schema.spec(key)
    if spec is None:
        candidates = [s.key for s in schema.specs if "{" not in s.key and not s.curve]
        candidates += [s.key.replace("{model}", m) for s in schema.specs if "{model}" in s.key for m in ENERGY_MODELS]
        raise UnknownNameError("metric in --objective", key, candidates)
    if spec.curve:
        raise ConfigError(f"--objective {key!r}: that metric is a curve (one value per step or epoch), not a number")
    if "{model}" in spec.key:
        model = key.split("/")[spec.key.split("/").index("{model}")]
        if model not in ENERGY_MODELS:
            raise UnknownNameError(f"energy model in objective {key!r}", model, list(ENERGY_MODELS))


def parse_grid(items: list[str] | tuple[str, ...] | None) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items or ():
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()] if sep else []
        if not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. synapse=0.001,0.005,0.01")
        grid[key.strip()] = vals
    return grid


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ",".join(format_value(x) for x in v)
    return str(v)


@dataclass
class StudyConfig:
    run: RunConfig
    trials: int = 20
    objectives: tuple[Objective, ...] = (Objective("test/accuracy", "maximize"),)
    sampler: str = "tpe"
    grid: dict[str, list[str]] = field(default_factory=dict)
    storage: str | None = None
    study_name: str | None = None
    n_jobs: int = 1
    workers: int = 1  # processes on this machine (this one and workers - 1 it starts)
    worker_index: int | None = None  # None: from WORKER_INDEX_ENV, else 0
    heartbeat: int = HEARTBEAT_S  # seconds between a running trial's heartbeats (RDB storage)
    worker_command: Any = None  # CLI: index -> the argv of a worker process (for --workers)
    reevaluate: int = 3
    output_json: str | None = None
    progress: bool = True
    model_obj: Any = None  # Python API: an nn.Module or factory instead of run.model
    dataset_obj: Any = None  # Python API: data splits instead of run.dataset

    def validate(self, classes: list) -> None:
        from .runner import split_sets

        if self.trials < 1:
            raise ConfigError(f"--trials {self.trials}: valid range is [1, inf)")
        if self.n_jobs < 1:
            raise ConfigError(f"--n-jobs {self.n_jobs}: valid range is [1, inf)")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: valid range is [1, inf)")
        if self.workers > 1 and self.worker_command is None:
            raise ConfigError("--workers starts processes of the command line: use `harness study --workers N`, "
                              "or start the processes yourself")
        if self.worker_index is not None and self.worker_index < 0:
            raise ConfigError(f"--worker-index {self.worker_index}: valid range is [0, inf)")
        if self.heartbeat < 1:
            raise ConfigError(f"--heartbeat {self.heartbeat}: valid range is [1, inf) seconds")
        if self.reevaluate < 0:
            raise ConfigError(f"--reevaluate {self.reevaluate}: valid range is [0, inf)")
        if self.sampler not in SAMPLERS:
            raise UnknownNameError("sampler", self.sampler, SAMPLERS)
        if not self.objectives:
            raise ConfigError("a study needs at least one --objective METRIC:max|min")
        keys = [o.key for o in self.objectives]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"--objective: each metric may appear once ({', '.join(keys)})")
        for o in self.objectives:
            check_metric_key(o.key, classes)
        if self.sampler == "grid" and not self.grid:
            raise ConfigError("--sampler grid needs --grid KEY=V1,V2,... (one or more)")
        if self.grid and self.sampler != "grid":
            raise ConfigError(f"--grid is for --sampler grid (got --sampler {self.sampler})")
        # the fixed --set values, and every grid value with them, must parse and lie in range
        for cls, sets in zip(classes, split_sets(self.run.method_sets, classes)):
            cls.Params.from_strings(sets, owner=cls.name)
        for key, values in self.grid.items():
            for v in values:
                per = split_sets({**self.run.method_sets, key: v}, classes)
                for cls, sets in zip(classes, per):
                    cls.Params.from_strings(sets, owner=cls.name)


# ---------------------------------------------------------------------------------------------
# storage


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
        raise StudyError(f"cannot open Optuna storage {_redact(spec)!r}: {type(exc).__name__}: {first}") from None


def _redact(url: str) -> str:
    """``url`` without its password, for messages."""
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{head}://{creds.split(':', 1)[0]}:***@{host}"


def _sampler(name: str, seed: int, grid: dict[str, list[str]]):
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def recover_stale_trials(study) -> list[int]:
    """Journal storage only (it has no heartbeat): fail trials left RUNNING by a process that no
    longer exists on this host and re-queue their parameters; trials of other hosts cannot be
    checked and are left alone. Returns the recovered trial numbers."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("harness.owner", ""))
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or pid_alive(int(pid)):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"harness.retry_of": t.number}, skip_if_exists=False)
        recovered.append(t.number)
    return recovered


# ---------------------------------------------------------------------------------------------
# the study


def _trains(classes: list) -> bool:
    return any(c.trains for c in classes)


def _make_pruning_callback(trial, monitor: str = "val/accuracy"):
    """optuna-integration's ``PyTorchLightningPruningCallback`` (report ``monitor`` after every
    validation epoch, prune when the pruner says so), keeping what it reported so that a pruned
    trial's MLflow run shows the curve it was pruned on."""
    from optuna_integration import PyTorchLightningPruningCallback

    class _Pruning(PyTorchLightningPruningCallback):
        def __init__(self):
            super().__init__(trial, monitor)
            self.reported: dict[int, float] = {}

        def on_validation_end(self, trainer, pl_module):
            import optuna

            score = trainer.callback_metrics.get(monitor)
            if score is None or trainer.sanity_checking:
                return super().on_validation_end(trainer, pl_module)
            epoch = pl_module.current_epoch
            self.reported[epoch] = float(score)
            try:
                super().on_validation_end(trainer, pl_module)
            except optuna.TrialPruned:  # the same, saying on what value (the run's harness.pruned_reason)
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({monitor} {float(score):.4f})") from None

    return _Pruning()


@dataclass
class StudySummary:
    study_name: str
    storage: str
    objectives: list[str]
    trials: list[dict]
    best: list[dict]
    reevaluated: list[dict]
    parent_run_id: str | None
    tracking_uri: str
    wall_s: float
    recovered: list[int] = field(default_factory=list)  # trials of a killed process, re-queued

    def to_record(self) -> dict:
        return dict(schema="snn-harness/study/1", **self.__dict__)


def _trial_sets(trial, classes: list, grid: dict[str, list[str]], fixed: dict[str, str]) -> dict[str, str]:
    sets: dict[str, str] = {}
    if grid:
        for key, values in grid.items():
            sets[key] = trial.suggest_categorical(key, values)
    else:
        for cls in classes:  # all but the last are transforms (methods.resolve); each samples its own space
            prefix = "" if cls is classes[-1] else f"{cls.name}."
            sampled = cls.search_space(trial)
            default = cls.Params()
            for k in cls.Params.keys():
                v = getattr(sampled, k)
                if v != getattr(default, k):
                    sets[prefix + k] = format_value(v)
    sets.update(fixed)
    return sets


def _trial_record(t) -> dict:
    return dict(number=t.number, state=t.state.name, values=t.values, params=t.params,
                sets=t.user_attrs.get("harness.sets"), mlflow_run_id=t.user_attrs.get("mlflow_run_id"),
                duration_s=t.duration.total_seconds() if t.duration else None,
                retry_of=t.system_attrs.get("failed_trial"), worker=t.user_attrs.get("harness.worker"),
                sampler_seed=t.user_attrs.get("harness.sampler_seed"))


class SurplusTrial(Exception):
    """A trial created after enough trials had finished or held a place (``_places``): failed at
    once, unrun (``harness.surplus`` in its attributes), so that no worker runs past ``--trials``."""


def worker_index(scfg: StudyConfig) -> int:
    if scfg.worker_index is not None:
        return scfg.worker_index
    for var in WORKER_INDEX_ENV:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


class _OnStaleTrial:
    """Optuna's heartbeat found a trial whose worker died: retry it once with its parameters
    (``RetryHeartbeatStaleTrialCallback``) and mark its MLflow run FAILED, saying why."""

    def __init__(self, tracker, grace_s: int):
        self.tracker, self.grace_s = tracker, grace_s
        self.recovered: list[int] = []

    def __call__(self, study, trial) -> None:
        import optuna.storages

        # renamed in Optuna 4.9 (the old name warns, and goes in 6.0)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(max_retry=1)(study, trial)
        retried = len(trial.system_attrs.get("retry_history", [])) < 1
        self.recovered.append(trial.number)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            what = ("its parameters are retried as a new trial (tag harness.retried_as names it once it starts)"
                    if retried else "not retried again (it is itself a retry)")
            self.tracker.end_run(run_id, "FAILED", f"its worker ({trial.user_attrs.get('harness.owner', '?')}) "
                                 f"stopped sending heartbeats for over {self.grace_s} s; {what}",
                                 **{"optuna.trial_state": "FAIL"})


def _study_attrs(study, name: str, storage_spec: str, scfg: StudyConfig) -> None:
    """Record what the study searches; refuse a process that joins it asking something else."""
    base = scfg.run
    mine = {"harness.objectives": [str(o) for o in scfg.objectives], "harness.method": base.method,
            "harness.search_space": {"sampler": scfg.sampler, "grid": scfg.grid, "fixed": base.method_sets,
                                     "dataset": base.dataset}}
    stored = study.user_attrs
    for key, value in mine.items():
        if key in stored and _jsonable(stored[key]) != _jsonable(value):
            what = key.split(".", 1)[1].replace("_", " ")
            raise StudyError(f"study {name!r} in {_redact(storage_spec)} exists with {what} {stored[key]}; this "
                             f"command asks for {value}: use another --study-name, or the study's own settings")
    for key, value in mine.items():
        if key not in stored:
            study.set_user_attr(key, value)


def _jsonable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def run_study(scfg: StudyConfig) -> StudySummary:
    """Run (or resume, or join as one more worker) the study described by ``scfg``."""
    from .datasets import check_dataset
    from .methods import resolve
    from .models import resolve_model

    started = time.time()
    base = scfg.run
    classes = resolve(base.method)
    if scfg.dataset_obj is None:
        check_dataset(base.dataset)
    model = resolve_model(scfg.model_obj if scfg.model_obj is not None else
                          (base.model or classes[-1].default_model))[0]
    scfg.validate(classes)
    fixed = base.method_sets
    index = worker_index(scfg) * scfg.workers  # this process's workers are index .. index + workers - 1
    lead = index == 0  # reevaluates the best trials and closes the parent run

    tracker = Tracker(TrackingSettings.load(experiment=base.experiment))
    tracker.check()
    storage_spec = scfg.storage or default_storage(tracker.settings.tracking_uri)
    journal = storage_spec.startswith("journal:")
    on_stale = _OnStaleTrial(tracker, GRACE_INTERVALS * scfg.heartbeat)
    storage = open_storage(storage_spec, None if journal else scfg.heartbeat, on_stale)

    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    from .io import tqdm_disable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = scfg.study_name or f"{base.method}-{model}-{base.dataset}"
    directions: list[Any] = [o.direction for o in scfg.objectives]
    multi = len(directions) > 1
    # A sampler seeded alike in every process would replay the trials a resumed study already ran
    # (Optuna's samplers keep their random state in memory only), so the seed moves on by the
    # number of trials stored: a fresh study is reproducible, a resumed one asks new questions; and
    # by the worker's index, so that workers started together ask different ones.
    # Not for the grid: GridSampler's seed shuffles the grid and its first trials take their cell
    # by trial number, so every process must shuffle alike (it skips visited cells by itself).
    stored_trials = 0
    if scfg.sampler != "grid":
        try:
            stored_trials = storage.get_n_trials(storage.get_study_id_from_name(name))
        except KeyError:
            pass
    sampler_seed = base.seed if scfg.sampler == "grid" else base.seed + stored_trials + SEED_STRIDE * index
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, directions=directions,
            sampler=_sampler(scfg.sampler, sampler_seed, scfg.grid),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    except ValueError as exc:
        raise StudyError(f"study {name!r} in {_redact(storage_spec)}: {exc}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                            optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StudyError(f"study {name!r} in {_redact(storage_spec)} exists with other objective directions; "
                         "use another --study-name")
    _study_attrs(study, name, storage_spec, scfg)
    if study.metric_names is None:  # so that optuna-dashboard names the objectives, not "0", "1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([o.key for o in scfg.objectives])
    recovered = recover_stale_trials(study) if journal else []
    if not journal:
        _fail_stale(study, on_stale.grace_s, on_stale)

    parent_id = _parent_run(tracker, study, name, scfg, model, storage_spec)
    if lead:
        _close_orphaned_runs(tracker, study, parent_id)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)

    def count(*states) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    target = scfg.trials
    if scfg.sampler == "grid":
        target = min(target, math.prod(len(v) for v in scfg.grid.values()))
    # A grid is a map to be filled: pruning a cell would leave a hole in it.
    prune_ok = (not multi and scfg.sampler != "grid" and _trains(classes)
                and scfg.objectives[0].direction == "maximize"
                and scfg.objectives[0].key.endswith("accuracy"))
    run_cfg = base.replace(model=model, track=True, progress=False, output_json=None)

    def objective(trial):
        trial.set_user_attr("harness.owner", owner())
        trial.set_user_attr("harness.worker", index)
        trial.set_user_attr("harness.sampler_seed", sampler_seed)
        try:
            return run_trial(trial)
        finally:  # however it ends (a trial that died never gets here): see _places
            try:
                trial.set_user_attr("harness.ended", True)
            except Exception:  # noqa: BLE001 - already told (an interrupted trial was re-queued)
                pass

    def run_trial(trial):
        from .runner import run

        # Optuna's Trial hides system attributes; its stored (frozen) trial has them
        frozen = trial.study._storage.get_trial(trial._trial_id)
        fin, ahead = _places(study, _place_key(frozen), on_stale.grace_s)
        if fin + ahead >= target:
            trial.set_user_attr("harness.surplus", True)
            raise SurplusTrial(f"trial {trial.number}: {target} trials have finished, are running or are "
                               "queued")
        retry_of = frozen.system_attrs.get("failed_trial")
        dead_run = trial.user_attrs.get("mlflow_run_id") if retry_of is not None else None
        sets = _trial_sets(trial, classes, scfg.grid, fixed)
        trial.set_user_attr("harness.sets", sets)
        cfg = run_cfg.replace(sets=tuple(f"{k}={v}" for k, v in sets.items()))
        run_name = f"{name}/trial-{trial.number:03d}"
        tags: dict[str, Any] = {"harness.study": name, "optuna.trial_number": trial.number,
                                "optuna.trial_state": "RUNNING", "harness.worker": index}
        if retry_of is not None:
            tags["harness.retry_of"] = retry_of
        run_id = tracker.start_run(run_name, tags, parent_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        if dead_run:
            tracker.end_run(dead_run, "FAILED", None, **{"harness.retried_as": trial.number})
        tags.update({"optuna.trial_state": "COMPLETE", "mlflow.runName": run_name})
        callbacks = [_make_pruning_callback(trial)] if prune_ok else []
        reported = callbacks[0].reported if callbacks else {}
        try:
            result = run(cfg, parent_run_id=parent_id, tracker=tracker, fit_callbacks=callbacks, tags=tags,
                         model=scfg.model_obj, dataset=scfg.dataset_obj, run_id=run_id)
        except optuna.TrialPruned as exc:
            _log_pruned(tracker, run_id, sets, str(exc), reported)
            raise
        except DivergedError as exc:
            _log_pruned(tracker, run_id, sets, str(exc), reported)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except Interrupted as exc:
            tracker.end_run(run_id, "KILLED", f"interrupted by {exc}; its parameters were re-queued",
                            **{"optuna.trial_state": "FAIL"})
            _requeue(study, trial)
            exc.note = (f"trial {trial.number}'s MLflow run was marked KILLED and its parameters re-queued; "
                        "run the same command again to resume the study")
            raise
        except BaseException as exc:
            tracker.end_run(run_id, "FAILED", f"{type(exc).__name__}: {exc}", **{"optuna.trial_state": "FAIL"})
            raise
        values = []
        for o in scfg.objectives:
            if o.key not in result.metrics:
                tracker.end_run(run_id, "FAILED", f"it does not write the objective {o.key}")
                raise StudyError(f"objective {o.key!r}: {base.method} runs do not write this metric; "
                                 "see the run's metrics in MLflow or its --output-json record")
            values.append(float(result.metrics[o.key]))
        return values if multi else values[0]

    bar = tqdm(total=target, initial=min(count(*finished_states), target), desc=f"study {name}", unit="trial",
               disable=tqdm_disable(scfg.progress))

    def on_trial_end(st, trial):
        set_phase(f"between trials of study {name}")
        bar.update(1 if trial.state in finished_states else 0)
        try:
            if multi:
                bar.set_postfix_str(f"Pareto {len(st.best_trials)}")
            else:
                bar.set_postfix_str(f"best {scfg.objectives[0].key}={st.best_value:.4g}")
        except ValueError:
            pass

    workers: list[subprocess.Popen] = []
    try:
        set_phase(f"running study {name}")
        workers = _start_workers(scfg, index, _share_cores(scfg.workers))
        _work(study, objective, target, scfg, stale=None if journal else on_stale, grace_s=on_stale.grace_s,
              on_trial_end=on_trial_end, bar=bar)
        _wait_for(workers)
    except Interrupted as exc:
        _stop(workers, exc.signum)
        if lead:
            tracker.end_run(parent_id, "KILLED", f"interrupted by {exc}; run the same command again to resume",
                            **{"harness.interrupted": exc})
        if getattr(exc, "note", None) is None:
            exc.note = "no trial was running; run the same command again to resume the study"
        raise
    except BaseException:
        _stop(workers, None)
        raise
    finally:
        bar.close()

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = (study.best_trials if multi else [study.best_trial]) if complete else []
    reevaluated = (_reevaluate(best, scfg, run_cfg, tracker, parent_id, name)
                   if base.eval_limit and lead else [])
    if reevaluated:
        study.set_user_attr("harness.reevaluated", reevaluated)
    summary = StudySummary(
        study_name=name, storage=_redact(storage_spec), objectives=[str(o) for o in scfg.objectives],
        trials=[_trial_record(t) for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("harness.surplus")],
        best=[_trial_record(t) for t in best], reevaluated=reevaluated, parent_run_id=parent_id,
        tracking_uri=tracker.settings.tracking_uri,
        wall_s=round(time.time() - started, 2), recovered=recovered + on_stale.recovered)
    if lead:
        _finish_parent(tracker, parent_id, study, best, scfg, summary)
    if scfg.output_json:
        from .io import write_json_atomic

        write_json_atomic(summary.to_record(), Path(scfg.output_json))
    return summary


def _place_key(t) -> tuple[int, int]:
    """The order in which trials hold the study's places: queued trials (retries of dead trials,
    re-queued interrupted ones, ``enqueue_trial``) before new ones, then by number."""
    queued = "failed_trial" in t.system_attrs or "fixed_params" in t.system_attrs
    return (0 if queued else 1, t.number)


def _retried(t, trials) -> bool:
    return any(t.number in u.system_attrs.get("retry_history", ())
               or t.number in (u.user_attrs.get("harness.retry_of"), u.user_attrs.get("harness.retry_of_interrupted"))
               for u in trials)


def _places(study, key: tuple[int, int] | None, window_s: float, queued: bool = True) -> tuple[int, int]:
    """(finished trials, trials holding a place ahead of ``key``; all of them if ``key`` is None).

    A place is held by a running trial (not a surplus one), a queued trial (``queued``), and a
    trial that died moments ago and whose retry is not queued yet: a stale trial is failed first and
    re-queued after (Optuna's heartbeat calls the retry callback once the trial is FAIL), and
    another worker that counted in between saw a free place and took it with a new trial, leaving
    the retry queued and never run. A dead trial is one that failed without the harness ending it
    (``harness.ended``); it holds its place for ``window_s`` after it failed, or until its retry
    exists, and not at all if it cannot be retried (it is itself a retry)."""
    import datetime

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    now = datetime.datetime.now()
    fin = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    held = 0
    for t in trials:
        if t.state == TrialState.RUNNING:
            holds, t_key = not t.user_attrs.get("harness.surplus"), _place_key(t)
        elif t.state == TrialState.WAITING:
            holds, t_key = queued, _place_key(t)
        elif (t.state == TrialState.FAIL and not t.user_attrs.get("harness.ended")
              and "failed_trial" not in t.system_attrs  # a retry is not retried again
              and t.datetime_complete is not None
              and (now - t.datetime_complete).total_seconds() < window_s and not _retried(t, trials)):
            holds, t_key = True, (0, t.number)  # its retry will be queued
        else:
            continue
        held += holds and (key is None or t_key < key)
    return fin, held


def _fail_stale(study, grace_s: int, on_stale) -> None:
    """Optuna's stale-trial check, and one it does not make: a trial that never recorded a
    heartbeat (its process died between creating it and starting it, or it was made outside the
    harness) is failed and retried like a stale one once it is ``2 × grace_s`` old and no harness
    worker has claimed it (``harness.owner``)."""
    import datetime

    import optuna
    from optuna.trial import TrialState

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = datetime.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "harness.owner" in t.user_attrs or t.datetime_start is None:
            continue
        if (now - t.datetime_start).total_seconds() > 2 * grace_s:
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - another worker was first
                continue
            on_stale(study, study._storage.get_trial(t._trial_id))


def _requeue(study, trial) -> None:
    """Fail ``trial`` now and queue its parameters again (an interrupted trial is not the
    trial's fault: it does not use up the heartbeat's one retry)."""
    from optuna.trial import TrialState

    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except Exception as exc:  # noqa: BLE001 - already finished by another worker
        log.warning("trial %d could not be marked failed: %s", trial.number, exc)
        return
    study.enqueue_trial(trial.params, user_attrs={"harness.retry_of_interrupted": trial.number},
                        skip_if_exists=False)


POLL_S = 1.0


def _work(study, objective, target: int, scfg: StudyConfig, *, stale, grace_s: float, on_trial_end, bar) -> None:
    """Run trials until ``target`` have finished, in this process. A trial starts only while
    finished trials and trials holding a place (see ``_places``) are fewer than ``target``; with
    heartbeats, a worker then waits for the last running trials (of any worker) instead of leaving:
    one of them may die and come back as a retry that must be run. Without heartbeats nothing would
    ever tell, so it leaves."""
    import optuna

    heartbeat = stale is not None
    while True:
        if stale is not None:
            _fail_stale(study, stale.grace_s, stale)
        fin, held = _places(study, None, grace_s, queued=False)
        if fin >= target:
            return
        if fin + held >= target:
            if not heartbeat:
                return
            bar.set_postfix_str(f"waiting for {held} running trial{'s' * (held > 1)}")
            time.sleep(POLL_S)
            continue
        # Optuna pops queued trials (retries first) before it samples new ones
        k = min(scfg.n_jobs, target - fin - held)
        try:
            study.optimize(objective, n_trials=k, n_jobs=k, gc_after_trial=False, callbacks=[on_trial_end],
                           catch=(SurplusTrial,))
        except optuna.exceptions.UpdateFinishedTrialError as exc:
            # this worker's heartbeat stalled past the grace period and another worker declared the
            # trial dead and queued its retry: the retry counts, this result is dropped
            log.warning("a trial finished after another worker had declared it dead (%s); its retry counts", exc)


def _share_cores(workers: int) -> dict[str, str]:
    """The environment of ``workers`` processes on this machine: each gets its share of the cores
    for torch's threads, unless the user set ``OMP_NUM_THREADS``. Every process would otherwise
    start one thread per core, and oversubscribed OpenMP threads spin-wait: 2 workers on 2 cores ran
    47 trials/min that way, 139 with one thread each (benchmarks/STORAGE.md)."""
    env = dict(os.environ)
    if workers > 1 and "OMP_NUM_THREADS" not in env:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // workers)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        import torch

        torch.set_num_threads(threads)
    return env


def _start_workers(scfg: StudyConfig, first: int, env: dict[str, str]) -> list[subprocess.Popen]:
    """``--workers N``: start N - 1 more processes of the same command (indices first+1 ..
    first+N-1); this process is worker ``first``. Each has its own session, so that a Ctrl-C
    reaches them once, through this process."""
    procs = []
    for i in range(1, scfg.workers):
        argv = scfg.worker_command(first + i)
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True, env=env))
    return procs


def _wait_for(procs: list[subprocess.Popen]) -> None:
    import signal

    for i, p in enumerate(procs, start=1):
        rc = p.wait()
        if rc != 0:
            how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with {rc}"
            log.warning("worker %d (pid %d) %s; its running trial, if any, was failed and retried through its "
                        "heartbeat", i, p.pid, how)


def _stop(procs: list[subprocess.Popen], signum: int | None) -> None:
    import signal

    for p in procs:
        if p.poll() is None:
            p.send_signal(signum or signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


def worker_argv(parser, args, index: int) -> list[str]:
    """The command line of worker ``index``: this command's options (from the parsed ``args``),
    without --workers, --output-json and progress bars, with --worker-index."""
    import argparse

    skip = {"help", "workers", "worker_index", "output_json", "progress"}
    out = [sys.executable, "-m", "harness", "study"]
    for action in parser._actions:
        if not action.option_strings or action.dest in skip:
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._AppendAction):
            for v in value:
                out += [flag, str(v)]
        elif isinstance(action, argparse._StoreConstAction):
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out + ["--worker-index", str(index), "--no-progress"]


def _reevaluate(best, scfg: StudyConfig, run_cfg: RunConfig, tracker, parent_id, name) -> list[dict]:
    from .runner import run

    out = []
    for t in best[:scfg.reevaluate]:
        sets = t.user_attrs.get("harness.sets") or {}
        cfg = run_cfg.replace(sets=tuple(f"{k}={v}" for k, v in sets.items()), eval_limit=0)
        tags = {"harness.study": name, "harness.reevaluated_trial": t.number,
                "mlflow.runName": f"{name}/trial-{t.number:03d}-full-test"}
        res = run(cfg, parent_run_id=parent_id, tracker=tracker, tags=tags, model=scfg.model_obj,
                  dataset=scfg.dataset_obj)
        out.append(dict(trial=t.number, sets=sets, metrics={o.key: res.metrics.get(o.key) for o in scfg.objectives},
                        mlflow_run_id=res.tracking.get("run_id")))
    return out


# ---------------------------------------------------------------------------------------------
# MLflow parent run


PARENT_SETTLE_S = 1.0


def _parent_run(tracker, study, name: str, scfg: StudyConfig, model: str, storage_spec: str) -> str:
    """The study's MLflow run, found again through the study (resume, more workers) or created.
    Workers started together may each create one: each records its own, waits ``PARENT_SETTLE_S``
    and reads back which one the study kept (the last written); the others are deleted."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.settings.tracking_uri)
    pid = study.user_attrs.get("harness.mlflow_parent_run_id")
    if pid:
        try:
            if client.get_run(pid).info.status != "RUNNING":
                client.update_run(pid, status="RUNNING")
            return pid
        except MlflowException as exc:  # the parent run was deleted: make a new one
            log.warning("the study's MLflow parent run %s is gone (%s); starting a new one", pid, exc)
    base = scfg.run
    tags = {"mlflow.runName": f"study:{name}", "harness.study": name, "harness.kind": "study",
            "method": base.method}
    try:
        run = client.create_run(tracker.experiment_id, tags=tags, run_name=f"study:{name}")
        params = dict(method=base.method, dataset=base.dataset, model=model, sampler=scfg.sampler,
                      trials=scfg.trials, objectives=" ".join(str(o) for o in scfg.objectives),
                      storage=_redact(storage_spec), fixed_sets=" ".join(base.sets) or "-",
                      grid=json.dumps(scfg.grid) if scfg.grid else "-", eval_limit=base.eval_limit)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"cannot create the study's MLflow run: {exc}") from None
    mine = run.info.run_id
    study.set_user_attr("harness.mlflow_parent_run_id", mine)
    time.sleep(PARENT_SETTLE_S)
    kept = study.user_attrs.get("harness.mlflow_parent_run_id") or mine
    if kept != mine:
        try:
            client.delete_run(mine)
        except MlflowException as exc:
            log.warning("a duplicate parent run %s of study %s could not be deleted: %s", mine, name, exc)
    return kept


def _close_orphaned_runs(tracker, study, parent_id: str) -> None:
    """Trial runs left RUNNING by a process that died (SIGKILL, a lost machine) are marked
    FAILED, saying why, once Optuna no longer counts their trial as running."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    try:
        client = MlflowClient(tracker.settings.tracking_uri)
        runs = client.search_runs([tracker.experiment_id], max_results=5000,
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'")
    except Exception as exc:  # noqa: BLE001 - tidying must not stop the study
        log.warning("runs of study %s left running could not be listed: %s", study.study_name, exc)
        return
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    for r in runs:
        number = r.data.tags.get("optuna.trial_number", "")
        state = states.get(int(number)) if number.isdigit() else None
        if state == TrialState.RUNNING:
            continue  # alive elsewhere, or the heartbeat will tell
        what = f"Optuna records trial {number} as {state.name}" if state else "no Optuna trial matches it"
        tracker.end_run(r.info.run_id, "FAILED", f"orphaned: the process writing it ended without closing it ({what})")


def _log_pruned(tracker, run_id: str, sets: dict[str, str], reason: str, reported: dict[int, float]) -> None:
    """A pruned trial has no results, but its run shows its parameters and the validation curve it
    reported (``reported``: epoch -> value); it ends KILLED."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracker.settings.tracking_uri)
        client.log_batch(run_id, params=[Param(f"method.{k}", str(v)) for k, v in sets.items()],
                         metrics=[Metric("val/accuracy", float(v), 0, int(s)) for s, v in reported.items()])
    except (MlflowException, OSError) as exc:  # the trial's pruning matters more than its record
        log.warning("the MLflow record of pruned run %s was not written: %s", run_id, exc)
    tracker.end_run(run_id, "KILLED", None, **{"optuna.trial_state": "PRUNED", "harness.pruned_reason": reason[:5000]})


def _finish_parent(tracker, parent_id: str, study, best, scfg: StudyConfig, summary: StudySummary) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(tracker.settings.tracking_uri)
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("harness.surplus")]
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    metrics = [Metric("trials_complete", counts[TrialState.COMPLETE], 0, 0),
               Metric("trials_pruned", counts[TrialState.PRUNED], 0, 0),
               Metric("trials_failed", counts[TrialState.FAIL], 0, 0),
               Metric("trials_retried", sum(t.system_attrs.get("failed_trial") is not None for t in trials), 0, 0),
               Metric("pareto_size" if len(scfg.objectives) > 1 else "best_trial", float(
                   len(best) if len(scfg.objectives) > 1 else (best[0].number if best else -1)), 0, 0),
               Metric("wall_s", summary.wall_s, 0, 0)]
    if best and len(scfg.objectives) == 1:
        metrics.append(Metric(f"best/{scfg.objectives[0].key}", float(best[0].value), 0, 0))
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, "FINISHED")
