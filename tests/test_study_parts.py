"""The study's parts one by one, on Optuna's in-memory storage and fakes (no training, no
processes): where a study lives (storage.py), dead and interrupted trials (recovery.py), the worker
loop and its processes (workers.py). The whole study, with training and workers, is in
test_study.py; these pin the rules those runs would only show after minutes.

Each test names in its docstring the wrong variant it fails on."""

import logging
import socket
import warnings
from types import SimpleNamespace

import optuna
import pytest
from harness.config import RunConfig
from harness.errors import StudyError
from harness.studies import Objective, StudyConfig, recovery, storage, workers
from harness.studies.spec import GRACE_INTERVALS, SEED_STRIDE, WORKER_INDEX_ENV
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)
X = optuna.distributions.FloatDistribution(0, 1)


def _scfg(**kw):
    if "objectives" in kw:
        kw["objectives"] = [Objective.parse(o) for o in kw["objectives"]]
    run = RunConfig.build(method=kw.pop("method", "rate"), dataset="digits", seed=kw.pop("seed", 0),
                          progress=False, track=False)
    return StudyConfig(run=run, progress=False, **kw)


class _RDB:
    """Stands in for optuna.storages.RDBStorage: records how it was asked to connect."""

    def __init__(self, url, engine_kwargs=None, **kw):
        self.url, self.engine_kwargs, self.kw = url, engine_kwargs, kw


# --- storage.py ---------------------------------------------------------------------------------

def test_a_journal_or_sqlite_file_in_a_missing_directory_is_refused_naming_it(tmp_path):
    """Fails if the directory check is inverted or dropped (Optuna would create the file elsewhere
    or fail later with its own message)."""
    with pytest.raises(StudyError, match=r"directory .*nowhere does not exist"):
        storage.open_storage(f"journal:{tmp_path / 'nowhere' / 'j.log'}")
    with pytest.raises(StudyError, match=r"directory .*nowhere does not exist"):
        storage.open_storage(f"sqlite:///{tmp_path / 'nowhere' / 'o.db'}")
    journal = storage.open_storage(f"journal:{tmp_path / 'j.log'}")
    assert isinstance(journal, optuna.storages.JournalStorage)


def test_a_server_storage_fails_fast_and_checks_its_connections(monkeypatch):
    """Fails if the connect timeout goes under another name (libpq ignores unknown keys and waits
    for TCP's own timeout), if pre-ping is dropped, or if a file store gets server settings."""
    monkeypatch.setattr(optuna.storages, "RDBStorage", _RDB)
    pg = storage.open_storage("postgresql://u:secret@db:5432/s")
    assert pg.engine_kwargs == {"pool_pre_ping": True, "connect_args": {"connect_timeout": storage.CONNECT_TIMEOUT_S}}
    assert storage.open_storage("mysql://u@db/s").engine_kwargs["connect_args"] == {"connect_timeout": 5}
    assert storage.open_storage("sqlite:///o.db").engine_kwargs is None
    assert pg.kw == {}  # no heartbeat asked: Optuna's defaults


def test_heartbeats_give_a_grace_of_that_many_intervals_and_the_callback(monkeypatch):
    """Fails if the grace period is not GRACE_INTERVALS × the interval or the callback is lost."""
    monkeypatch.setattr(optuna.storages, "RDBStorage", _RDB)

    def on_stale(study, trial):
        return None

    s = storage.open_storage("sqlite:///o.db", heartbeat=7, on_stale=on_stale)
    assert s.kw == {"heartbeat_interval": 7, "grace_period": GRACE_INTERVALS * 7,
                    "heartbeat_stale_trial_callback": on_stale}


