"""Fault injection: outputs that cannot be written, full disks, stale and corrupt state.

Every case must end in a clear error (exit 2 from the CLI), before the work where it can be known
beforehand, and never leave a partial file behind. Full disks are real: a small tmpfs, mounted when
the tests run as root (skipped with the reason otherwise)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time

import pytest
from harness.errors import OutputError, ReportError
from harness.runner import run


@contextlib.contextmanager
def tmpfs(path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("full and read-only disks are simulated with tmpfs mounts, which need root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)

@contextlib.contextmanager
def full_disk(path):
    """A 64 KiB tmpfs at ``path``, filled to the last byte."""
    with tmpfs(path, "size=64k") as disk:
        with open(disk / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(bytes(1 << 20))
        yield disk

@pytest.mark.parametrize("where", ["cache_dir", "output_json", "report"])
def test_a_read_only_file_system_fails_before_any_work(quick, tmp_path, where):
    # the probe creates a file: the only sure test of a folder's writability
    from harness.analysis.report import build_report

    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        with pytest.raises(OutputError, match="Read-only file system"):
            if where == "report":
                build_report(out_dir=ro / "rep")
            else:
                run(quick(method="ann", **{where: str(ro / "x.json" if where == "output_json" else ro)}))

def test_a_tracking_store_on_a_read_only_file_system_fails_before_any_work(quick, tmp_path, monkeypatch):
    from harness.errors import TrackingError

    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ro}/m.db")
        with pytest.raises(TrackingError, match="m.db is not writable"):
            run(quick(method="ann", track=True, cache_dir=str(tmp_path / "cache")))
    assert not (tmp_path / "cache").exists()

@pytest.mark.parametrize("what", ["cache_dir_is_a_file", "output_json_is_a_folder", "output_json_in_a_file"])
def test_unwritable_outputs_fail_before_any_work(quick, tmp_path, what):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    sets = {"cache_dir_is_a_file": dict(cache_dir=str(blocker)),
            "output_json_is_a_folder": dict(output_json=str(tmp_path)),
            "output_json_in_a_file": dict(output_json=str(blocker / "r.json"))}[what]
    cache = tmp_path / "cache"
    with pytest.raises(OutputError, match=str(tmp_path)):
        run(quick(method="ann", **{"cache_dir": str(cache), **sets}))
    assert not cache.exists() or not any(cache.rglob("*.pt"))  # nothing was trained

def test_report_folder_that_is_a_file_fails_before_reading(tmp_path):
    from harness.analysis.report import build_report

    out = tmp_path / "report"
    out.write_text("x")
    with pytest.raises(OutputError, match="report folder .* is a file"):
        build_report(out_dir=out)

def test_a_full_disk_under_the_json_keeps_no_partial_file_and_says_what_was_kept(quick, tmp_path):
    with full_disk(tmp_path / "full") as disk:
        with pytest.raises(OutputError, match="r.json failed \\(No space left on device\\); nothing was recorded "
                                               "\\(--no-track\\), the JSON was not"):
            run(quick(method="ann", output_json=str(disk / "r.json")))
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]

def test_a_full_disk_under_the_cache_keeps_no_partial_file(quick, tmp_path):
    with full_disk(tmp_path / "full") as disk:
        with pytest.raises(OutputError, match="writing the ANN cache .*No space left on device.*not kept"):
            run(quick(method="ann", cache_dir=str(disk)))
        leftovers = [p.name for p in disk.rglob("*") if p.is_file() and p.name != "filler"]
        assert leftovers == []

@pytest.mark.slow
def test_a_full_disk_under_the_report_names_the_file(quick, tmp_path):
    from harness.analysis.report import build_report

    run(quick(method="ann", track=True))
    with full_disk(tmp_path / "full") as disk:
        with pytest.raises(ReportError, match="writing the report to .*No space left on device; the MLflow store"):
            build_report(out_dir=disk / "rep")
        assert not [p for p in (disk / "rep").rglob("*") if p.name.endswith(".tmp")]  # no partial file

MARKING_MODEL = '''
import os
import pathlib

import torch
from torch import nn

class Marking(nn.Module):
    """Touches $MARK on its first training step, so a test knows training has started."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        self.flat, self.fc = nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1] * input_shape[2], num_classes)

    def forward(self, x):
        if self.training and not isinstance(x, torch.fx.Proxy):
            pathlib.Path(os.environ["MARK"]).touch()
        return self.fc(self.flat(x))

def factory(input_shape, num_classes):
    return Marking(input_shape, num_classes)
