"""Dead workers and interrupted trials: stale trials failed and retried once, journal trials of
dead processes re-queued, an interrupted trial's parameters queued again (see :mod:`harness.studies`)."""

from __future__ import annotations

import logging
import socket
import warnings

from ..io import pid_alive

log = logging.getLogger(__name__)


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


class OnStaleTrial:
    """Optuna's heartbeat found a trial whose worker died: retry it once with its parameters
    (``RetryHeartbeatStaleTrialCallback``) and mark its MLflow run FAILED, saying why."""

    def __init__(self, tracker, grace_s: float):
        self.tracker, self.grace_s = tracker, grace_s
        self.recovered: list[int] = []

    def __call__(self, study, trial) -> None:
        import optuna.storages

        # renamed in Optuna 4.9 (the old name warns, and goes in 6.0)
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
        # a retry carries the trial it repeats; read before the callback, which appends to the
        # trial's retry history in place
        retried = "failed_trial" not in trial.system_attrs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(max_retry=1)(study, trial)
        self.recovered.append(trial.number)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            what = ("its parameters are retried as a new trial (tag harness.retried_as names it once it starts)"
                    if retried else "not retried again (it is itself a retry)")
            self.tracker.end_run(run_id, "FAILED", f"its worker ({trial.user_attrs.get('harness.owner', '?')}) "
                                 f"stopped sending heartbeats for over {self.grace_s} s; {what}",
                                 **{"optuna.trial_state": "FAIL"})



def fail_stale(study, grace_s: float, on_stale) -> None:
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


def requeue(study, trial) -> None:
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