def test_storage_failures_are_one_line_with_the_password_hidden(monkeypatch):
    """Fails if the password leaks, the exception's type or first line is lost, or a missing driver
    is not told apart (it needs an install, not a server)."""
    def broken(url, **kw):
        raise RuntimeError("could not connect\nDETAIL: a second line")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(StudyError) as e:
        storage.open_storage("postgresql://u:hunter2@db/s")
    msg = str(e.value)
    assert "hunter2" not in msg and "***" in msg and "RuntimeError: could not connect" in msg
    assert "second line" not in msg

    def no_driver(url, **kw):
        raise ModuleNotFoundError("No module named 'psycopg2'")

    monkeypatch.setattr(optuna.storages, "RDBStorage", no_driver)
    with pytest.raises(StudyError, match=r"driver is missing .*snn-harness\[distributed\]"):
        storage.open_storage("postgresql://u@db/s")


def test_tpe_models_the_parameters_jointly():
    """Fails if TPE is made univariate (it then ignores how method parameters interact)."""
    assert storage.make_sampler("tpe", 0, {})._multivariate is True


def test_sampler_seeds_move_on_by_stored_trials_and_worker_index_except_for_the_grid():
    """Fails if a fresh study's seed is off by one, the stored trials or the worker's stride are
    left out, or the grid's seed moves (every process must shuffle the grid alike)."""
    st = optuna.storages.InMemoryStorage()
    tpe = _scfg(sampler="tpe", seed=5)
    assert storage.sampler_seed(st, "s", tpe, 0) == 5  # the study does not exist yet
    assert storage.sampler_seed(st, "s", tpe, 2) == 5 + 2 * SEED_STRIDE
    study = optuna.create_study(study_name="s", storage=st)
    for _ in range(3):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert storage.sampler_seed(st, "s", tpe, 0) == 5 + 3
    assert storage.sampler_seed(st, "s", tpe, 1) == 5 + 3 + SEED_STRIDE
    grid = _scfg(sampler="grid", seed=5, grid={"timesteps": ["8", "16"]})
    assert storage.sampler_seed(st, "s", grid, 3) == 5


def test_a_study_is_opened_with_its_directions_and_refused_with_others():
    """Fails if the directions are not passed to Optuna (every objective would be minimised), a
    study with other directions is joined, or the objectives are left unnamed."""
    st = optuna.storages.InMemoryStorage()
    two = _scfg(objectives=["test/accuracy:max", "energy_nJ/loihi:min"])
    study = storage.open_study(st, "memory", "s", two, 0)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == [o.key for o in two.objectives]
    flipped = _scfg(objectives=["test/accuracy:min", "energy_nJ/loihi:max"])
    with pytest.raises(StudyError, match=r"exists with other objective directions; use another --study-name"):
        storage.open_study(st, "memory", "s", flipped, 0)
    other_method = _scfg(method="ttfs", objectives=["test/accuracy:max", "energy_nJ/loihi:min"])
    with pytest.raises(StudyError, match=r"exists with method rate; this command asks for ttfs"):
        storage.open_study(st, "memory", "s", other_method, 0)
    assert storage.open_study(st, "memory", "s", two, 1).study_name == "s"  # the same command joins it


