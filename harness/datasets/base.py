"""The in-memory data set every method consumes, and the deterministic splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Images as float32 in [0, 1] with shape (N, C, H, W); labels as int64.

    ``val`` is carved from the training data (never from test) for calibration and searches.
    ``version`` changes whenever the content or the split changes, so cached ANNs and results
    only ever compare like with like.
    """

    name: str
    version: str
    num_classes: int
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    source: str = ""
    classes: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for split in SPLITS:
            xs, ys = self.x[split], self.y[split]
            if xs.ndim != 4 or xs.dtype != np.float32:
                raise ValueError(f"{self.name}/{split}: images must be float32 (N, C, H, W)")
            if len(xs) != len(ys):
                raise ValueError(f"{self.name}/{split}: {len(xs)} images but {len(ys)} labels")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])  # type: ignore[return-value]

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: int(len(self.y[s])) for s in SPLITS}

    def describe(self) -> dict:
        return dict(name=self.name, version=self.version, source=self.source,
                    input_shape=list(self.input_shape), num_classes=self.num_classes,
                    splits=self.split_sizes)

    def subset(self, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` samples of a split (the split order is already shuffled and fixed)."""
        xs, ys = self.x[split], self.y[split]
        return (xs, ys) if n is None else (xs[:n], ys[:n])

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               limit: int | None = None):
        """A torch ``DataLoader`` over one split (torch imported here, not at module import)."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        xs, ys = self.subset(split, limit)
        ds = TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    keep_a, held_a = np.concatenate(keep), np.concatenate(held)
    rng.shuffle(keep_a)
    rng.shuffle(held_a)
    return keep_a, held_a


def make_dataset(name: str, version: str, x_train: np.ndarray, y_train: np.ndarray,
                 x_test: np.ndarray, y_test: np.ndarray, *, num_classes: int, source: str,
                 val_fraction: float = 0.1, seed: int = 0, classes: tuple[str, ...] = ()) -> Dataset:
    """Carve a stratified validation split from train and wrap everything in a :class:`Dataset`."""
    keep, val = stratified_split(y_train, val_fraction, seed)
    x = {"train": x_train[keep], "val": x_train[val], "test": x_test}
    y = {"train": y_train[keep].astype(np.int64), "val": y_train[val].astype(np.int64),
         "test": y_test.astype(np.int64)}
    return Dataset(name, version, num_classes, x, y, source=source, classes=classes)


def content_digest(*arrays: np.ndarray) -> str:
    """A short digest of array contents (part of a data set's version string)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]
