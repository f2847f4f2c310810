import pickle

import pytest
import torch
from harness.errors import TrackingError
from harness.io import save_torch_atomic as save_atomic
from harness.runner import run


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


def test_corrupt_cache_is_named(quick, tmp_path):
    res = run(quick(method="ann"))
    path = res.provenance["ann_cache_file"]
    with open(path, "wb") as f:
        pickle.dump("garbage", f)
    from harness.errors import DataError

    with pytest.raises(DataError, match="cache file .* is corrupt"):
        run(quick(method="ann"))


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
