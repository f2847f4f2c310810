"""harness study: objectives, grids, storage, MLflow parent/child runs, resume after a kill, pruning."""

import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
from harness.errors import ConfigError, HarnessError, StudyError, UnknownNameError
from harness.studies import (
    Objective,
    StudyConfig,
    check_metric_key,
    default_storage,
    open_storage,
    parse_grid,
    run_study,
)


def test_objective_parsing():
    assert Objective.parse("test/accuracy:max") == Objective("test/accuracy", "maximize")
    assert Objective.parse("energy_nJ/loihi:min").direction == "minimize"
    with pytest.raises(ConfigError, match="METRIC:max"):
        Objective.parse("test/accuracy")
    with pytest.raises(UnknownNameError, match="max"):
        Objective.parse("test/accuracy:up")


def test_objectives_are_checked_against_the_metric_schema():
    from harness.methods import resolve

    ttfs, rate = resolve("ttfs"), resolve("rate")
    check_metric_key("spikes_per_neuron", ttfs)
    check_metric_key("layer/conv1/synops", ttfs)
    check_metric_key("layer/relu1/u_th", ttfs)  # ttfs's own per-layer metric
    check_metric_key("energy_ratio/loihi", rate)
    with pytest.raises(UnknownNameError, match="unknown metric in --objective 'layer/relu1/u_th'"):
        check_metric_key("layer/relu1/u_th", rate)  # rate writes no thresholds
    with pytest.raises(UnknownNameError, match="Did you mean 'spikes_per_neuron'"):
        check_metric_key("spike_per_neuron", ttfs)
    with pytest.raises(UnknownNameError, match="unknown metric in --objective 'latency_steps'"):
        check_metric_key("latency_steps", ttfs)  # no run writes it: refused before the first trial
    with pytest.raises(ConfigError, match="is a curve"):
        check_metric_key("ttfs/test/accuracy_vs_t_max", ttfs)
    with pytest.raises(UnknownNameError, match="unknown energy model in objective 'energy_nJ/lohi' 'lohi'"):
        check_metric_key("energy_nJ/lohi", ttfs)


def _scfg(quick, **kw):
    run_kw = kw.pop("run", {})
    base = dict(method="rate", model="cnn7", track=True, sets=("timesteps=8",), **run_kw)
    return StudyConfig(run=quick(**base), progress=False, **kw)


