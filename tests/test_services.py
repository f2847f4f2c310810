"""Against real services: a study with three worker processes on PostgreSQL, tracked by an
``mlflow server`` whose store is PostgreSQL and which proxies artifacts; one worker is SIGKILLed in
the middle of a trial.

Nothing is mocked: the workers are ``harness study`` processes, the kill is a real SIGKILL, the
dead trial is found by Optuna's heartbeat and retried by a live worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services import mlflow_server, postgres

TRIALS = 6
HEARTBEAT_S = 2  # a dead trial is failed after 3 missed heartbeats: 6 s


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    root = tmp_path_factory.mktemp("services")
    with postgres(("optuna", "mlflow")) as pg:
        with mlflow_server(f"{pg}/mlflow", root / "artifacts") as url:
            yield dict(optuna=f"{pg}/optuna", mlflow=url, artifacts=root / "artifacts")


def _running_trial_of_a_worker(study, lead_pid: int):
    """A RUNNING trial whose owner is one of the started workers (not the lead), with its pid."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        h, _, pid = str(t.user_attrs.get("harness.owner", "")).rpartition(":")
        if h == host and pid.isdigit() and int(pid) != lead_pid and "mlflow_run_id" in t.user_attrs:
            return t, int(pid)
    return None, None


def _trial_table(study) -> str:
    rows = []
    for t in study.get_trials(deepcopy=False):
        start = t.datetime_start.strftime("%H:%M:%S.%f")[:-3] if t.datetime_start else "-"
        end = t.datetime_complete.strftime("%H:%M:%S.%f")[:-3] if t.datetime_complete else "-"
        rows.append(f"#{t.number} id {t._trial_id} {t.state.name} {start}..{end} "
                    f"owner {t.user_attrs.get('harness.owner')} surplus {t.user_attrs.get('harness.surplus', False)} "
                    f"retry_of {t.system_attrs.get('failed_trial')}")
    return "trials:\n" + "\n".join(rows)


@pytest.mark.slow
def test_three_workers_on_postgresql_survive_a_worker_killed_in_a_trial(services, tmp_path, monkeypatch):
    import optuna
    from harness.runner import run
    from mlflow.tracking import MlflowClient

    from conftest import quick_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", services["mlflow"])
    run(quick_config(method="ann", epochs=2))  # the ANN every trial converts, trained once into the cache
    cmd = [sys.executable, "-m", "harness", "study", "--method", "ttfs", "--dataset", "digits", "--epochs", "2",
           "--lr", "3e-3", "--batch-size", "32", "--trials", str(TRIALS), "--sampler", "random",
           "--storage", services["optuna"], "--study-name", "svc", "--workers", "3",
           "--heartbeat", str(HEARTBEAT_S), "--eval-limit", "150", "--reevaluate", "1", "--no-progress",
           "--set", "fig2=false", "--set", "t_max_sweep=16", "--output-json", str(tmp_path / "study.json")]
    lead = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_trial = killed_pid = None
    try:
        deadline = time.monotonic() + 600
        while killed_trial is None and lead.poll() is None and time.monotonic() < deadline:
            try:
                study = optuna.load_study(study_name="svc", storage=services["optuna"])
                killed_trial, killed_pid = _running_trial_of_a_worker(study, lead.pid)
            except KeyError:  # the study is not created yet
                pass
            if killed_trial is None:
                time.sleep(0.2)
        assert killed_trial is not None, "no worker was seen running a trial"
        os.kill(killed_pid, signal.SIGKILL)
        stdout, stderr = lead.communicate(timeout=900)
    finally:
        if lead.poll() is None:
            lead.kill()
    assert lead.returncode == 0, stderr[-3000:]

    study = optuna.load_study(study_name="svc", storage=services["optuna"])
    trials = [t for t in study.trials if not t.user_attrs.get("harness.surplus")]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    table = _trial_table(study)  # printed with any failure below: which trial did what, and when
    assert len(complete) == TRIALS, table
    dead = study.trials[killed_trial.number]
    assert dead.state.name == "FAIL", table
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state.name == "COMPLETE", table
    assert {k: retries[0].params[k] for k in dead.params} == dead.params
    param_sets = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(param_sets)) == TRIALS  # no parameter set evaluated twice but the retried one
    assert {t.user_attrs["harness.worker"] for t in complete} >= {0}
    assert len({t.user_attrs["harness.sampler_seed"] for t in trials}) == 3  # three workers, three seeds
    assert f"retries: #{retries[0].number} of #{dead.number} (complete)" in stdout

    client = MlflowClient(services["mlflow"])
    parent = client.get_run(study.user_attrs["harness.mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_trial: dict[int, list] = {}
    for r in children:
        if "optuna.trial_number" in r.data.tags and "harness.reevaluated_trial" not in r.data.tags:
            by_trial.setdefault(int(r.data.tags["optuna.trial_number"]), []).append(r)
    for t in complete:
        assert [r.info.status for r in by_trial[t.number]] == ["FINISHED"], t.number
        assert by_trial[t.number][0].info.run_id == t.user_attrs["mlflow_run_id"]
    [dead_run] = by_trial[dead.number]
    assert dead_run.info.status == "FAILED"
    assert "stopped sending heartbeats" in dead_run.data.tags["harness.status_reason"]
    assert dead_run.data.tags["harness.retried_as"] == str(retries[0].number)
    print(f"\nkill-a-worker: {len(complete)} complete, {sum(t.state.name == 'FAIL' for t in trials)} failed, "
          f"trial {dead.number} killed (worker pid {killed_pid}) and retried as {retries[0].number}; runs: "
          + ", ".join(f"#{n} {r[0].info.status}" for n, r in sorted(by_trial.items())))
    # artifacts went through the server: nothing was written beside the workers
    assert any(Path(services["artifacts"]).rglob("result.json")) and not Path("mlartifacts").exists()

    out = tmp_path / "report"
    rep = subprocess.run([sys.executable, "-m", "harness", "report", "--tracking-uri", services["mlflow"],
                          "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert rep.returncode == 0, rep.stderr[-3000:]
    import csv

    with open(out / "runs.csv") as f:
        reported = {row["run_id"] for row in csv.DictReader(f)}
    assert {t.user_attrs["mlflow_run_id"] for t in complete} <= reported
    assert dead_run.info.run_id not in reported


@pytest.mark.slow
def test_a_missing_database_or_a_closed_port_is_refused_before_any_trial_with_the_servers_message(services):
    from harness.errors import StudyError
    from harness.studies import open_storage

    from services import free_port

    base = services["optuna"].rsplit("/", 1)[0]
    with pytest.raises(StudyError) as missing:
        open_storage(f"{base}/nosuchdb")
    assert 'database "nosuchdb" does not exist' in str(missing.value)
    assert str(missing.value).count("does not exist") == 1  # the server's message, once
    with pytest.raises(StudyError) as closed:
        open_storage(f"postgresql://harness:secret@127.0.0.1:{free_port()}/optuna")
    text = str(closed.value)
    assert text.startswith("cannot open Optuna storage 'postgresql://harness:***@127.0.0.1:")
    assert "secret" not in text and "\n" not in text