def test_opening_a_study_keeps_optunas_experimental_warnings_out():
    """Fails if the warnings filter is dropped (set_metric_names is experimental: every study
    would print Optuna's warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        storage.open_study(optuna.storages.InMemoryStorage(), "memory", "s", _scfg(), 0)
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]


# --- recovery.py --------------------------------------------------------------------------------

def test_a_trial_without_heartbeat_is_failed_only_after_twice_the_grace_and_only_if_unclaimed():
    """Fails if the age bound is not 2 × grace, the comparison admits younger trials, a trial a
    harness worker claimed is failed too, or the stale callback is not called."""
    study = optuna.create_study()
    young, claimed = study.ask({"x": X}), study.ask({"x": X})
    claimed.set_user_attr("harness.owner", "host:1")
    seen = []
    recovery.fail_stale(study, 3600.0, lambda s, t: seen.append(t.number))
    assert seen == [] and study.trials[young.number].state == TrialState.RUNNING
    import datetime

    # started 10 s ago: failed for a grace of 4.9 s (10 > 9.8), kept for 5.5 s (10 < 11)
    stored = {t.number: t for t in study.get_trials(deepcopy=False)}
    stored[young.number].datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=10)
    stored[claimed.number].datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=10)
    recovery.fail_stale(study, 5.5, lambda s, t: seen.append(t.number))
    assert seen == []
    recovery.fail_stale(study, 4.9, lambda s, t: seen.append(t.number))
    assert seen == [young.number]
    assert study.trials[young.number].state == TrialState.FAIL
    assert study.trials[claimed.number].state == TrialState.RUNNING


def test_an_interrupted_trial_is_failed_and_its_parameters_queued_again():
    """Fails if the trial is left running, its parameters are not queued, or the retry does not say
    which trial it repeats."""
    study = optuna.create_study()
    t = study.ask({"x": X})
    recovery.requeue(study, t)
    assert study.trials[t.number].state == TrialState.FAIL
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == t.params and waiting.user_attrs == {"harness.retry_of_interrupted": t.number}


def test_requeueing_a_trial_another_worker_finished_warns_and_queues_nothing(caplog):
    """Fails if a finished trial's parameters are queued again (the study would run them twice)."""
    study = optuna.create_study()
    t = study.ask({"x": X})
    study.tell(t, 0.5)
    with caplog.at_level(logging.WARNING, logger="harness.studies.recovery"):
        recovery.requeue(study, t)
    assert study.get_trials(states=(TrialState.WAITING,)) == []
    assert f"trial {t.number} could not be marked failed" in caplog.text


class _Tracker:
    def __init__(self):
        self.ended = []

    def end_run(self, run_id, status, reason=None, **tags):
        self.ended.append((run_id, status, reason, tags))


def test_a_stale_trial_is_retried_once_and_its_run_failed_saying_so():
    """Fails if the retry is skipped, a retry is retried again, the run is not closed FAILED, or the
    message does not say which of the two happened."""
    study = optuna.create_study()
    t = study.ask({"x": X})
    t.set_user_attr("mlflow_run_id", "r1")
    t.set_user_attr("harness.owner", "host:42")
    study.tell(t, state=TrialState.FAIL)
    tracker = _Tracker()
    stale = recovery.OnStaleTrial(tracker, grace_s=30.0)
    stale(study, study.trials[t.number])
    assert stale.recovered == [t.number]
    (run_id, status, reason, tags), = tracker.ended
    assert (run_id, status, tags) == ("r1", "FAILED", {"optuna.trial_state": "FAIL"})
    assert "host:42" in reason and "over 30.0 s" in reason and "retried as a new trial" in reason
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert retry.params == t.params
    # the retry dies too: it is not retried again
    r = study.ask()
    assert r.number == retry.number
    r.set_user_attr("mlflow_run_id", "r2")
    study.tell(r, state=TrialState.FAIL)
    stale(study, study.trials[r.number])
    assert "not retried again" in tracker.ended[-1][2]
    assert study.get_trials(states=(TrialState.WAITING,)) == []


def test_a_stale_trial_without_a_run_is_retried_without_touching_mlflow():
    study = optuna.create_study()
    t = study.ask({"x": X})
    study.tell(t, state=TrialState.FAIL)
    tracker = _Tracker()
    recovery.OnStaleTrial(tracker, 1.0)(study, study.trials[t.number])
    assert tracker.ended == [] and len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_recovered_journal_trials_are_failed_not_left_running(monkeypatch):
    """The journal path's state (its trials have no heartbeat): fails if the dead owner's trial is
    re-queued but left RUNNING (it would hold a place forever)."""
    study = optuna.create_study()
    t = study.ask({"x": X})
    t.set_user_attr("harness.owner", f"{socket.gethostname()}:123")
    monkeypatch.setattr(recovery, "pid_alive", lambda pid: pid != 123)
    assert recovery.recover_stale_trials(study) == [t.number]
    assert study.trials[t.number].state == TrialState.FAIL


# --- workers.py ---------------------------------------------------------------------------------

class _Proc:
    def __init__(self, rc, pid):
        self.rc, self.pid = rc, pid

    def wait(self, timeout=None):
        return self.rc