def test_bad_grid_values_and_storage_are_refused_before_any_trial(quick, tmp_path):
    from harness.methods import resolve

    classes = resolve("rate")
    with pytest.raises(ConfigError, match="synapse='fast': expected float"):
        _scfg(quick, sampler="grid", grid=parse_grid(["synapse=0.01,fast"])).validate(classes)
    with pytest.raises(ConfigError, match="out of range"):
        _scfg(quick, sampler="grid", grid=parse_grid(["scale_firing_rates=1,-2"])).validate(classes)
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid(["synapse"])
    with pytest.raises(StudyError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/optuna.db")
    with pytest.raises(StudyError, match="cannot open Optuna storage"):
        open_storage("nosuchdb://user@host/db")
    assert default_storage(f"sqlite:///{tmp_path}/mlruns.db") == f"sqlite:///{tmp_path}/optuna.db"


@pytest.mark.slow
def test_grid_study_logs_parent_and_children_and_resumes(quick, tmp_path):
    from mlflow.tracking import MlflowClient

    grid = parse_grid(["synapse=none,0.005", "scale_firing_rates=1,4"])
    scfg = _scfg(quick, trials=10, sampler="grid", grid=grid, storage=f"sqlite:///{tmp_path}/s.db",
                 study_name="g")
    summary = run_study(scfg)
    assert [t["state"] for t in summary.trials] == ["COMPLETE"] * 4  # capped at the grid's size
    combos = {(t["params"]["synapse"], t["params"]["scale_firing_rates"]) for t in summary.trials}
    assert combos == {("none", "1"), ("none", "4"), ("0.005", "1"), ("0.005", "4")}
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    children = client.search_runs(
        [client.get_experiment_by_name("snn-harness").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary.parent_run_id}'")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == [0, 1, 2, 3]
    assert all(r.data.params["method.timesteps"] == "8" for r in children)
    assert {r.data.params["method.synapse"] for r in children} == {"None", "0.005"}
    assert client.get_run(summary.parent_run_id).info.status == "FINISHED"
    again = run_study(scfg)  # same command again: nothing left to do, nothing repeated
    assert len(again.trials) == 4 and again.parent_run_id == summary.parent_run_id


def _backdate(db, table: str, column: str, trial_id: int) -> None:
    """Move a trial's heartbeat or start an hour into the past, as if its worker had died then."""
    import sqlite3

    with sqlite3.connect(db) as con:
        con.execute(f"UPDATE {table} SET {column} = datetime({column}, '-1 hour') WHERE trial_id = ?", (trial_id,))


@pytest.mark.slow
def test_trials_of_dead_workers_are_retried_once_and_their_runs_marked_failed(quick, tmp_path):
    """A worker on any host that stops sending heartbeats: its trial is failed, retried once with
    its parameters, and its MLflow run marked FAILED naming the retry. A trial that never sent one
    (its process died right after creating it) is recovered the same way once it is old."""
    import optuna
    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    db = tmp_path / "s.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=1)
    study = optuna.create_study(study_name="k", storage=storage, direction="maximize")
    dist = {"scale_firing_rates": optuna.distributions.FloatDistribution(1, 1000, log=True)}
    dead = study.ask(dist)  # its worker died on another host: its pid means nothing here
    dead.set_user_attr("harness.owner", "other-host:1")
    storage.record_heartbeat(dead._trial_id)
    _backdate(db, "trial_heartbeats", "heartbeat", dead._trial_id)
    tracker = Tracker(TrackingSettings.load())
    tracker.check()
    dead_run = tracker.start_run("k/trial-000", {"optuna.trial_number": 0})
    dead.set_user_attr("mlflow_run_id", dead_run)
    never = study.ask(dist)  # created, then its process died before the first heartbeat
    _backdate(db, "trials", "datetime_start", never._trial_id)
    scfg = _scfg(quick, trials=3, sampler="random", storage=f"sqlite:///{db}", study_name="k", heartbeat=1,
                 run=dict(eval_limit=100))
    summary = run_study(scfg)
    assert sorted(summary.recovered) == [0, 1]
    by_number = {t["number"]: t for t in summary.trials}
    assert by_number[0]["state"] == by_number[1]["state"] == "FAIL"
    retries = {t["retry_of"]: t for t in summary.trials if t["retry_of"] is not None}
    assert sorted(retries) == [0, 1] and all(t["state"] == "COMPLETE" for t in retries.values())
    for n in (0, 1):  # retried with its parameters (the rest sampled afresh)
        dead_params = by_number[n]["params"]
        assert dead_params and {k: retries[n]["params"][k] for k in dead_params} == dead_params
    assert [t["state"] for t in summary.trials].count("COMPLETE") == 3
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(dead_run)
    assert run.info.status == "FAILED"
    assert "stopped sending heartbeats" in run.data.tags["harness.status_reason"]
    assert run.data.tags["harness.retried_as"] == str(retries[0]["number"])
    # evaluated on 100 test images; the best trial re-run on the full test set (359 digits)
    assert len(summary.reevaluated) == 1 and summary.reevaluated[0]["trial"] == summary.best[0]["number"]


@pytest.mark.slow
def test_multi_objective_study_has_a_pareto_front(quick, tmp_path):
    scfg = StudyConfig(run=quick(method="ttfs", track=True, eval_limit=120), trials=3, sampler="nsga2",
                       objectives=(Objective("test/accuracy", "maximize"), Objective("spikes_per_neuron", "minimize")),
                       storage=f"journal:{tmp_path}/journal.log", study_name="m", progress=False, reevaluate=0)
    summary = run_study(scfg)
    assert sum(t["state"] == "COMPLETE" for t in summary.trials) == 3
    assert summary.best and all(len(t["values"]) == 2 for t in summary.best)
    import optuna
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="m", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(tmp_path / "journal.log"))))
    assert study.metric_names == ["test/accuracy", "spikes_per_neuron"]  # named in optuna-dashboard
    assert (tmp_path / "journal.log").stat().st_size > 0


