"""A study's MLflow runs (harness/tracking/studies.py) on one SQLite store, with Optuna's
in-memory storage: the parent run (created, found again, resumed, kept once when workers race),
orphaned trial runs, pruned trials' runs and the parent's summary. Each test names the wrong
variant it fails on."""

import json
from types import SimpleNamespace

import optuna
import pytest
from harness.config import RunConfig
from harness.studies import Objective, StudyConfig
from harness.tracking import Tracker, TrackingSettings, studies
from optuna.trial import TrialState

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    t = Tracker(TrackingSettings(f"sqlite:///{tmp_path_factory.mktemp('ml') / 'mlruns.db'}", "studies", None))
    t.check()
    return t


@pytest.fixture
def client(tracker):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracker.settings.tracking_uri)


@pytest.fixture(autouse=True)
def _no_settle(monkeypatch):
    monkeypatch.setattr(studies, "PARENT_SETTLE_S", 0.0)


def _scfg(objectives=("test/accuracy:max",), grid=None, sets=()):
    run = RunConfig.build(method="rate", dataset="digits", sets=sets, progress=False, track=False)
    return StudyConfig(run=run, progress=False, objectives=[Objective.parse(o) for o in objectives],
                       sampler="grid" if grid else "tpe", grid=grid or {})


def test_a_new_study_gets_one_parent_run_with_its_settings_and_the_password_hidden(tracker, client):
    """Fails if the run is not recorded in the study (every worker and resume would make another),
    a setting is missing, or the storage password reaches MLflow."""
    study = optuna.create_study()
    scfg = _scfg(grid={"timesteps": ["8", "16"]}, sets=("timesteps=8",))
    pid = studies.parent_run(tracker, study, "s1", scfg, "cnn7", "postgresql://u:hunter2@db/s")
    assert study.user_attrs["harness.mlflow_parent_run_id"] == pid
    run = client.get_run(pid)
    assert run.info.status == "RUNNING"
    assert run.data.tags["harness.kind"] == "study" and run.data.tags["mlflow.runName"] == "study:s1"
    p = run.data.params
    assert (p["method"], p["dataset"], p["model"], p["sampler"]) == ("rate", "digits", "cnn7", "grid")
    assert p["objectives"] == "test/accuracy:max"
    assert json.loads(p["grid"]) == {"timesteps": ["8", "16"]} and p["fixed_sets"] == "timesteps=8"
    assert "hunter2" not in p["storage"] and "***" in p["storage"]
    assert studies.parent_run(tracker, study, "s1", scfg, "cnn7", "memory") == pid  # found again


def test_without_fixed_sets_or_grid_the_parent_says_so(tracker, client):
    pid = studies.parent_run(tracker, optuna.create_study(), "s2", _scfg(), "cnn7", "sqlite:///o.db")
    p = client.get_run(pid).data.params
    assert p["fixed_sets"] == "-" and p["grid"] == "-"


def test_when_workers_race_the_study_keeps_the_last_parent_and_the_others_are_deleted(tracker, client, monkeypatch):
    """Fails if a worker keeps its own parent run although the study recorded another's (trials
    would nest under two parents), or leaves its duplicate behind."""
    study = optuna.create_study()
    other = client.create_run(tracker.experiment_id).info.run_id

    def another_worker_writes(_s):  # during the settling wait another worker records its parent run
        study.set_user_attr("harness.mlflow_parent_run_id", other)

    monkeypatch.setattr(studies.time, "sleep", another_worker_writes)
    mine = []
    real_create = type(client).create_run

    def create_run(self, *a, **kw):
        run = real_create(self, *a, **kw)
        mine.append(run.info.run_id)
        return run

    monkeypatch.setattr(type(client), "create_run", create_run)
    assert studies.parent_run(tracker, study, "s3", _scfg(), "cnn7", "memory") == other
    assert client.get_run(mine[0]).info.lifecycle_stage == "deleted"


def test_a_resumed_parent_runs_again_without_its_interrupted_tags(tracker, client):
    """Fails if an interrupted parent stays KILLED on resume, keeps saying it was interrupted, or
    loses when it was."""
    study = optuna.create_study()
    pid = studies.parent_run(tracker, study, "s4", _scfg(), "cnn7", "memory")
    tracker.end_run(pid, "KILLED", "interrupted by SIGINT", **{"harness.interrupted": "SIGINT"})
    assert studies.parent_run(tracker, study, "s4", _scfg(), "cnn7", "memory") == pid
    run = client.get_run(pid)
    assert run.info.status == "RUNNING"
    assert "harness.interrupted" not in run.data.tags and "harness.status_reason" not in run.data.tags
    assert run.data.tags["harness.resumed_after"] == "SIGINT"


def test_a_deleted_parent_is_replaced(tracker, client):
    study = optuna.create_study()
    pid = studies.parent_run(tracker, study, "s5", _scfg(), "cnn7", "memory")
    client.delete_run(pid)
    new = studies.parent_run(tracker, study, "s5", _scfg(), "cnn7", "memory")
    assert study.user_attrs["harness.mlflow_parent_run_id"] == new


def _child(tracker, client, parent, number):
    tags = {"mlflow.parentRunId": parent}
    if number is not None:
        tags["optuna.trial_number"] = str(number)
    return client.create_run(tracker.experiment_id, tags=tags).info.run_id