def test_a_worker_that_died_is_named_by_its_index_and_how_it_ended(caplog):
    """Fails if workers are numbered from 0 (this process is worker 0), a signal is reported as an
    exit code, or a clean exit is reported at all."""
    with caplog.at_level(logging.WARNING, logger="harness.studies.workers"):
        workers.wait_for([_Proc(0, 11), _Proc(-9, 12), _Proc(3, 13)])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("worker 2 (pid 12) was killed by SIGKILL")
    assert lines[1].startswith("worker 3 (pid 13) exited with 3")


def test_the_worker_index_comes_from_the_option_then_the_batch_system(monkeypatch):
    """Fails if the option loses to the environment, a non-number is read as an index, or an unset
    variable is read as anything but 0."""
    for var in WORKER_INDEX_ENV:
        monkeypatch.delenv(var, raising=False)
    assert workers.worker_index(_scfg()) == 0
    monkeypatch.setenv(WORKER_INDEX_ENV[1], "4")
    assert workers.worker_index(_scfg()) == 4
    assert workers.worker_index(_scfg(worker_index=2)) == 2
    monkeypatch.setenv(WORKER_INDEX_ENV[0], "x")  # not a number: the next variable
    assert workers.worker_index(_scfg()) == 4
    monkeypatch.setenv(WORKER_INDEX_ENV[0], "0")
    assert workers.worker_index(_scfg()) == 0


class _Bar:
    def set_postfix_str(self, s):
        self.last = s


def test_the_worker_loop_runs_exactly_the_target_and_checks_stale_trials_each_round(monkeypatch):
    """Fails if the loop stops one short or runs one over, starts more trials at once than places
    are free, or skips the stale check a heartbeat storage needs."""
    checks = []
    monkeypatch.setattr(workers, "fail_stale", lambda study, grace, cb: checks.append((grace, cb)))
    study = optuna.create_study()
    ends = []
    stale = SimpleNamespace(grace_s=9.0)
    workers.work(study, lambda t: t.suggest_float("x", 0, 1), 3, 2, stale=stale, grace_s=9.0,
                 on_trial_end=lambda s, t: ends.append(t.number), bar=_Bar())
    assert len(study.trials) == 3 and sorted(ends) == [0, 1, 2]
    assert checks and all(c == (9.0, stale) for c in checks)
    workers.work(study, lambda t: 0.0, 3, 2, stale=None, grace_s=9.0, on_trial_end=lambda s, t: None, bar=_Bar())
    assert len(study.trials) == 3  # the target is met: nothing more


def test_without_heartbeats_a_worker_leaves_when_the_rest_are_running_elsewhere():
    """Fails if a worker without heartbeats waits for others' running trials (nothing would ever
    tell it they died: it would wait forever)."""
    study = optuna.create_study()
    study.optimize(lambda t: 0.0, n_trials=1)
    study.ask({"x": X})  # another worker's trial, running
    workers.work(study, lambda t: 0.0, 2, 1, stale=None, grace_s=60.0, on_trial_end=lambda s, t: None, bar=_Bar())
    assert len(study.trials) == 2


# --- trial.py -----------------------------------------------------------------------------------

class _RunTracker(_Tracker):
    def __init__(self):
        super().__init__()
        self.started = []

    def start_run(self, name, tags, parent_run_id=None):
        self.started.append((name, dict(tags), parent_run_id))
        return f"run{len(self.started)}"


def _runner(monkeypatch, outcome, objectives=("test/accuracy:max",), target=5, grid=None):
    """A TrialRunner over an in-memory study whose harness run is ``outcome`` (metrics, or an
    exception to raise)."""
    from harness import runner
    from harness.methods import resolve
    from harness.studies.trial import TrialRunner

    calls = []

    def run(cfg, **kw):
        calls.append((cfg, kw))
        if isinstance(outcome, BaseException):
            raise outcome
        return SimpleNamespace(metrics=outcome, tracking={"run_id": kw.get("run_id")})

    monkeypatch.setattr(runner, "run", run)
    scfg = _scfg(objectives=list(objectives), grid=grid or {"timesteps": ["8"]}, sampler="grid")
    study = optuna.create_study(directions=[o.direction for o in scfg.objectives])
    tr = TrialRunner(scfg=scfg, study=study, name="s", classes=resolve("rate"), run_cfg=scfg.run,
                     tracker=_RunTracker(), parent_id="parent", worker=2, sampler_seed=11, target=target,
                     grace_s=60.0, prune=False, fixed={"v_init": "0.5"})
    return tr, study, calls


