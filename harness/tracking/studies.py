"""A study's MLflow runs: the parent run every trial's run nests under (found again on resume and
by every worker), trial runs left behind by dead processes, pruned trials' runs, and the parent's
summary when the study ends (see :mod:`harness.studies`)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from ..errors import TrackingError
from ..io import redact_url

log = logging.getLogger(__name__)

PARENT_SETTLE_S = 1.0


def parent_run(tracker, study, name: str, scfg: Any, model: str, storage_spec: str) -> str:
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
            run = client.get_run(pid)
            if run.info.status != "RUNNING":  # resumed: running again, and no longer said to be interrupted
                client.update_run(pid, status="RUNNING")
                for tag in ("harness.interrupted", "harness.status_reason"):
                    if tag in run.data.tags:
                        client.delete_tag(pid, tag)
                if "harness.interrupted" in run.data.tags:
                    client.set_tag(pid, "harness.resumed_after", run.data.tags["harness.interrupted"])
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
                      storage=redact_url(storage_spec), fixed_sets=" ".join(base.sets) or "-",
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


def close_orphaned_runs(tracker, study, parent_id: str) -> None:
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


def log_pruned(tracker, run_id: str, sets: dict[str, str], reason: str, reported: dict[int, float]) -> None:
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


def finish_parent(tracker, parent_id: str, study, best, scfg: Any, summary: Any) -> None:
    """The parent run's summary metrics (trials by state, best trial or Pareto size, wall time); FINISHED."""
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
