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
  retry, which runs before any new trial): :mod:`.placement`.
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

The package, by job: :mod:`.spec` (what a study searches, checked before any trial),
:mod:`.storage` (storages, samplers, opening a study and checking it against the command),
:mod:`.placement` (which trial may run: pure functions of the trials and the time),
:mod:`.recovery` (dead workers, interrupted trials), :mod:`.workers` (processes and each worker's
loop), :mod:`.trial` (one trial as a harness run) and :mod:`.run` (``run_study``); the study's MLflow
runs are beside the tracking code, in :mod:`harness.tracking.studies`.
"""

from __future__ import annotations

from .placement import place_key, places, study_places
from .recovery import recover_stale_trials
from .run import run_study
from .spec import (
    DIRECTIONS,
    GRACE_INTERVALS,
    HEARTBEAT_S,
    SAMPLERS,
    SEED_STRIDE,
    WORKER_INDEX_ENV,
    Objective,
    StudyConfig,
    StudySummary,
    check_metric_key,
    format_value,
    parse_grid,
)
from .storage import default_storage, make_sampler, open_storage
from .trial import SurplusTrial, pruning_callback
from .workers import worker_argv, worker_index

__all__ = [
    "DIRECTIONS", "GRACE_INTERVALS", "HEARTBEAT_S", "SAMPLERS", "SEED_STRIDE", "WORKER_INDEX_ENV", "Objective",
    "StudyConfig", "StudySummary", "SurplusTrial", "check_metric_key", "default_storage", "format_value",
    "make_sampler", "open_storage", "parse_grid", "place_key", "places", "pruning_callback", "recover_stale_trials",
    "run_study", "study_places", "worker_argv", "worker_index",
]