def test_orphaned_trial_runs_are_failed_unless_their_trial_still_runs(tracker, client):
    """Fails if a run whose trial still runs is closed, a run of a finished trial is left RUNNING,
    or a run without a trial number crashes the tidy-up."""
    study = optuna.create_study()
    running = study.ask()
    done = study.ask()
    study.tell(done, 1.0)
    parent = client.create_run(tracker.experiment_id).info.run_id
    alive = _child(tracker, client, parent, running.number)
    orphan = _child(tracker, client, parent, done.number)
    stray = _child(tracker, client, parent, None)
    closed = _child(tracker, client, parent, 99)
    client.set_terminated(closed, "FINISHED")
    studies.close_orphaned_runs(tracker, study, parent)
    status = {r: client.get_run(r).info.status for r in (alive, orphan, stray, closed)}
    assert status == {alive: "RUNNING", orphan: "FAILED", stray: "FAILED", closed: "FINISHED"}
    assert f"records trial {done.number} as COMPLETE" in client.get_run(orphan).data.tags["harness.status_reason"]
    assert "no Optuna trial matches it" in client.get_run(stray).data.tags["harness.status_reason"]


def test_a_pruned_trials_run_keeps_its_parameters_and_curve_and_ends_killed(tracker, client):
    """Fails if the reported curve loses its epochs (steps), the parameters lose their method
    prefix, or the run is closed in another state."""
    rid = client.create_run(tracker.experiment_id).info.run_id
    studies.log_pruned(tracker, rid, {"timesteps": "8"}, "pruned at epoch 2", {1: 0.5, 2: 0.25})
    run = client.get_run(rid)
    assert run.info.status == "KILLED" and run.data.params == {"method.timesteps": "8"}
    assert run.data.tags["optuna.trial_state"] == "PRUNED" and run.data.tags["harness.pruned_reason"] == "pruned at epoch 2"
    curve = sorted((m.step, m.value) for m in client.get_metric_history(rid, "val/accuracy"))
    assert curve == [(1, 0.5), (2, 0.25)]


def _finished_study():
    study = optuna.create_study(direction="maximize")
    for v in (0.25, 0.75):
        study.optimize(lambda t, v=v: v, n_trials=1)
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    retry = optuna.trial.create_trial(state=TrialState.COMPLETE, value=0.5,
                                      system_attrs={"failed_trial": failed.number})
    study.add_trial(retry)
    surplus = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, user_attrs={"harness.surplus": True})
    study.add_trial(surplus)
    return study


def test_the_parents_summary_counts_trials_by_state_without_surplus_ones(tracker, client):
    """Fails if a surplus trial is counted, a state is counted under another, retries are not
    counted, or the best trial's number or value is off."""
    study = _finished_study()
    pid = client.create_run(tracker.experiment_id).info.run_id
    best = [study.trials[1]]  # 0.75: the best trial that counts (the surplus one does not)
    studies.finish_parent(tracker, pid, study, best, _scfg(), SimpleNamespace(wall_s=12.5))
    run = client.get_run(pid)
    m = run.data.metrics
    assert run.info.status == "FINISHED"
    assert (m["trials_complete"], m["trials_pruned"], m["trials_failed"], m["trials_retried"]) == (3, 1, 1, 1)
    assert m["best_trial"] == 1 and m["best/test/accuracy"] == 0.75 and m["wall_s"] == 12.5
    assert "pareto_size" not in m


def test_a_multi_objective_summary_gives_the_pareto_size_and_no_best(tracker, client):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for v in ((0.5, 2.0), (0.75, 3.0), (0.25, 4.0)):
        study.optimize(lambda t, v=v: v, n_trials=1)
    pid = client.create_run(tracker.experiment_id).info.run_id
    scfg = _scfg(objectives=("test/accuracy:max", "energy_nJ/loihi:min"))
    studies.finish_parent(tracker, pid, study, study.best_trials, scfg, SimpleNamespace(wall_s=1.0))
    m = client.get_run(pid).data.metrics
    assert m["pareto_size"] == 2 and "best_trial" not in m and not any(k.startswith("best/") for k in m)


def test_a_study_without_a_completed_trial_says_best_trial_minus_one(tracker, client):
    study = optuna.create_study()
    pid = client.create_run(tracker.experiment_id).info.run_id
    studies.finish_parent(tracker, pid, study, [], _scfg(), SimpleNamespace(wall_s=0.0))
    m = client.get_run(pid).data.metrics
    assert m["best_trial"] == -1 and m["trials_complete"] == 0


def test_a_pruned_trials_record_that_cannot_be_written_is_a_warning_and_the_run_still_ends(tracker, caplog,
                                                                                          monkeypatch):
    """The pruning matters more than its record: a failing MLflow write is logged, the run closed."""
    import logging

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def fail(self, *a, **kw):
        raise MlflowException("store is read-only")

    monkeypatch.setattr(MlflowClient, "log_batch", fail)
    ended = []
    monkeypatch.setattr(tracker, "end_run", lambda run_id, status, reason, **tags: ended.append((run_id, status)))
    with caplog.at_level(logging.WARNING, logger="harness.tracking.studies"):
        studies.log_pruned(tracker, "r9", {}, "pruned", {})
    assert "the MLflow record of pruned run r9 was not written: store is read-only" in caplog.text
    assert ended == [("r9", "KILLED")]


def test_the_report_reads_a_runs_method_from_its_tag_when_it_logged_no_parameter(tracker, client):
    """Runs logged before the method was a parameter (or by hand) name it in a tag. Wrong variant:
    the fallback reading another tag (those runs would have no method and leave every table)."""
    from harness.analysis.runs import load_runs

    rid = client.create_run(tracker.experiment_id, tags={"method": "ttfs"}).info.run_id
    client.log_param(rid, "model", "cnn7")
    client.log_metric(rid, "test/accuracy", 0.5)
    client.set_terminated(rid, "FINISHED")
    df = load_runs(tracker.settings.tracking_uri, "studies").df
    assert df.set_index("run_id").loc[rid, "method"] == "ttfs"