def test_median_pruner_prunes_a_trial_for_its_validation_accuracy(quick):
    """Real Optuna, real training: a trial that learns nothing is pruned after its first epoch once
    a good trial has set the median."""
    import optuna
    from harness.runner import run
    from harness.studies import pruning_callback

    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    sets = ("epochs=3", "timesteps=2")
    good = study.ask()
    cb = pruning_callback(good)
    res = run(quick(method="surrogate", model="dnn5", baseline=False, sets=(*sets, "lr=3e-3")), fit_callbacks=[cb])
    study.tell(good, res.metrics["test/accuracy"])
    assert len(cb.reported) == 3 and cb.reported[2] > 0.5
    from optuna_integration import PyTorchLightningPruningCallback

    assert isinstance(cb, PyTorchLightningPruningCallback)  # optuna-integration's own, on lightning.pytorch
    bad = study.ask()
    cb = pruning_callback(bad)
    with pytest.raises(optuna.TrialPruned, match=r"pruned at epoch 0 \(val/accuracy 0\."):
        run(quick(method="surrogate", model="dnn5", baseline=False, sets=(*sets, "lr=1e-9")), fit_callbacks=[cb])
    assert list(cb.reported) == [0]


@pytest.mark.slow
def test_diverging_trial_is_pruned(quick, tmp_path, monkeypatch):
    import harness.runner
    from harness.errors import DivergedError

    def diverge(cfg, **kw):
        raise DivergedError("train loss became nan at epoch 0")

    monkeypatch.setattr(harness.runner, "run", diverge)
    summary = run_study(StudyConfig(run=quick(method="surrogate", track=True), trials=2, sampler="random",
                                    storage=f"sqlite:///{tmp_path}/d.db", progress=False))
    assert [t["state"] for t in summary.trials] == ["PRUNED", "PRUNED"]