def test_a_trial_is_one_run_under_the_parent_with_its_sets_and_who_ran_it(monkeypatch):
    """Wrong variants: the fixed sets or the grid cell not passed to the run, the run not nested
    under the parent, the worker, seed or owner not recorded, a single objective returned as a list."""
    tr, study, calls = _runner(monkeypatch, {"test/accuracy": 0.75})
    study.optimize(tr, n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.COMPLETE and t.value == 0.75
    cfg, kw = calls[0]
    assert cfg.sets == ("timesteps=8", "v_init=0.5") and kw["parent_run_id"] == "parent" and kw["run_id"] == "run1"
    name, tags, parent = tr.tracker.started[0]
    assert (name, parent) == ("s/trial-000", "parent")
    assert tags == {"harness.study": "s", "optuna.trial_number": 0, "optuna.trial_state": "RUNNING", "harness.worker": 2}
    assert kw["tags"]["optuna.trial_state"] == "COMPLETE" and kw["tags"]["mlflow.runName"] == "s/trial-000"
    u = t.user_attrs
    assert (u["harness.worker"], u["harness.sampler_seed"], u["harness.ended"], u["mlflow_run_id"]) == (2, 11, True, "run1")
    assert u["harness.owner"].startswith(socket.gethostname() + ":") and u["harness.sets"] == {"timesteps": "8",
                                                                                                 "v_init": "0.5"}


def test_a_multi_objective_trial_returns_every_objective_in_order(monkeypatch):
    tr, study, _ = _runner(monkeypatch, {"test/accuracy": 0.5, "spikes_per_neuron": 0.25},
                           objectives=("test/accuracy:max", "spikes_per_neuron:min"))
    study.optimize(tr, n_trials=1)
    assert study.trials[0].values == [0.5, 0.25]


def test_a_trial_past_the_target_is_refused_unrun(monkeypatch):
    """Wrong variant: ``>`` for ``>=`` (one trial more than --trials would run)."""
    from harness.studies.trial import SurplusTrial

    tr, study, calls = _runner(monkeypatch, {"test/accuracy": 0.5}, target=1)
    study.optimize(tr, n_trials=1)
    study.optimize(tr, n_trials=1, catch=(SurplusTrial,))
    assert len(calls) == 1 and study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["harness.surplus"] is True


def test_a_run_without_the_objective_fails_its_trial_naming_it(monkeypatch):
    tr, study, _ = _runner(monkeypatch, {"spikes_per_neuron": 0.1})
    with pytest.raises(StudyError, match="objective 'test/accuracy': rate runs do not write this metric"):
        study.optimize(tr, n_trials=1)
    assert tr.tracker.ended[-1][:3] == ("run1", "FAILED", "it does not write the objective test/accuracy")


def test_a_diverged_run_is_a_pruned_trial_with_its_reason(monkeypatch):
    """Wrong variant: a diverged run counted as a failure (the pruner would learn nothing) or its
    run closed without the reason."""
    from harness.errors import DivergedError
    from harness.tracking import studies

    pruned = []
    monkeypatch.setattr(studies, "log_pruned", lambda tracker, run_id, sets, reason, reported:
                        pruned.append((run_id, sets, reason)))
    tr, study, _ = _runner(monkeypatch, DivergedError("loss is NaN at epoch 2"))
    study.optimize(tr, n_trials=1)
    assert study.trials[0].state == TrialState.PRUNED
    assert pruned == [("run1", {"timesteps": "8", "v_init": "0.5"}, "loss is NaN at epoch 2")]


def test_an_interrupted_trial_is_killed_requeued_and_says_how_to_resume(monkeypatch):
    import signal

    from harness.errors import Interrupted

    exc = Interrupted(signal.SIGINT)
    assert exc.note is None and exc.exit_code == 130 and str(exc) == "SIGINT"
    tr, study, _ = _runner(monkeypatch, exc)
    with pytest.raises(Interrupted):
        study.optimize(tr, n_trials=1)
    run_id, status, reason, tags = tr.tracker.ended[-1]
    assert (run_id, status, tags) == ("run1", "KILLED", {"optuna.trial_state": "FAIL"})
    assert reason.startswith("interrupted by SIGINT")
    assert study.trials[0].state == TrialState.FAIL and len(study.get_trials(states=(TrialState.WAITING,))) == 1
    assert "trial 0's MLflow run was marked KILLED" in exc.note and "run the same command again" in exc.note


def test_a_run_that_raises_fails_its_trial_with_the_error(monkeypatch):
    tr, study, _ = _runner(monkeypatch, ValueError("bad"))
    with pytest.raises(ValueError):
        study.optimize(tr, n_trials=1)
    assert tr.tracker.ended[-1] == ("run1", "FAILED", "ValueError: bad", {"optuna.trial_state": "FAIL"})


def test_a_retry_closes_its_dead_predecessors_run_and_says_what_it_retries(monkeypatch):
    """Wrong variants: the dead trial's run left RUNNING, the retry not tagged with the trial it
    repeats."""
    tr, study, _ = _runner(monkeypatch, {"test/accuracy": 0.5})
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params={"timesteps": "8"},
        distributions={"timesteps": optuna.distributions.CategoricalDistribution(["8"])},
        user_attrs={"mlflow_run_id": "dead-run"}, system_attrs={"failed_trial": 7}))
    study.optimize(tr, n_trials=1)
    assert tr.tracker.started[0][1]["harness.retry_of"] == 7
    assert ("dead-run", "FAILED", None, {"harness.retried_as": 0}) in tr.tracker.ended


