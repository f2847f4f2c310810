"""``harness study``: an Optuna search over a method's parameters; every trial is one harness run.

* Objectives are metric keys with a direction (``test/accuracy:max``); several make the study
  multi-objective (its result is the Pareto front).
* Samplers: ``tpe``, ``nsga2``, ``random`` (the method's ``search_space``) and ``grid`` (every
  combination of ``--grid key=v1,v2,...``; values are checked against the parameter's type first).
* Storage: ``--storage`` is an RDB URL (``sqlite:///…``, ``postgresql://…`` for several machines) or
  ``journal:FILE`` (Optuna's journal file, for several local processes); the default is a SQLite
  file ``optuna.db`` beside the MLflow SQLite store.
* Resume: re-running the same command loads the study and runs only the missing trials. Trials
  that were running in a process that no longer exists (a killed study) are marked failed and
  their parameters re-queued, so no trial is lost or repeated; the study counts finished
  (complete + pruned) trials against ``--trials``.
* Pruning: trials of methods that train (``surrogate``, ``sharpen``, ``prune``) report validation
  accuracy every epoch to Optuna's median pruner and stop early when it says so (single objective,
  not in a grid study, whose every cell is wanted); a diverging trial (NaN loss) is pruned.
* MLflow: the study is a parent run; every trial is a child run (params, metrics, trial number,
  state), pruned trials included, so the MLflow UI's compare view lines them up.
* ``--eval-limit N`` evaluates trials on the first N test images; the best trials are then
  re-evaluated on the full test set (``--reevaluate K``) and logged as child runs too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig
from .errors import DivergedError, StudyError, TrackingError, UnknownNameError

log = logging.getLogger(__name__)
SAMPLERS = ("tpe", "nsga2", "random", "grid")
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}

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
        model = key.split("/")[-2]
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


def open_storage(spec: str):
    """An Optuna storage from a URL or ``journal:FILE``; errors name the storage."""
    import optuna

    try:
        if spec.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(spec[len("journal:"):]).expanduser()
            if not path.parent.is_dir():
                raise StudyError(f"--storage {spec}: directory {path.parent} does not exist")
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if spec.startswith("sqlite:///"):
            db = Path(spec[len("sqlite:///"):])
            if not db.resolve().parent.is_dir():
                raise StudyError(f"--storage {spec}: directory {db.resolve().parent} does not exist")
        return optuna.storages.RDBStorage(spec)
    except StudyError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to open the storage
        raise StudyError(f"cannot open Optuna storage {spec!r}: {type(exc).__name__}: {exc}") from None


def _sampler(name: str, seed: int, grid: dict[str, list[str]]):
    import optuna

    if name == "grid":
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study) -> list[int]:
    """Fail trials left RUNNING by a dead process on this host and re-queue their parameters.

    Optuna's own heartbeat only declares a trial stale after a grace period; a study re-run right
    after being killed must not wait for it, and must not touch trials that live processes (other
    ``--n-jobs`` workers, other machines) are still running. Returns the recovered trial numbers.
    """
    from optuna.trial import TrialState

    host = socket.gethostname()
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = str(t.user_attrs.get("harness.owner", ""))
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or _pid_alive(int(pid)):
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
    """Report ``monitor`` to Optuna after every validation epoch and prune when it says so.

    optuna-integration's ``PyTorchLightningPruningCallback`` subclasses ``lightning.pytorch``'s
    Callback, which the ``pytorch_lightning`` Trainer used here rejects; this is the same logic.
    """
    import optuna
    import pytorch_lightning as pl

    class _Pruning(pl.Callback):
        reported: dict[int, float] = {}

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            score = trainer.callback_metrics.get(monitor)
            if score is None:
                return
            epoch = pl_module.current_epoch
            trial.report(float(score), step=epoch)
            self.reported[epoch] = float(score)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} ({monitor} {float(score):.4f})")

    cb = _Pruning()
    cb.reported = {}
    return cb


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
                duration_s=t.duration.total_seconds() if t.duration else None)


def run_study(scfg: StudyConfig) -> StudySummary:
    """Run (or resume) the study described by ``scfg``."""
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

    from .tracking import Tracker, TrackingSettings

    tracker = Tracker(TrackingSettings.load(experiment=base.experiment))
    tracker.check()
    storage_spec = scfg.storage or default_storage(tracker.settings.tracking_uri)
    storage = open_storage(storage_spec)

    import optuna
    from optuna.trial import TrialState
    from tqdm.auto import tqdm

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = scfg.study_name or f"{base.method}-{model}-{base.dataset}"
    directions: list[Any] = [o.direction for o in scfg.objectives]
    multi = len(directions) > 1
    # A sampler seeded alike in every process would replay the trials a resumed study already ran
    # (Optuna's samplers keep their random state in memory only), so the seed moves on by the
    # number of trials stored: a fresh study is reproducible, a resumed one asks new questions.
    # Not for the grid: GridSampler's seed shuffles the grid and its first trials take their cell
    # by trial number, so every process must shuffle alike (it skips visited cells by itself).
    stored_trials = 0
    if scfg.sampler != "grid":
        try:
            stored_trials = storage.get_n_trials(storage.get_study_id_from_name(name))
        except KeyError:
            pass
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, load_if_exists=True, directions=directions,
            sampler=_sampler(scfg.sampler, base.seed + stored_trials, scfg.grid),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2))
    except ValueError as exc:
        raise StudyError(f"study {name!r} in {storage_spec}: {exc}") from None
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else
                            optuna.study.StudyDirection.MINIMIZE for d in directions]:
        raise StudyError(f"study {name!r} in {storage_spec} exists with other objective directions; "
                         "use another --study-name")
    stored = study.user_attrs.get("harness.objectives")
    if stored and stored != [str(o) for o in scfg.objectives]:
        raise StudyError(f"study {name!r} exists with objectives {stored}; use another --study-name")
    study.set_user_attr("harness.objectives", [str(o) for o in scfg.objectives])
    study.set_user_attr("harness.method", base.method)
    recovered = recover_stale_trials(study)

    parent_id = _parent_run(tracker, study, name, scfg, model, storage_spec)
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)

    def n_finished() -> int:
        return len(study.get_trials(deepcopy=False, states=finished_states))

    target = scfg.trials
    if scfg.sampler == "grid":
        target = min(target, math.prod(len(v) for v in scfg.grid.values()))
    # A grid is a map to be filled: pruning a cell would leave a hole in it.
    prune_ok = (not multi and scfg.sampler != "grid" and _trains(classes)
                and scfg.objectives[0].direction == "maximize"
                and scfg.objectives[0].key.endswith("accuracy"))
    run_cfg = base.replace(model=model, track=True, progress=False, output_json=None)

    def objective(trial):
        from .runner import run

        trial.set_user_attr("harness.owner", _owner())
        sets = _trial_sets(trial, classes, scfg.grid, fixed)
        trial.set_user_attr("harness.sets", sets)
        cfg = run_cfg.replace(sets=tuple(f"{k}={v}" for k, v in sets.items()))
        tags = {"harness.study": name, "optuna.trial_number": trial.number, "optuna.trial_state": "COMPLETE",
                "mlflow.runName": f"{name}/trial-{trial.number:03d}"}
        callbacks = [_make_pruning_callback(trial)] if prune_ok else []
        try:
            result = run(cfg, parent_run_id=parent_id, tracker=tracker, fit_callbacks=callbacks, tags=tags,
                         model=scfg.model_obj, dataset=scfg.dataset_obj)
        except optuna.TrialPruned as exc:
            _log_pruned(tracker, parent_id, name, trial, sets, str(exc), callbacks[0].reported if callbacks else {})
            raise
        except DivergedError as exc:
            _log_pruned(tracker, parent_id, name, trial, sets, str(exc), callbacks[0].reported if callbacks else {})
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        values = []
        for o in scfg.objectives:
            if o.key not in result.metrics:
                raise StudyError(f"objective {o.key!r}: {base.method} runs do not write this metric; "
                                 "see the run's metrics in MLflow or its --output-json record")
            values.append(float(result.metrics[o.key]))
        if result.tracking:
            trial.set_user_attr("mlflow_run_id", result.tracking["run_id"])
        return values if multi else values[0]

    done = n_finished()
    bar = tqdm(total=target, initial=min(done, target), desc=f"study {name}", unit="trial",
               disable=not scfg.progress)

    def on_trial_end(st, trial):
        bar.update(1 if trial.state in finished_states else 0)
        try:
            if multi:
                bar.set_postfix_str(f"Pareto {len(st.best_trials)}")
            else:
                bar.set_postfix_str(f"best {scfg.objectives[0].key}={st.best_value:.4g}")
        except ValueError:
            pass

    try:
        if done < target:
            study.optimize(objective, n_trials=None, n_jobs=scfg.n_jobs, gc_after_trial=False,
                           callbacks=[optuna.study.MaxTrialsCallback(target, states=finished_states),
                                      on_trial_end], catch=())
    finally:
        bar.close()

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = (study.best_trials if multi else [study.best_trial]) if complete else []
    reevaluated = _reevaluate(best, scfg, run_cfg, tracker, parent_id, name) if base.eval_limit else []
    if reevaluated:
        study.set_user_attr("harness.reevaluated", reevaluated)
    summary = StudySummary(
        study_name=name, storage=storage_spec, objectives=[str(o) for o in scfg.objectives],
        trials=[_trial_record(t) for t in study.get_trials(deepcopy=False)],
        best=[_trial_record(t) for t in best], reevaluated=reevaluated, parent_run_id=parent_id,
        tracking_uri=tracker.settings.tracking_uri,
        wall_s=round(time.time() - started, 2), recovered=recovered)
    _finish_parent(tracker, parent_id, study, best, scfg, summary)
    if scfg.output_json:
        from .io import write_json_atomic

        write_json_atomic(summary.to_record(), Path(scfg.output_json))
    return summary


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


def _parent_run(tracker, study, name: str, scfg: StudyConfig, model: str, storage_spec: str) -> str:
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.settings.tracking_uri)
    pid = study.user_attrs.get("harness.mlflow_parent_run_id")
    if pid:
        try:
            client.get_run(pid)
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
                      storage=storage_spec, fixed_sets=" ".join(base.sets) or "-",
                      grid=json.dumps(scfg.grid) if scfg.grid else "-", eval_limit=base.eval_limit)
        client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"cannot create the study's MLflow run: {exc}") from None
    study.set_user_attr("harness.mlflow_parent_run_id", run.info.run_id)
    return run.info.run_id


def _log_pruned(tracker, parent_id: str, name: str, trial, sets: dict[str, str], reason: str,
                reported: dict[int, float]) -> None:
    """A pruned trial has no results, but its child run shows its parameters and the validation
    curve it reported (``reported``: epoch -> value)."""
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracker.settings.tracking_uri)
        tags = {"mlflow.parentRunId": parent_id, "harness.study": name, "optuna.trial_number": str(trial.number),
                "optuna.trial_state": "PRUNED", "harness.pruned_reason": reason[:5000]}
        run = client.create_run(tracker.experiment_id, tags=tags, run_name=f"{name}/trial-{trial.number:03d}")
        client.log_batch(run.info.run_id, params=[Param(f"method.{k}", str(v)) for k, v in sets.items()],
                         metrics=[Metric("val/accuracy", float(v), 0, int(s)) for s, v in reported.items()])
        client.set_terminated(run.info.run_id, "KILLED")
    except (MlflowException, OSError) as exc:  # the trial's pruning matters more than its record
        log.warning("the MLflow record of pruned trial %d was not written: %s", trial.number, exc)


def _finish_parent(tracker, parent_id: str, study, best, scfg: StudyConfig, summary: StudySummary) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(tracker.settings.tracking_uri)
    counts = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in
              (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    metrics = [Metric("trials_complete", counts[TrialState.COMPLETE], 0, 0),
               Metric("trials_pruned", counts[TrialState.PRUNED], 0, 0),
               Metric("trials_failed", counts[TrialState.FAIL], 0, 0),
               Metric("pareto_size" if len(scfg.objectives) > 1 else "best_trial", float(
                   len(best) if len(scfg.objectives) > 1 else (best[0].number if best else -1)), 0, 0),
               Metric("wall_s", summary.wall_s, 0, 0)]
    if best and len(scfg.objectives) == 1:
        metrics.append(Metric(f"best/{scfg.objectives[0].key}", float(best[0].value), 0, 0))
    client.log_batch(parent_id, metrics=metrics)
    client.set_terminated(parent_id, "FINISHED")