@pytest.mark.slow
def test_a_resumed_study_does_not_replay_its_sampler(quick, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import harness.runner

    monkeypatch.setattr(harness.runner, "run", lambda cfg, **kw: SimpleNamespace(
        metrics={"test/accuracy": 0.5}, tracking=None))
    scfg = _scfg(quick, trials=3, sampler="random", storage=f"sqlite:///{tmp_path}/r.db", study_name="r")
    run_study(scfg)
    summary = run_study(replace(scfg, trials=6))  # the same study, resumed by a new call
    params = [tuple(sorted(t["params"].items())) for t in summary.trials]
    assert len(params) == 6 and len(set(params)) == 6
    grid = parse_grid(["synapse=0.001,0.005,0.01", "scale_firing_rates=1,10,100"])
    gcfg = _scfg(quick, trials=2, sampler="grid", grid=grid, storage=f"sqlite:///{tmp_path}/g.db", study_name="g")
    run_study(gcfg)
    summary = run_study(replace(gcfg, trials=9))  # the rest of the grid, each cell once
    cells = {(t["params"]["synapse"], t["params"]["scale_firing_rates"]) for t in summary.trials}
    assert len(summary.trials) == 9 and len(cells) == 9


@pytest.mark.slow
def test_training_trials_get_a_pruning_callback_except_in_a_grid(quick, tmp_path, monkeypatch):
    import harness.runner

    seen = []

    def record(cfg, fit_callbacks=(), **kw):
        seen.append(len(fit_callbacks))
        raise HarnessError("stop after recording")

    monkeypatch.setattr(harness.runner, "run", record)
    for sampler, grid in (("random", {}), ("grid", parse_grid(["width=0.5,1"]))):
        with pytest.raises(HarnessError, match="stop after recording"):
            run_study(StudyConfig(run=quick(method="surrogate", track=True), trials=1, sampler=sampler,
                                  grid=grid, storage=f"sqlite:///{tmp_path}/{sampler}.db", progress=False))
    assert seen == [1, 0]


def test_cli_study_errors_are_clear(tmp_path, capsys):
    from harness.cli import main
    from harness.config import RunConfig

    assert main(["study", "--method", "rate", "--objective", "acuracy:max", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric in --objective 'acuracy'" in err and "Traceback" not in err
    assert main(["study", "--method", "rate", "--trials", "0"]) == 2
    assert "--trials 0: valid range is [1, inf)" in capsys.readouterr().err
    assert main(["study", "--method", "rate", "--grid", "synapse=0.1", "--sampler", "tpe"]) == 2
    assert "--grid is for --sampler grid (got --sampler tpe)" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"--sampler grid needs --grid KEY=V1,V2,..."):
        run_study(StudyConfig(run=RunConfig.build(method="rate", dataset="digits"), sampler="grid", progress=False))


def test_stale_trial_recovery_touches_only_dead_owners_on_this_host():
    import socket

    import optuna
    from harness.studies import recover_stale_trials
    from optuna.trial import TrialState

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    study = optuna.create_study()
    host = socket.gethostname()
    owners = {"dead": f"{host}:{dead}", "alive": f"{host}:{os.getpid()}", "elsewhere": f"other-host:{dead}",
              "none": None}
    trials = {}
    for key, owner in owners.items():
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        if owner is not None:
            t.set_user_attr("harness.owner", owner)
        trials[key] = t
    finished = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # its process ended normally
    finished.set_user_attr("harness.owner", f"{host}:{dead}")
    study.tell(finished, 0.5)
    assert recover_stale_trials(study) == [trials["dead"].number]
    states = {k: study.trials[t.number].state for k, t in trials.items()}
    assert states == {"dead": TrialState.FAIL, "alive": TrialState.RUNNING, "elsewhere": TrialState.RUNNING,
                      "none": TrialState.RUNNING}
    assert study.trials[finished.number].state == TrialState.COMPLETE  # finished trials are left alone
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # the re-queued trial runs first
    retry = study.get_trials(states=(TrialState.COMPLETE,))[-1]
    assert retry.params == trials["dead"].params and retry.user_attrs["harness.retry_of"] == trials["dead"].number


def test_sampler_names_make_the_samplers_they_say():
    import optuna
    from harness.studies import make_sampler

    assert isinstance(make_sampler("tpe", 0, {}), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("nsga2", 0, {}), optuna.samplers.NSGAIISampler)
    assert isinstance(make_sampler("random", 0, {}), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("grid", 0, {"x": [1, 2]}), optuna.samplers.GridSampler)
    a = [make_sampler("random", 7, {}).sample_independent(None, None, "x", optuna.distributions.FloatDistribution(0, 1))
         for _ in range(2)]
    assert a[0] == a[1]  # the seed is passed on: the same seed draws the same value


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2"])
def test_samplers_are_seeded(name):
    """The same --seed proposes the same parameters; another seed proposes others."""
    import optuna
    from harness.studies import make_sampler

    def proposals(seed):
        study = optuna.create_study(sampler=make_sampler(name, seed, {}))
        out = []
        for _ in range(12):  # past TPE's random start-up trials
            trial = study.ask()
            x = trial.suggest_float("x", 0.0, 1.0)
            study.tell(trial, x)
            out.append(x)
        return out

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert proposals(3) == proposals(3)
    assert proposals(3) != proposals(4)


def _fake_run(calls=None):
    from types import SimpleNamespace

    def run(cfg, **kw):
        if calls is not None:
            calls.append(kw.get("run_id"))
        return SimpleNamespace(metrics={"test/accuracy": 0.5}, tracking=None)
    return run


@pytest.mark.slow
def test_workers_started_together_get_distinct_seeds_recorded_in_their_trials(quick, tmp_path, monkeypatch):
    import harness.runner

    monkeypatch.setattr(harness.runner, "run", _fake_run())

    def first(index, name):
        s = run_study(_scfg(quick, trials=1, sampler="random", storage=f"sqlite:///{tmp_path}/{name}.db",
                            study_name=name, worker_index=index))
        return s.trials[0]

    a, b, again = first(0, "a"), first(1, "b"), first(0, "c")
    assert a["params"] != b["params"]  # two workers on a fresh study: different first questions
    assert a["params"] == again["params"]  # one worker: reproducible
    assert (a["sampler_seed"], b["sampler_seed"]) == (0, 7919) and (a["worker"], b["worker"]) == (0, 1)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert first(None, "d")["worker"] == 3  # a SLURM array task is a worker by itself


# ---- placement: pure functions of (trials, now), no threads, no sleeps ---------------------------

NOW = __import__("datetime").datetime(2026, 1, 1, 12, 0, 0)


def _t(number, state, *, user=None, system=None, ended_s_ago=None):
    """A stored trial as Optuna gives it (a FrozenTrial), in ``state``."""
    import datetime

    import optuna

    st = getattr(optuna.trial.TrialState, state)
    done = None if ended_s_ago is None else NOW - datetime.timedelta(seconds=ended_s_ago)
    return optuna.trial.FrozenTrial(number=number, state=st, value=0.5 if state == "COMPLETE" else None,
                                    datetime_start=NOW - datetime.timedelta(hours=1), datetime_complete=done,
                                    params={}, distributions={}, user_attrs=dict(user or {}),
                                    system_attrs=dict(system or {}), intermediate_values={}, trial_id=number)


def test_finished_trials_are_complete_and_pruned_ones_only():
    from harness.studies import places

    trials = [_t(0, "COMPLETE"), _t(1, "PRUNED"), _t(2, "FAIL", user={"harness.ended": True}, ended_s_ago=1),
              _t(3, "COMPLETE")]
    assert places(trials, None, 30, NOW) == (3, 0)  # a failure the harness ended holds no place


def test_running_and_queued_trials_hold_places_and_surplus_ones_do_not():
    from harness.studies import places

    trials = [_t(0, "RUNNING"), _t(1, "RUNNING", user={"harness.surplus": True}), _t(2, "WAITING"),
              _t(3, "WAITING", system={"fixed_params": {}})]
    assert places(trials, None, 30, NOW) == (0, 3)
    assert places(trials, None, 30, NOW, queued=False) == (0, 1)  # deciding to start: Optuna pops the queue


def test_a_trial_that_just_died_holds_its_place_until_its_retry_exists_or_its_window_ends():
    """Optuna's heartbeat fails a stale trial first and queues its retry after: in between, the dead
    trial keeps its place, so no new trial takes it (the retry would then never run)."""
    from harness.studies import places

    dead = _t(1, "FAIL", ended_s_ago=29.0)  # failed by the heartbeat, not by the harness: no harness.ended
    assert places([_t(0, "COMPLETE"), dead], None, 30, NOW) == (1, 1)
    assert places([_t(0, "COMPLETE"), _t(1, "FAIL", ended_s_ago=30.0)], None, 30, NOW) == (1, 0)  # window over
    # what Optuna's RetryHeartbeatStaleTrialCallback queues
    retry = _t(2, "WAITING", system={"failed_trial": 1, "retry_history": [1], "fixed_params": {}})
    assert places([dead, retry], None, 30, NOW) == (0, 1)  # the retry holds the place now, not both
    assert places([dead, _t(2, "RUNNING", user={"harness.retry_of_interrupted": 1})], None, 30, NOW) == (0, 1)
    a_retry = _t(3, "FAIL", system={"failed_trial": 0}, ended_s_ago=1)  # a retry is not retried again
    assert places([a_retry], None, 30, NOW) == (0, 0)
    assert places([_t(4, "FAIL", ended_s_ago=None)], None, 30, NOW) == (0, 0)  # never completed: no time


def test_queued_trials_come_before_new_ones_and_then_by_number():
    from harness.studies import place_key, places

    retry, requeued, new5, new2 = (_t(7, "WAITING", system={"failed_trial": 3}),
                                   _t(8, "WAITING", system={"fixed_params": {"x": 1}}), _t(5, "RUNNING"),
                                   _t(2, "RUNNING"))
    assert sorted([new5, retry, new2, requeued], key=place_key) == [retry, requeued, new2, new5]
    trials = [retry, requeued, new5, new2]
    assert places(trials, place_key(new5), 30, NOW) == (0, 3)  # every other trial is ahead of a new #5
    assert places(trials, place_key(retry), 30, NOW) == (0, 0)  # nothing is ahead of the first retry
    dead = _t(1, "FAIL", ended_s_ago=0.5)  # a dead trial's coming retry counts as queued, by its number
    assert places([dead, retry], place_key(retry), 30, NOW) == (0, 1)


def test_a_worker_waits_for_running_trials_of_others_and_starts_none_past_the_target(monkeypatch):
    """2 wanted, 1 finished, 1 running elsewhere: the worker waits (with heartbeats, the running one
    may die and come back as a retry to run), starts nothing, and leaves once 2 have finished;
    without heartbeats nothing would tell it, so it leaves at once."""
    from harness.studies import workers

    counts = iter([(1, 1), (1, 1), (2, 0)])  # (finished, holding a place) as the study changes
    monkeypatch.setattr(workers, "study_places", lambda *a, **k: next(counts))
    monkeypatch.setattr(workers, "fail_stale", lambda *a: None)
    naps: list[float] = []
    monkeypatch.setattr(workers.time, "sleep", naps.append)

    class Study:
        def optimize(self, *a, **k):
            pytest.fail("a trial was started past the target")

    bar = type("Bar", (), {"set_postfix_str": lambda self, s: None})()
    stale = type("Stale", (), {"grace_s": 3})()
    workers.work(Study(), None, 2, 1, stale=stale, grace_s=3, on_trial_end=None, bar=bar)
    assert naps == [workers.POLL_S, workers.POLL_S]  # waited twice, then saw the target reached
    counts = iter([(1, 1)])
    workers.work(Study(), None, 2, 1, stale=None, grace_s=3, on_trial_end=None, bar=bar)  # no heartbeat: leaves
    assert naps == [workers.POLL_S, workers.POLL_S]


def test_a_worker_starts_only_as_many_trials_as_places_are_free(monkeypatch):
    from harness.studies import workers

    counts = iter([(1, 1), (4, 0)])
    monkeypatch.setattr(workers, "study_places", lambda *a, **k: next(counts))
    started: list[int] = []

    class Study:
        def optimize(self, objective, n_trials, n_jobs, **k):
            started.append(n_trials)

    workers.work(Study(), None, 4, 8, stale=None, grace_s=3, on_trial_end=None, bar=None)
    assert started == [2]  # 4 wanted, 1 finished, 1 running: 2 more, even with 8 jobs allowed


@pytest.mark.slow
def test_a_worker_that_asks_another_search_space_is_refused_with_both_named(quick, tmp_path, monkeypatch):
    import harness.runner

    monkeypatch.setattr(harness.runner, "run", _fake_run())
    scfg = _scfg(quick, trials=1, sampler="random", storage=f"sqlite:///{tmp_path}/x.db", study_name="x")
    run_study(scfg)
    other = replace(scfg, run=quick(method="rate", model="cnn7", track=True, sets=("timesteps=16",)))
    with pytest.raises(StudyError, match=r"exists with search space .*'timesteps': '8'.* this command asks for .*"
                                         r"'timesteps': '16'"):
        run_study(other)
    with pytest.raises(StudyError, match=r"exists with objectives \['test/accuracy:max'\]; this command asks for "
                                         r"\['spikes_per_neuron:max'\]"):
        run_study(replace(scfg, objectives=(Objective("spikes_per_neuron", "maximize"),)))


@pytest.mark.slow
def test_runs_left_running_by_a_killed_process_are_marked_failed_on_resume(quick, tmp_path, monkeypatch):
    import harness.runner
    import optuna
    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(harness.runner, "run", _fake_run())
    scfg = _scfg(quick, trials=1, sampler="random", storage=f"sqlite:///{tmp_path}/o.db", study_name="o")
    parent = run_study(scfg).parent_run_id
    study = optuna.load_study(study_name="o", storage=f"sqlite:///{tmp_path}/o.db")
    t = study.ask()
    study.tell(t, state=optuna.trial.TrialState.FAIL)  # what Optuna knows of a trial whose process died
    tracker = Tracker(TrackingSettings.load())
    orphan = tracker.start_run("o/trial-001", {"optuna.trial_number": t.number}, parent)
    run_study(replace(scfg, trials=2))
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(orphan)
    assert run.info.status == "FAILED"
    assert run.data.tags["harness.status_reason"].startswith("orphaned: the process writing it ended without "
                                                             "closing it (Optuna records trial 1 as FAIL)")


def test_a_worker_runs_the_same_study_command_without_workers_output_or_progress():
    from harness.cli import STUDY_PARSER, build_parser
    from harness.studies import worker_argv

    parser = build_parser()
    args = parser.parse_args(["study", "--method", "ttfs", "-s", "t_max=16", "--set", "fig2=false", "--workers", "3",
                              "-o", "s.json", "--trials", "5", "--no-baseline", "--storage", "sqlite:///s.db",
                              "--objective", "test/accuracy:max", "--objective", "spikes_per_neuron:min",
                              "--heartbeat", "4"])
    argv = worker_argv(STUDY_PARSER[0], args, 7)
    assert argv[:4] == [sys.executable, "-m", "harness", "study"]
    child = parser.parse_args(argv[3:])
    for key in ("method", "sets", "trials", "baseline", "storage", "objectives", "heartbeat"):
        assert getattr(child, key) == getattr(args, key), key
    assert (child.workers, child.worker_index, child.output_json, child.progress) == (1, 7, None, False)


@pytest.mark.slow
def test_the_study_summary_prints_sampled_parameters_rounded_without_pinned_settings(monkeypatch, capsys):
    import harness.runner
    from harness.cli import main

    monkeypatch.setattr(harness.runner, "run", _fake_run())
    assert main(["study", "--method", "ttfs", "--dataset", "digits", "--trials", "1", "--sampler", "random",
                 "--no-progress"]) == 0
    best = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("#0")]
    assert len(best) == 1
    assert re.fullmatch(r"\s+#0\s+\[0\.5\]\s+percentile=\d+\.\d{1,4} t_max=\d+ threshold_scale=\d\.\d{1,4}", best[0]), best


@pytest.mark.slow
def test_a_resumed_study_is_no_longer_tagged_as_interrupted(quick, tmp_path, monkeypatch):
    """An interrupted study's parent run is KILLED with ``harness.interrupted``; resumed and finished,
    it is FINISHED and says it resumed, not that it is interrupted."""
    import harness.runner
    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    monkeypatch.setattr(harness.runner, "run", _fake_run())
    scfg = _scfg(quick, trials=1, sampler="random", storage=f"sqlite:///{tmp_path}/r.db", study_name="r")
    parent = run_study(scfg).parent_run_id
    Tracker(TrackingSettings.load()).end_run(parent, "KILLED", "interrupted by SIGTERM; run the same command again "
                                             "to resume", **{"harness.interrupted": "SIGTERM"})  # what Ctrl-C leaves
    assert run_study(replace(scfg, trials=2)).parent_run_id == parent
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(parent)
    assert run.info.status == "FINISHED"
    assert "harness.interrupted" not in run.data.tags and "harness.status_reason" not in run.data.tags
    assert run.data.tags["harness.resumed_after"] == "SIGTERM"


@pytest.mark.parametrize("field,value,ok", [
    ("trials", 1, True), ("trials", 0, False), ("n_jobs", 1, True), ("n_jobs", 0, False),
    ("workers", 1, True), ("workers", 0, False), ("heartbeat", 1, True), ("heartbeat", 0, False),
    ("reevaluate", 0, True), ("reevaluate", -1, False), ("worker_index", 0, True), ("worker_index", -1, False),
])
def test_study_settings_on_their_lower_bounds(quick, field, value, ok):
    """Each setting's smallest valid value passes and the one below it is refused, naming the
    range. Wrong variants: ``<=`` for ``<`` (refusing 1 trial, or 0 re-evaluations)."""
    from harness.methods import resolve

    scfg = _scfg(quick, **{field: value})
    if ok:
        scfg.validate(resolve("rate"))
    else:
        low = 0 if field in ("reevaluate", "worker_index") else 1
        with pytest.raises(ConfigError, match=rf"{value}: valid range is \[{low}, inf\)"):
            scfg.validate(resolve("rate"))


@pytest.mark.parametrize("cores,workers,threads", [(2, 1, None), (2, 2, "1"), (8, 3, "2"), (2, 4, "1")])
def test_workers_share_the_cores_for_their_threads(monkeypatch, cores, workers, threads):
    """N workers on C cores get ⌊C/N⌋ threads each, at least 1; one worker keeps torch's default;
    a user's OMP_NUM_THREADS is left alone."""
    import torch
    from harness.studies import workers as w

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # the user's shell may set them
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(w.os, "sched_getaffinity", lambda pid: set(range(cores)))
    before = torch.get_num_threads()
    try:
        env = w.share_cores(workers)
        assert env.get("OMP_NUM_THREADS") == threads and env.get("MKL_NUM_THREADS") == threads
        monkeypatch.setenv("OMP_NUM_THREADS", "7")
        assert w.share_cores(workers)["OMP_NUM_THREADS"] == "7"
    finally:
        torch.set_num_threads(before)