def test_a_trial_record_says_what_a_summary_needs():
    from harness.studies.trial import trial_record

    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=0.5, params={"x": 0.25}, distributions={"x": X},
        user_attrs={"harness.sets": {"x": "0.25"}, "mlflow_run_id": "r", "harness.worker": 1,
                    "harness.sampler_seed": 9}, system_attrs={"failed_trial": 3}))
    rec = trial_record(study.trials[0])
    assert rec == {"number": 0, "state": "COMPLETE", "values": [0.5], "params": {"x": 0.25}, "sets": {"x": "0.25"},
                   "mlflow_run_id": "r", "duration_s": rec["duration_s"], "retry_of": 3, "worker": 1,
                   "sampler_seed": 9}


def test_a_chain_trial_samples_each_method_under_its_prefix_and_keeps_only_changes():
    """Wrong variants: a transform's parameters without its ``prune.`` prefix, defaults written as
    sets, fixed values losing to sampled ones."""
    from harness.methods import resolve
    from harness.studies.trial import trial_sets

    classes = resolve("prune+ttfs")
    trial = optuna.trial.FixedTrial({"final_sparsity": 0.5, "t_max": 16, "percentile": 99.0,
                                     "threshold_scale": 1.0})
    defaults = classes[-1].Params()
    sets = trial_sets(trial, classes, {}, {"t_max": "64"})
    # ttfs's space also turns its figures off in trials (fig2, t_max_sweep): not defaults, so written
    want = {"prune.final_sparsity": "0.5", "t_max": "64", "fig2": "false", "t_max_sweep": ""}
    if defaults.percentile != 99.0:
        want["percentile"] = "99.0"
    if defaults.threshold_scale != 1.0:
        want["threshold_scale"] = "1.0"
    assert sets == want


# --- run.py: a whole study with the harness run faked (no training: the cost is the MLflow store) --

