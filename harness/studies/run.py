"""``run_study``: the orchestration of one study process (see :mod:`harness.studies`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import Interrupted, set_phase
from ..io import redact_url
from .spec import GRACE_INTERVALS, StudyConfig, StudySummary


@dataclass
class Setup:
    """A study process before its first trial: what it searches, where, and as which worker."""

    scfg: StudyConfig
    classes: list
    model: str
    index: int  # this process's worker index (its --workers are index .. index + workers - 1)
    tracker: Any
    storage_spec: str
    name: str
    started: float

    @property
    def lead(self) -> bool:  # re-evaluates the best trials and closes the parent run
        return self.index == 0

    @property
    def journal(self) -> bool:
        return self.storage_spec.startswith("journal:")


def setup(scfg: StudyConfig) -> Setup:
    """Names, settings, objectives and the tracking store, checked before any trial."""
    from ..datasets import check_dataset
    from ..methods import resolve
    from ..models import resolve_model
    from ..tracking import Tracker, TrackingSettings
    from .storage import default_storage
    from .workers import worker_index

    started = time.time()
    base = scfg.run
    classes = resolve(base.method)
    if scfg.dataset_obj is None:
        check_dataset(base.dataset)
    model = resolve_model(scfg.model_obj if scfg.model_obj is not None else
                          (base.model or classes[-1].default_model))[0]
    scfg.validate(classes)
    tracker = Tracker(TrackingSettings.load(experiment=base.experiment))
    tracker.check()
    storage_spec = scfg.storage or default_storage(tracker.settings.tracking_uri)
    name = scfg.study_name or f"{base.method}-{model}-{base.dataset}"
    return Setup(scfg, classes, model, worker_index(scfg) * scfg.workers, tracker, storage_spec, name, started)


def run_study(scfg: StudyConfig) -> StudySummary:
    """Run (or resume, or join as one more worker) the study described by ``scfg``."""
    import optuna

    from ..tracking.studies import close_orphaned_runs, parent_run
    from .recovery import OnStaleTrial, fail_stale, recover_stale_trials
    from .storage import open_storage, open_study, sampler_seed
    from .trial import TrialRunner, trains

    s = setup(scfg)
    on_stale = OnStaleTrial(s.tracker, GRACE_INTERVALS * scfg.heartbeat)
    storage = open_storage(s.storage_spec, None if s.journal else scfg.heartbeat, on_stale)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = sampler_seed(storage, s.name, scfg, s.index)
    study = open_study(storage, s.storage_spec, s.name, scfg, seed)
    recovered = recover_stale_trials(study) if s.journal else []
    if not s.journal:
        fail_stale(study, on_stale.grace_s, on_stale)
    parent_id = parent_run(s.tracker, study, s.name, scfg, s.model, s.storage_spec)
    if s.lead:
        close_orphaned_runs(s.tracker, study, parent_id)
    target = scfg.trials
    if scfg.sampler == "grid":
        target = min(target, math.prod(len(v) for v in scfg.grid.values()))
    first = scfg.objectives[0]
    # a grid is a map to be filled: pruning a cell would leave a hole in it
    prune = (len(scfg.objectives) == 1 and scfg.sampler != "grid" and trains(s.classes)
             and first.direction == "maximize" and first.key.endswith("accuracy"))
    run_cfg = scfg.run.replace(model=s.model, track=True, progress=False, output_json=None)
    objective = TrialRunner(scfg, study, s.name, s.classes, run_cfg, s.tracker, parent_id, s.index, seed, target,
                            on_stale.grace_s, prune, fixed=scfg.run.method_sets)
    _run_workers(s, study, objective, target, on_stale, parent_id)
    return _finish(s, study, run_cfg, parent_id, recovered + on_stale.recovered)


def _run_workers(s: Setup, study, objective, target: int, on_stale, parent_id: str) -> None:
    """This process's trials, and its ``--workers`` processes', until ``target`` have finished;
    Ctrl-C or SIGTERM stops every worker and closes the parent run KILLED."""
    from tqdm.auto import tqdm

    from ..io import tqdm_disable
    from .workers import share_cores, start_workers, stop, wait_for, work

    scfg = s.scfg
    bar = tqdm(total=target, initial=min(_finished(study), target), desc=f"study {s.name}", unit="trial",
               disable=tqdm_disable(scfg.progress))
    workers: list = []
    try:
        set_phase(f"running study {s.name}")
        workers = start_workers(scfg, s.index, share_cores(scfg.workers))
        work(study, objective, target, scfg.n_jobs, stale=None if s.journal else on_stale, grace_s=on_stale.grace_s,
             on_trial_end=_progress(s, bar), bar=bar)
        wait_for(workers)
    except Interrupted as exc:
        stop(workers, exc.signum)
        if s.lead:
            s.tracker.end_run(parent_id, "KILLED", f"interrupted by {exc}; run the same command again to resume",
                              **{"harness.interrupted": exc})
        if getattr(exc, "note", None) is None:
            exc.note = "no trial was running; run the same command again to resume the study"
        raise
    except BaseException:
        stop(workers, None)
        raise
    finally:
        bar.close()


def _finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _progress(s: Setup, bar):
    """Optuna's trial-end callback: the bar advances by each finished trial and shows the best."""
    from optuna.trial import TrialState

    def on_trial_end(study, trial) -> None:
        set_phase(f"between trials of study {s.name}")
        bar.update(1 if trial.state in (TrialState.COMPLETE, TrialState.PRUNED) else 0)
        try:
            if len(s.scfg.objectives) > 1:
                bar.set_postfix_str(f"Pareto {len(study.best_trials)}")
            else:
                bar.set_postfix_str(f"best {s.scfg.objectives[0].key}={study.best_value:.4g}")
        except ValueError:
            pass

    return on_trial_end


def _finish(s: Setup, study, run_cfg, parent_id: str, recovered: list[int]) -> StudySummary:
    """The best trials (re-evaluated on the full test set when trials used --eval-limit), the
    summary, the parent run's closing metrics and the summary JSON."""
    from optuna.trial import TrialState

    from ..tracking.studies import finish_parent
    from .trial import reevaluate, trial_record

    scfg = s.scfg
    multi = len(scfg.objectives) > 1
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = (study.best_trials if multi else [study.best_trial]) if complete else []
    reevaluated = (reevaluate(best, scfg, run_cfg, s.tracker, parent_id, s.name)
                   if scfg.run.eval_limit and s.lead else [])
    if reevaluated:
        study.set_user_attr("harness.reevaluated", reevaluated)
    trials = [trial_record(t) for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("harness.surplus")]
    summary = StudySummary(
        study_name=s.name, storage=redact_url(s.storage_spec), objectives=[str(o) for o in scfg.objectives],
        trials=trials, best=[trial_record(t) for t in best], reevaluated=reevaluated, parent_run_id=parent_id,
        tracking_uri=s.tracker.settings.tracking_uri, wall_s=round(time.time() - s.started, 2), recovered=recovered)
    if s.lead:
        finish_parent(s.tracker, parent_id, study, best, scfg, summary)
    if scfg.output_json:
        from ..io import write_json_atomic

        write_json_atomic(summary.to_record(), Path(scfg.output_json))
    return summary