'''

@pytest.mark.slow
@pytest.mark.parametrize("sig,code,name", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "SIGINT")])
def test_a_signal_during_training_exits_128_plus_n_with_one_line_and_keeps_nothing(tmp_path, sig, code, name):
    import sys

    model = tmp_path / "marking.py"
    model.write_text(MARKING_MODEL)
    mark, cache, out = tmp_path / "training-started", tmp_path / "cache", tmp_path / "out" / "r.json"
    env = {**os.environ, "MARK": str(mark), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", "--method", "ann", "--dataset", "digits",
                             "--model", f"{model}:factory", "--epochs", "10000", "--no-progress",
                             "--cache-dir", str(cache), "--output-json", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from mlflow.tracking import MlflowClient

    try:
        # the run can be watched while it trains: RUNNING, its curves growing epoch by epoch (the
        # store is read once training has started: opening it earlier would race the harness's
        # own creation of its tables)
        deadline = time.monotonic() + 300
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mark.exists(), proc.communicate()[1][-3000:] if proc.poll() is not None else "training never started"
        watched_from = time.time()
        client = MlflowClient(f"sqlite:///{tmp_path}/m.db")  # the harness has made the store's tables by now
        curve, run = [], None
        while len(curve) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
            if runs:
                run = runs[0]
                curve = client.get_metric_history(run.info.run_id, "ann/val/accuracy")
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert run is not None and run.info.status == "RUNNING" and [m.step for m in curve][:3] == [0, 1, 2]
        _, stderr = _wait_for_mark_then(proc, mark, sig)
        killed_at = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr[-2000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("harness:")]
    assert lines == [f"harness: interrupted by {name} while training the ANN ({model}:factory on digits); the MLflow "
                     f"run {run.info.run_id} was marked KILLED with what it had logged; nothing half-written was kept "
                     "(the ANN cache and the JSON are written whole or not at all)"]
    assert "Traceback" not in stderr, stderr
    assert not out.exists() and not any(cache.rglob("*.pt")) and not any(cache.rglob("*.tmp"))
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["harness.status_reason"] == f"interrupted by {name}"
    # its duration is the work's: it started before we first saw it and ended when it was stopped
    assert run.info.start_time / 1000 <= watched_from and abs(run.info.end_time / 1000 - killed_at) < 30

@pytest.mark.slow
def test_processes_started_together_on_a_new_store_all_open_it(tmp_path):
    # without the store lock two of three failed in MLflow's schema migration (every time, here)
    import sys
    import time

    script = tmp_path / "open.py"
    script.write_text(
        "import sys, time\n"
        "import mlflow  # imported before the barrier: only the store opening races\n"
        "from harness.tracking import Tracker, TrackingSettings\n"
        "while time.time() < float(sys.argv[2]):\n"
        "    time.sleep(0.001)\n"
        "Tracker(TrackingSettings(sys.argv[1], 'exp', None)).check()\n")
    uri = f"sqlite:///{tmp_path}/new.db"
    start = time.time() + 15  # after every process has imported mlflow
    procs = [subprocess.Popen([sys.executable, str(script), uri, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0, 0], [err[-800:] for _, err in results]
    from mlflow.tracking import MlflowClient

    assert [e.name for e in MlflowClient(uri).search_experiments() if e.name == "exp"] == ["exp"]

@pytest.mark.slow
def test_trials_logging_the_same_test_set_together_all_keep_their_runs(tmp_path, digits):
    # `harness study --n-jobs 2` lost an evaluated trial: two threads inserting the same data set
    # row failed with `UNIQUE constraint failed: datasets.experiment_id, datasets.name, datasets.digest`
    import threading

    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    errors: list[BaseException] = []
    for round_ in range(3):  # each round a new experiment: the data set row is new to it
        tracker = Tracker(TrackingSettings(uri, f"exp{round_}", None))
        tracker.check()
        client = MlflowClient(uri)
        runs = [client.create_run(tracker.experiment_id).info.run_id for _ in range(4)]
        barrier = threading.Barrier(len(runs))

        def log(run_id, tracker=tracker, client=client, barrier=barrier):
            barrier.wait()
            try:
                tracker._log_dataset(client, run_id, digits)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=log, args=(r,)) for r in runs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for r in runs:
            assert [d.dataset.name for d in client.get_run(r).inputs.dataset_inputs] == [f"{digits.name}:{digits.version}"]

def _wait_for_mark_then(proc, mark, sig, timeout=300):
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mark.exists(), f"never reached the point to interrupt: {proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
    proc.send_signal(getattr(signal, sig))
    return proc.communicate(timeout=120)

SLOW_LOGGING = '''
import os, pathlib, sys, time
from mlflow.tracking import MlflowClient

_log_batch = MlflowClient.log_batch

def slow_log_batch(self, run_id, metrics=(), *args, **kwargs):
    if any(m.key == "test/accuracy" for m in metrics):  # the run's results are being written
        pathlib.Path(os.environ["MARK"]).touch()
        time.sleep(120)
    return _log_batch(self, run_id, metrics, *args, **kwargs)

