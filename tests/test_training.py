import os
import pickle
import re

import pytest
import torch
from harness.errors import TrackingError
from harness.io import save_torch_atomic as save_atomic
from harness.runner import run


@pytest.mark.slow
def test_ann_cache_reused(quick, tmp_path):
    first = run(quick(method="ann", seed=1))
    assert first.provenance["ann_cache"] == "miss"
    second = run(quick(method="ann", seed=1))
    assert second.provenance["ann_cache"] == "hit"
    assert second.provenance["ann_cache_file"] == first.provenance["ann_cache_file"]
    assert second.metrics["test/accuracy"] == first.metrics["test/accuracy"]
    other = run(quick(method="ann", seed=2))
    assert other.provenance["ann_cache"] == "miss"
    assert len(first.step_metrics["ann/train/loss"]) == len(first.step_metrics["ann/val/accuracy"]) == 4


class _Interrupting:
    def __reduce__(self):
        raise KeyboardInterrupt


def test_interrupted_save_leaves_nothing(tmp_path):
    target = tmp_path / "ann" / "model.pt"
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"w": torch.zeros(3), "x": _Interrupting()}, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    save_atomic({"w": torch.ones(2)}, target)
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]


def test_unwritable_store_fails_before_training(quick, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(TrackingError, match="not writable"):
        run(quick(method="ann", track=True))
    assert not (tmp_path / "cache").exists()  # nothing was trained or cached


def test_a_store_that_is_a_directory_or_an_unreachable_server_fails_at_once(quick, tmp_path, monkeypatch):
    import socket

    (tmp_path / "store.db").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store.db")
    with pytest.raises(TrackingError, match="store.db is a directory"):
        run(quick(method="ann", track=True))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(TrackingError, match=f"server http://127.0.0.1:{port} is unreachable"):
        run(quick(method="ann", track=True))
    # a database store: MLflow's own engine retried it for minutes
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"postgresql://u:pw@127.0.0.1:{port}/mlflow")
    with pytest.raises(TrackingError, match=f"MLflow store postgresql://127.0.0.1:{port} is unreachable"):
        run(quick(method="ann", track=True))
    assert not (tmp_path / "cache").exists()


def test_a_store_that_refuses_the_run_says_nothing_was_recorded(quick, monkeypatch):
    from mlflow.tracking import MlflowClient

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(MlflowClient, "create_run", full)
    with pytest.raises(TrackingError, match="creating the MLflow run .* No space left on device.*no run was recorded"):
        run(quick(method="ann", track=True))


def test_corrupt_cache_is_named(quick, tmp_path):
    res = run(quick(method="ann"))
    path = res.provenance["ann_cache_file"]
    with open(path, "wb") as f:
        pickle.dump("garbage", f)
    from harness.errors import DataError

    with pytest.raises(DataError, match="cache file .* is corrupt"):
        run(quick(method="ann"))


def test_cache_entries_that_are_valid_torch_but_not_the_harnesss_are_named(quick):
    import torch
    from harness.errors import DataError

    res = run(quick(method="ann", epochs=1))
    path = res.provenance["ann_cache_file"]
    good = torch.load(path, weights_only=True)
    variants = [
        ({"state_dict": {"bogus": torch.zeros(1)}}, "no entry for the model's 'conv1.weight'"),
        ({"state_dict": {k: 1 for k in good["state_dict"]}}, "'conv1.weight' is a int, not a tensor"),
        ({"state_dict": good["state_dict"], "history": [1, 2]}, "not a harness cache entry \\(its training history"),
        ({"state_dict": good["state_dict"], "history": {"train/loss": "x"}}, "its training history"),
        (torch.zeros(3), "not a harness cache entry \\(no state_dict\\)"),
    ]
    for blob, needle in variants:
        torch.save(blob, path)
        with pytest.raises(DataError, match=f"ANN cache file .*{needle}.*delete it to retrain"):
            run(quick(method="ann", epochs=1))


def test_mlflow_yaml_errors_name_the_file(tmp_path, monkeypatch):
    from harness.tracking import TrackingSettings

    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    (tmp_path / "mlflow.yaml").write_text("tracking_uri: sqlite:///x.db\nexperiment: e1\n")
    s = TrackingSettings.load()
    assert (s.tracking_uri, s.experiment) == ("sqlite:///x.db", "e1")
    assert TrackingSettings.load(experiment="e2").experiment == "e2"
    (tmp_path / "mlflow.yaml").write_text("[unclosed")
    with pytest.raises(TrackingError, match="mlflow.yaml is not a readable YAML file"):
        TrackingSettings.load()


def test_temp_folders_of_dead_runs_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import tempfile

    from harness.io import private_tempdir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"harness-run-{dead_pid}-abc"
    (stale / "sub").mkdir(parents=True)
    live = tmp_path / f"harness-run-{os.getppid()}-xyz"  # the parent of this process is alive
    live.mkdir()
    other = tmp_path / "harness-run-notapid-1"
    other.mkdir()
    with private_tempdir("run") as d:
        assert os.path.basename(d).startswith(f"harness-run-{os.getpid()}-")
        assert not stale.exists() and live.exists() and other.exists()


def test_run_names_tell_runs_with_different_settings_apart():
    # rate runs at T = 8, 16, 24 were all named rate-cnn7-digits-s0
    from types import SimpleNamespace

    from harness.tracking import run_name

    def result(sets, timesteps, epochs=15):
        return SimpleNamespace(method="rate", model="cnn7", dataset={"name": "digits"}, seed=0,
                               params={"timesteps": timesteps, "neuron": "if"},
                               config={"sets": sets, "train": {"epochs": epochs}, "weights": None})

    names = [run_name(result((f"timesteps={t}",), t)) for t in (8, 16, 24)]
    assert len(set(names)) == 3 and names[1].startswith("rate-cnn7-digits-s0 timesteps=16 [")
    assert run_name(result((), 64)) != run_name(result((), 64, epochs=20))  # a training setting differs
    assert run_name(result((), 64)) == run_name(result((), 64))  # a repeat keeps its name
    assert re.fullmatch(r"rate-cnn7-digits-s0 \[[0-9a-f]{6}\]", run_name(result((), 64)))


def test_the_experiment_opens_on_its_runs_table_in_the_mlflow_ui(tmp_path):
    """MLflow 3's UI lands on the page an experiment's kind names (untagged: the GenAI overview)."""
    from harness.tracking import Tracker, TrackingSettings
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/k.db"
    Tracker(TrackingSettings(uri, "fresh", None)).check()
    client = MlflowClient(uri)
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == "custom_model_development"
    older = client.create_experiment("older")  # made before the harness tagged its experiments
    Tracker(TrackingSettings(uri, "older", None)).check()
    assert client.get_experiment(older).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_network_a_method_refuses_leaves_no_mlflow_run(quick):
    """The run opens when the work starts: after the methods have checked the network."""
    from harness.errors import ConfigError
    from harness.runner import run
    from mlflow.tracking import MlflowClient

    with pytest.raises(ConfigError, match="AvgPool2d"):
        run(quick(method="sharpen", model="cnn7", track=True))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])] == []
