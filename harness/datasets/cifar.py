"""CIFAR-10 from the standard python-pickle batches (``cifar-10-batches-py``).

Pickle can run code, so batches are read with an unpickler that only admits the numpy
classes the official files contain; anything else is refused as a corrupt or foreign file.
"""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset, files_digest, make_dataset
from .download import Remote, default_data_root, fetch

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
ARCHIVE = Remote("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                 "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce")
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch: images uint8 (N, 3, 32, 32) and labels int64 (N,)."""
    try:
        with open(path, "rb") as f:
            d = _SafeUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable CIFAR-10 batch ({exc})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise DataError(f"{path}: a CIFAR-10 batch must be a dict with b'data' and b'labels'")
    try:
        data = np.asarray(d[b"data"])
        raw_labels = np.asarray(d[b"labels"])
        if raw_labels.dtype.kind not in "iu":  # strings, floats, None, nested objects
            raise TypeError(f"labels of type {raw_labels.dtype}")
        labels = raw_labels.astype(np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: labels must be a list of integers 0..9 ({exc})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: data has shape {data.shape} and type {data.dtype}, "
                        "expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _find_batches(candidates: list[Path]) -> Path | None:
    for d in candidates:
        for sub in (d, d / "cifar-10-batches-py"):
            if all((sub / n).is_file() for n in (*TRAIN_BATCHES, TEST_BATCH)):
                return sub
    return None


def _extract(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and m.name.startswith("cifar-10-batches-py/") and ".." not in m.name]
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract ({exc})") from None


def load_cifar10(data_dir: str | None = None, download: bool = True) -> Dataset:
    root = default_data_root() / "cifar10"
    candidates = ([Path(data_dir), Path(data_dir) / "cifar10"] if data_dir else []) + [root]
    found = _find_batches(candidates)
    why = ""
    if found is None:
        archives = [c / ARCHIVE.filename for c in candidates if (c / ARCHIVE.filename).is_file()]
        try:
            if archives:
                _extract(archives[0], archives[0].parent)
            elif download:
                _extract(fetch(ARCHIVE, root), root)
        except DataError as exc:
            why = f" {exc}."
        found = _find_batches(candidates)
    if found is None:
        raise DataError(
            f"cifar10: batches {', '.join(TRAIN_BATCHES)}, {TEST_BATCH} not found. Looked in: "
            f"{', '.join(str(c) for c in candidates)} (and their cifar-10-batches-py/).{why} "
            f"Provide them with --data-dir DIR (the extracted {ARCHIVE.filename})."
        )
    parts = [read_batch(found / n) for n in TRAIN_BATCHES]
    x_tr = np.concatenate([p[0] for p in parts])
    y_tr = np.concatenate([p[1] for p in parts])
    x_te, y_te = read_batch(found / TEST_BATCH)
    digest = files_digest([found / n for n in (*TRAIN_BATCHES, TEST_BATCH)])
    version = f"cifar10-py/{len(y_tr)}+{len(y_te)}/split-v1/sha-{digest}"
    to_f = lambda a: a.astype(np.float32) / 255.0
    return make_dataset("cifar10", version, to_f(x_tr), y_tr, to_f(x_te), y_te, num_classes=10,
                        source=str(found), classes=CLASSES)