MlflowClient.log_batch = slow_log_batch
from harness.cli import main

sys.exit(main(sys.argv[1:]))
'''

def _signal_while_logging(tmp_path, sig: str):
    """``harness run`` (ann on digits) whose MLflow logging stalls; ``sig`` is sent once the run's
    results are being written. Returns (process, stderr, store URI)."""
    import sys

    wrapper = tmp_path / "slow_logging.py"
    wrapper.write_text(SLOW_LOGGING)
    mark, uri = tmp_path / "logging-started", f"sqlite:///{tmp_path}/m.db"
    env = {**os.environ, "MARK": str(mark), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, str(wrapper), "run", "--method", "ann", "--dataset", "digits",
                             "--epochs", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = _wait_for_mark_then(proc, mark, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, stderr, uri

@pytest.mark.slow
def test_a_signal_while_the_mlflow_run_is_written_marks_the_run_killed(tmp_path):
    proc, stderr, uri = _signal_while_logging(tmp_path, "SIGTERM")
    assert proc.returncode == 143, stderr[-2000:]
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL)]
    assert [(r.info.lifecycle_stage, r.info.status) for r in runs] == [("active", "KILLED")]
    assert [ln for ln in stderr.splitlines() if ln.startswith("harness:")] == [
        f"harness: interrupted by SIGTERM while logging the MLflow run; the MLflow run {runs[0].info.run_id} was "
        "marked KILLED with what it had logged; nothing half-written was kept (the ANN cache and the JSON are "
        "written whole or not at all)"]
    assert "test/accuracy" not in runs[0].data.metrics  # its results were not written: KILLED says so

@pytest.mark.slow
def test_a_study_interrupted_in_a_trial_closes_its_runs_and_requeues_the_trial(tmp_path):
    import sys

    import optuna
    from mlflow.tracking import MlflowClient

    model = tmp_path / "marking.py"
    model.write_text(MARKING_MODEL)
    mark, uri, storage = tmp_path / "training-started", f"sqlite:///{tmp_path}/m.db", f"sqlite:///{tmp_path}/o.db"
    env = {**os.environ, "MARK": str(mark), "MLFLOW_TRACKING_URI": uri}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "study", "--method", "ttfs", "--dataset", "digits",
                             "--model", f"{model}:factory", "--epochs", "10000", "--no-progress", "--trials", "2",
                             "--sampler", "random", "--storage", storage, "--study-name", "s"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = _wait_for_mark_then(proc, mark, "SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    assert [ln for ln in stderr.splitlines() if ln.startswith("harness:")] == [
        f"harness: interrupted by SIGTERM while training the ANN ({model}:factory on digits); trial 0's MLflow run "
        "was marked KILLED and its parameters re-queued; run the same command again to resume the study"]
    assert "Traceback" not in stderr
    study = optuna.load_study(study_name="s", storage=storage)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "WAITING"] and study.trials[1].system_attrs["fixed_params"] == study.trials[0].params
    client = MlflowClient(uri)
    runs = {r.data.tags.get("harness.kind", "trial"): r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])}
    assert runs["study"].info.status == "KILLED" and runs["study"].data.tags["harness.interrupted"] == "SIGTERM"
    assert runs["trial"].info.status == "KILLED"
    assert runs["trial"].data.tags["mlflow.parentRunId"] == runs["study"].info.run_id

@pytest.mark.slow
def test_a_run_killed_while_it_was_written_is_marked_failed_by_the_next_harness_process(tmp_path):
    # SIGKILL cannot be caught: the half-written run stays RUNNING until a later process sees that
    # its writer (host:pid in the tag harness.owner) is gone
    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    proc, _, uri = _signal_while_logging(tmp_path, "SIGKILL")
    client = MlflowClient(uri)
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "RUNNING"
    Tracker(TrackingSettings(uri, "snn-harness", None)).check()  # what every run and study does first
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["harness.status_reason"] == (f"orphaned: its process ({socket.gethostname()}, pid "
                                                      f"{proc.pid}) ended without closing it")


def test_a_signal_during_a_streamed_mlflow_write_is_held_until_the_write_ends():
    """Ctrl-C inside one of the short MLflow writes made while training (curves per epoch) would cut
    SQLAlchemy's session half-way (its pool then logs a traceback): the CLI's handler holds it
    until the write ends, then raises it."""
    import signal

    from harness.errors import Interrupted, on_signal, uninterrupted

    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        steps = []
        with pytest.raises(Interrupted) as held:
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGINT)  # delivered here, in the main thread
                steps.append("the write went on to its end")
            steps.append("never")
        assert steps == ["the write went on to its end"] and held.value.exit_code == 130
        with pytest.raises(Interrupted):  # outside such a block: at once
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, previous)
