import os

import pytest


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Every test gets its own cache, data root, working directory and MLflow store."""
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(scope="session")
def digits():
    from harness.datasets import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def mnist5k():
    from harness.datasets import load_dataset

    return load_dataset("mnist-5k")


def quick_config(**kw):
    """A RunConfig for fast tests: digits, a few sub-second epochs, no progress bars, no tracking."""
    from harness.config import RunConfig

    base = dict(dataset="digits", epochs=4, lr=3e-3, batch_size=32, progress=False, track=False)
    base.update(kw)
    return RunConfig.build(**base)


@pytest.fixture
def quick():
    return quick_config


def pytest_configure(config):
    os.environ.setdefault("PYTHONHASHSEED", "0")