def _fake_runs(monkeypatch, metrics, calls):
    from harness import runner

    def run(cfg, **kw):
        calls.append((cfg, kw))
        if isinstance(metrics, BaseException):
            raise metrics
        acc = {"8": 0.25, "16": 0.75, "32": 0.5}[dict(s.split("=") for s in cfg.sets)["timesteps"]]
        return SimpleNamespace(metrics={**metrics, "test/accuracy": acc}, tracking={"run_id": kw.get("run_id")})

    monkeypatch.setattr(runner, "run", run)
    monkeypatch.setattr("harness.tracking.studies.PARENT_SETTLE_S", 0.0)


def test_a_grid_study_runs_each_cell_once_reevaluates_the_best_and_closes_its_parent(monkeypatch, tmp_path):
    """Wrong variants: a grid run past its number of cells, the best trial not re-evaluated on the
    full test set (eval_limit 0) when trials used a slice, a grid trial given a pruner, the parent
    left RUNNING, the summary JSON without its schema or with the password."""
    import json
    import os

    from harness.studies import run_study
    from mlflow.tracking import MlflowClient

    calls = []
    _fake_runs(monkeypatch, {}, calls)
    run = RunConfig.build(method="prune+rate", dataset="digits", progress=False, track=True, eval_limit=50,
                          output_json=str(tmp_path / "s.json"))  # as the CLI builds it
    scfg = StudyConfig(run=run, trials=10, sampler="grid", grid={"timesteps": ["8", "16", "32"]}, progress=False,
                       storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="g", reevaluate=1,
                       output_json=str(tmp_path / "s.json"))
    summary = run_study(scfg)
    trial_calls = [c for c in calls if "run_id" in c[1]]
    # prune trains, but a grid is a map to fill: no pruning callback; no trial writes the study's JSON
    assert len(trial_calls) == 3 and all(c[1]["fit_callbacks"] == [] for c in trial_calls)
    assert all(c[0].output_json is None for c in calls)
    assert sorted(t["params"]["timesteps"] for t in summary.trials) == ["16", "32", "8"]
    (best,) = summary.best
    assert best["params"] == {"timesteps": "16"} and best["values"] == [0.75]
    (again,) = [c for c in calls if "run_id" not in c[1]]
    assert again[0].eval_limit == 0 and again[1]["tags"] == {
        "harness.study": "g", "harness.reevaluated_trial": best["number"],
        "mlflow.runName": f"g/trial-{best['number']:03d}-full-test"}
    assert summary.reevaluated[0]["metrics"] == {"test/accuracy": 0.75}
    parent = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(summary.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_complete"] == 3
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["schema"] == "snn-harness/study/1" and record["study_name"] == "g" and len(record["trials"]) == 3


def test_a_tpe_study_on_accuracy_prunes_trials_of_methods_that_train(monkeypatch, tmp_path):
    """Wrong variant: the pruner's callback not given to a training method's trials (the pruner
    never sees a curve). ``prune`` trains; its trials get one callback each."""
    from harness.studies import run_study

    calls = []
    _fake_runs(monkeypatch, {}, calls)
    run = RunConfig.build(method="prune+rate", dataset="digits", progress=False, track=True,
                          sets=("timesteps=8",))
    summary = run_study(StudyConfig(run=run, trials=2, sampler="random", progress=False,
                                    storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="p", reevaluate=0))
    assert len(summary.trials) == 2 and [len(c[1]["fit_callbacks"]) for c in calls] == [1, 1]
    assert summary.reevaluated == []  # no --eval-limit: the trials saw the full test set


def test_an_interrupted_study_closes_its_parent_killed_and_says_how_to_resume(monkeypatch, tmp_path):
    import os
    import signal

    from harness.errors import Interrupted
    from harness.studies import run_study
    from mlflow.tracking import MlflowClient

    calls = []
    _fake_runs(monkeypatch, Interrupted(signal.SIGTERM), calls)
    run = RunConfig.build(method="rate", dataset="digits", progress=False, track=True)
    scfg = StudyConfig(run=run, trials=2, sampler="grid", grid={"timesteps": ["8", "16"]}, progress=False,
                       storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="i")
    with pytest.raises(Interrupted) as e:
        run_study(scfg)
    assert "run the same command again to resume" in e.value.note
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (parent,) = client.search_runs([x.experiment_id for x in client.search_experiments()],
                                   filter_string="tags.`harness.kind` = 'study'")
    assert parent.info.status == "KILLED" and parent.data.tags["harness.interrupted"] == "SIGTERM"


def test_a_pruned_trial_logs_the_curve_its_callback_reported_and_the_pruners_reason(monkeypatch):
    """Wrong variants: the reported curve replaced by an empty one, the reason lost."""
    from harness.tracking import studies

    logged = []
    monkeypatch.setattr(studies, "log_pruned", lambda tracker, run_id, sets, reason, reported:
                        logged.append((reason, reported)))
    tr, study, calls = _runner(monkeypatch, optuna.TrialPruned("pruned at epoch 3 (val/accuracy 0.1000)"))
    tr.prune = True
    study.optimize(tr, n_trials=1)
    (cb,) = calls[0][1]["fit_callbacks"]
    (reason, reported), = logged
    assert reason == "pruned at epoch 3 (val/accuracy 0.1000)" and reported is cb.reported
    assert study.trials[0].state == TrialState.PRUNED


def test_a_surplus_trial_does_not_stop_the_worker_loop():
    """Wrong variant: SurplusTrial not caught (a worker that raced past the target would crash)."""
    from harness.studies.trial import SurplusTrial

    study = optuna.create_study()
    seen = []

    def objective(t):
        seen.append(t.number)
        if t.number == 0:  # as TrialRunner refuses one (and marks every trial it ends)
            t.set_user_attr("harness.surplus", True)
            t.set_user_attr("harness.ended", True)
            raise SurplusTrial("trial 0: 2 trials have finished")
        return 0.0

    workers.work(study, objective, 1, 1, stale=None, grace_s=60.0, on_trial_end=lambda s, t: None, bar=_Bar())
    assert seen == [0, 1] and study.trials[0].state == TrialState.FAIL


def test_a_worker_waiting_for_one_running_trial_says_trial_in_the_singular(monkeypatch):
    study = optuna.create_study()
    study.optimize(lambda t: 0.0, n_trials=1)
    study.ask({"x": X})  # another worker's trial, running
    bar = _Bar()

    class Stop(Exception):
        pass

    monkeypatch.setattr(workers, "fail_stale", lambda *a: None)
    monkeypatch.setattr(workers.time, "sleep", lambda s: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        workers.work(study, lambda t: 0.0, 2, 1, stale=SimpleNamespace(grace_s=60.0), grace_s=60.0,
                     on_trial_end=lambda s, t: None, bar=bar)
    assert bar.last == "waiting for 1 running trial"


def test_a_stale_check_that_loses_a_race_goes_on_to_the_next_trial(monkeypatch):
    """Wrong variant: ``break`` after a trial another worker finished first (the rest stay RUNNING)."""
    import datetime

    study = optuna.create_study()
    a, b = study.ask({"x": X}), study.ask({"x": X})
    for t in study.get_trials(deepcopy=False):
        t.datetime_start = datetime.datetime.now() - datetime.timedelta(seconds=100)
    real_tell = study.tell

    def tell(number, *args, **kw):
        if number == a.number:
            raise RuntimeError("already finished by another worker")
        return real_tell(number, *args, **kw)

    monkeypatch.setattr(study, "tell", tell)
    seen = []
    recovery.fail_stale(study, 1.0, lambda s, t: seen.append(t.number))
    assert seen == [b.number]


def test_the_study_counts_a_just_died_trial_as_holding_its_place_within_the_window():
    """``study_places`` passes the window on (a trial that failed a moment ago may still be retried)."""
    from harness.studies.placement import study_places

    study = optuna.create_study()
    t = study.ask({"x": X})
    study.tell(t, state=TrialState.FAIL)
    assert study_places(study, None, 3600.0) == (0, 1)
    assert study_places(study, None, 0.0) == (0, 0)
