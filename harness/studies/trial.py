"""One trial: a whole harness run under the study's parent MLflow run (see :mod:`harness.studies`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import RunConfig
from ..errors import DivergedError, Interrupted, StudyError
from .placement import place_key, study_places
from .spec import StudyConfig, format_value


class SurplusTrial(Exception):
    """A trial created after enough trials had finished or held a place (:mod:`.placement`): failed
    at once, unrun (``harness.surplus`` in its attributes), so that no worker runs past ``--trials``."""


def trains(classes: list) -> bool:
    return any(c.trains for c in classes)


def pruning_callback(trial, monitor: str = "val/accuracy"):
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


def trial_sets(trial, classes: list, grid: dict[str, list[str]], fixed: dict[str, str],
               events: bool = False) -> dict[str, str]:
    """The ``--set`` values of one trial: its grid cell, or what each method's search space sampled
    (only values that differ from the defaults; on event data not the keys the data decide, a
    method's ``event_keys``), then the study's fixed values."""
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
                if events and k in cls.event_keys:
                    continue
                v = getattr(sampled, k)
                if v != getattr(default, k):
                    sets[prefix + k] = format_value(v)
    sets.update(fixed)
    return sets


def trial_record(t) -> dict:
    return dict(number=t.number, state=t.state.name, values=t.values, params=t.params,
                sets=t.user_attrs.get("harness.sets"), mlflow_run_id=t.user_attrs.get("mlflow_run_id"),
                duration_s=t.duration.total_seconds() if t.duration else None,
                retry_of=t.system_attrs.get("failed_trial"), worker=t.user_attrs.get("harness.worker"),
                sampler_seed=t.user_attrs.get("harness.sampler_seed"))


@dataclass
class TrialRunner:
    """Optuna's objective: one trial as a harness run (its MLflow run opened under the study's
    parent when the trial starts, closed FINISHED, FAILED, KILLED or pruned)."""

    scfg: StudyConfig
    study: Any
    name: str
    classes: list
    run_cfg: RunConfig  # the base run: model resolved, tracked, no progress, no JSON
    tracker: Any
    parent_id: str
    worker: int
    sampler_seed: int
    target: int
    grace_s: float
    prune: bool  # report validation accuracy to Optuna's pruner (methods that train)
    fixed: dict[str, str] = field(default_factory=dict)

    @property
    def multi(self) -> bool:
        return len(self.scfg.objectives) > 1

    def __call__(self, trial):
        from ..tracking import owner

        trial.set_user_attr("harness.owner", owner())
        trial.set_user_attr("harness.worker", self.worker)
        trial.set_user_attr("harness.sampler_seed", self.sampler_seed)
        try:
            return self.run(trial)
        finally:  # however it ends (a trial that died never gets here): see placement
            try:
                trial.set_user_attr("harness.ended", True)
            except Exception:  # noqa: BLE001 - already told (an interrupted trial was re-queued)
                pass

    def _claim(self, trial):
        """Refuse a trial beyond the study's places; the stored trial (with Optuna's system
        attributes, which ``Trial`` hides)."""
        frozen = trial.study._storage.get_trial(trial._trial_id)
        fin, ahead = study_places(self.study, place_key(frozen), self.grace_s)
        if fin + ahead >= self.target:
            trial.set_user_attr("harness.surplus", True)
            raise SurplusTrial(f"trial {trial.number}: {self.target} trials have finished, are running or are queued")
        return frozen

    def _open_run(self, trial, frozen) -> tuple[str, dict[str, Any]]:
        """The trial's MLflow run, opened RUNNING; a retry closes its dead predecessor's run."""
        retry_of = frozen.system_attrs.get("failed_trial")
        dead_run = trial.user_attrs.get("mlflow_run_id") if retry_of is not None else None
        run_name = f"{self.name}/trial-{trial.number:03d}"
        tags: dict[str, Any] = {"harness.study": self.name, "optuna.trial_number": trial.number,
                                "optuna.trial_state": "RUNNING", "harness.worker": self.worker}
        if retry_of is not None:
            tags["harness.retry_of"] = retry_of
        run_id = self.tracker.start_run(run_name, tags, self.parent_id)
        trial.set_user_attr("mlflow_run_id", run_id)
        if dead_run:
            self.tracker.end_run(dead_run, "FAILED", None, **{"harness.retried_as": trial.number})
        return run_id, {**tags, "optuna.trial_state": "COMPLETE", "mlflow.runName": run_name}

    def run(self, trial):
        import optuna

        from .. import runner
        from ..tracking.studies import log_pruned
        from .recovery import requeue

        frozen = self._claim(trial)
        from ..datasets import EVENT_SETS

        sets = trial_sets(trial, self.classes, self.scfg.grid, self.fixed, self.run_cfg.dataset in EVENT_SETS)
        trial.set_user_attr("harness.sets", sets)
        cfg = self.run_cfg.replace(sets=tuple(f"{k}={v}" for k, v in sets.items()))
        run_id, tags = self._open_run(trial, frozen)
        callbacks = [pruning_callback(trial)] if self.prune else []
        reported = callbacks[0].reported if callbacks else {}
        try:
            result = runner.run(cfg, parent_run_id=self.parent_id, tracker=self.tracker, fit_callbacks=callbacks,
                                tags=tags, model=self.scfg.model_obj, dataset=self.scfg.dataset_obj, run_id=run_id)
        except optuna.TrialPruned as exc:
            log_pruned(self.tracker, run_id, sets, str(exc), reported)
            raise
        except DivergedError as exc:
            log_pruned(self.tracker, run_id, sets, str(exc), reported)
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except Interrupted as exc:
            self.tracker.end_run(run_id, "KILLED", f"interrupted by {exc}; its parameters were re-queued",
                                 **{"optuna.trial_state": "FAIL"})
            requeue(self.study, trial)
            exc.note = (f"trial {trial.number}'s MLflow run was marked KILLED and its parameters re-queued; "
                        "run the same command again to resume the study")
            raise
        except BaseException as exc:
            self.tracker.end_run(run_id, "FAILED", f"{type(exc).__name__}: {exc}", **{"optuna.trial_state": "FAIL"})
            raise
        return self._values(result, run_id)

    def _values(self, result, run_id: str):
        values = []
        for o in self.scfg.objectives:
            if o.key not in result.metrics:
                self.tracker.end_run(run_id, "FAILED", f"it does not write the objective {o.key}")
                raise StudyError(f"objective {o.key!r}: {self.scfg.run.method} runs do not write this metric; "
                                 "see the run's metrics in MLflow or its --output-json record")
            values.append(float(result.metrics[o.key]))
        return values if self.multi else values[0]


def reevaluate(best, scfg: StudyConfig, run_cfg: RunConfig, tracker, parent_id, name) -> list[dict]:
    """The best trials (``--reevaluate``) once more, on the full test set, as child runs."""
    from .. import runner

    out = []
    for t in best[:scfg.reevaluate]:
        sets = t.user_attrs.get("harness.sets") or {}
        cfg = run_cfg.replace(sets=tuple(f"{k}={v}" for k, v in sets.items()), eval_limit=0)
        tags = {"harness.study": name, "harness.reevaluated_trial": t.number,
                "mlflow.runName": f"{name}/trial-{t.number:03d}-full-test"}
        res = runner.run(cfg, parent_run_id=parent_id, tracker=tracker, tags=tags, model=scfg.model_obj,
                         dataset=scfg.dataset_obj)
        out.append(dict(trial=t.number, sets=sets, metrics={o.key: res.metrics.get(o.key) for o in scfg.objectives},
                        mlflow_run_id=res.tracking.get("run_id")))
    return out
