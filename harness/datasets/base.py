"""The in-memory data set every method consumes, and the deterministic splits."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError

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
    # event data (:mod:`harness.datasets.events`): per split, the event counts binned into frames,
    # [N, T, P, H, W] (``x`` is their mean over T), and what the loader and the binning were
    frames: dict[str, np.ndarray] | None = None
    events: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..inputs import check_images, check_labels

        shapes = set()
        for split in SPLITS:
            if split not in self.x or split not in self.y:
                raise DataError(f"{self.name}: the {split} split is missing")
            xs, ys = self.x[split], self.y[split]
            if not isinstance(xs, np.ndarray) or xs.ndim < 2 or xs.dtype != np.float32:
                raise DataError(f"{self.name}/{split}: inputs must be a float32 array (N, ...) such as (N, C, H, W); "
                                f"got {getattr(xs, 'dtype', type(xs).__name__)} {getattr(xs, 'shape', '')}")
            if not isinstance(ys, np.ndarray) or ys.ndim != 1 or ys.dtype != np.int64:
                raise DataError(f"{self.name}/{split}: labels must be an int64 array (N,); got "
                                f"{getattr(ys, 'dtype', type(ys).__name__)} {getattr(ys, 'shape', '')}")
            if len(xs) != len(ys):
                raise DataError(f"{self.name}/{split}: {len(xs)} inputs but {len(ys)} labels")
            if split in ("train", "test") and not len(ys):  # an empty test split would score 0 and "succeed"
                raise DataError(f"{self.name}: the {split} split is empty")
            check_images(self.name, split, xs)
            shapes.add(xs.shape[1:])
        if len(shapes) > 1:
            raise DataError(f"{self.name}: the splits hold inputs of different shapes {sorted(shapes)}")
        check_labels(self.name, self.y, self.num_classes)
        if self.frames is not None:
            self._check_frames()

    def _check_frames(self) -> None:
        assert self.frames is not None
        for split in SPLITS:
            f = self.frames.get(split)
            if f is None or f.ndim != len(self.input_shape) + 2 or f.shape[0] != len(self.y[split]) \
                    or f.shape[2:] != self.input_shape:
                raise DataError(f"{self.name}/{split}: event frames must be (N, T, *{self.input_shape}) for "
                                f"{len(self.y[split])} samples; got {getattr(f, 'shape', None)}")

    @property
    def is_events(self) -> bool:
        return self.frames is not None

    @property
    def time_bins(self) -> int | None:
        """T, the frames per sample of event data (``None``: static images)."""
        return None if self.frames is None else int(self.frames["train"].shape[1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x["train"].shape[1:])  # type: ignore[return-value]

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.y[s]) for s in SPLITS}

    def describe(self) -> dict:
        out = dict(name=self.name, version=self.version, source=self.source,
                   input_shape=list(self.input_shape), num_classes=self.num_classes,
                   splits=self.split_sizes, kind="events" if self.is_events else "static")
        if self.is_events:
            out["events"] = dict(self.events)
        return out

    def subset(self, split: str, n: int | None) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` samples of a split (the split order is already shuffled and fixed)."""
        xs, ys = self.x[split], self.y[split]
        return (xs, ys) if n is None else (xs[:n], ys[:n])

    def loader(self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0,
               limit: int | None = None, frames: bool = False):
        """A torch ``DataLoader`` over one split (torch imported here, not at module import); with
        ``frames``, event data's frames ``[B, T, P, H, W]`` (float32 event counts) instead of images."""
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        xs, ys = self.subset(split, limit)
        ds: Any
        if frames:
            if self.frames is None:
                raise DataError(f"{self.name} holds static images, not event frames")
            ds = FrameSet(self.frames[split][:len(ys)], ys)
        else:
            ds = TensorDataset(torch.from_numpy(xs), torch.from_numpy(ys))
        gen = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


class FrameSet:
    """A map-style dataset of event frames stored as small integers, handed out as float32."""

    def __init__(self, frames: np.ndarray, labels: np.ndarray):
        self.frames, self.labels = frames, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(self.frames[i].astype(np.float32)), torch.tensor(int(self.labels[i]))

    def __getitems__(self, indices: list[int]):  # one numpy gather per batch (DataLoader's batched fetch)
        import torch

        xs = torch.from_numpy(self.frames[indices].astype(np.float32))
        ys = torch.from_numpy(self.labels[indices])
        return list(zip(xs, ys))


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) with ``fraction`` of every class held out; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_held = round(len(idx) * fraction)
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
    """A short digest of array contents, shapes and types (part of a data set's version string)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


DIGEST_FILE = ".snn-harness-digests.json"


def files_digest(paths: list[Path]) -> str:
    """A short digest of files' contents, memoised beside them (``.snn-harness-digests.json``, keyed
    by name, size and modification time) or, where that directory is read-only, in the harness's
    cache directory: a data directory is hashed once, not at every run."""
    parts = []
    for p in paths:
        p = Path(p).resolve()
        st = p.stat()
        key = [p.name, st.st_size, st.st_mtime_ns]
        memo_files = [p.parent / DIGEST_FILE, _cache_memo(p.parent)]
        digest = None
        for memo in memo_files:
            entry = _read_memo(memo).get(str(p))
            if entry and entry[:3] == key:
                digest = entry[3]
                break
        if digest is None:
            from .download import sha256_file

            digest = sha256_file(p)
            for memo in memo_files:
                if _write_memo(memo, str(p), [*key, digest]):
                    break
        parts.append(digest)
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:12]


def _cache_memo(directory: Path) -> Path:
    root = Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "snn-harness")
    return root / "digests" / (hashlib.sha256(str(directory).encode()).hexdigest()[:16] + ".json")


def _read_memo(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(path: Path, key: str, value: list) -> bool:
    from ..io import write_json_atomic

    data = _read_memo(path)
    data[key] = value
    try:
        write_json_atomic(data, path)
        return True
    except OSError:
        return False


def _as_arrays(split: Any, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(x float32, y int64) from an ``(x, y)`` pair of arrays/tensors or a map-style torch dataset."""
    def to_np(a: Any) -> np.ndarray:
        if hasattr(a, "detach"):
            a = a.detach().cpu().numpy()
        return np.asarray(a)

    if isinstance(split, (tuple, list)) and len(split) == 2 and all(hasattr(v, "shape") for v in split):
        x, y = to_np(split[0]), to_np(split[1])
    elif hasattr(split, "__getitem__") and hasattr(split, "__len__"):
        try:
            items = [split[i] for i in range(len(split))]
            x = np.stack([to_np(it[0]) for it in items]) if items else np.zeros((0,), np.float32)
            y = np.array([int(to_np(it[1])) for it in items], dtype=np.int64)
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise DataError(f"{name}: the {what} split is not a dataset of (input, label) pairs: {exc}") from None
    else:
        raise DataError(f"{name}: the {what} split must be an (x, y) pair or a dataset of (input, label) pairs; "
                        f"got {type(split).__name__}")
    if x.dtype.kind not in "fiub":
        raise DataError(f"{name}: {what} inputs must be numeric, got {x.dtype}")
    from ..inputs import as_float_images, check_images

    x = as_float_images(x, name, what)
    check_images(name, what, x)  # indices as the user's split has them (before any validation split is carved)
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(np.mod(y, 1) == 0)):
        raise DataError(f"{name}: {what} labels must be integers (class indices), got {y.dtype}")
    if x.ndim < 2:
        raise DataError(f"{name}: {what} inputs must have shape (N, ...) with at least 2 dimensions, got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{name}: the {what} split has {len(x)} inputs but {len(y)} labels (shape {y.shape})")
    return x, y.astype(np.int64)


def from_factory_result(result: Any, name: str, spec: Any) -> Dataset:
    """A :class:`Dataset` from what a data-set factory returned: a Dataset, the splits
    ``(train, val, test)`` / ``(train, test)``, or a mapping of them with, optionally, the class
    count and names: ``{"train": (x, y), "test": (x, y), "num_classes": 10, "classes": (...)}``.
    Without a declared class count it is the largest label + 1, checked (:func:`harness.inputs.check_labels`)."""
    from ..inputs import check_labels

    if isinstance(result, Dataset):
        return result
    declared, classes = None, ()
    if isinstance(result, dict):
        unknown = sorted(set(result) - {"train", "val", "test", "num_classes", "classes"})
        if unknown or "train" not in result or "test" not in result:
            raise DataError(f"data set {spec!r}: a mapping needs 'train' and 'test' (and may hold 'val', "
                            f"'num_classes', 'classes'); got keys {sorted(result)}")
        declared, classes = result.get("num_classes"), tuple(result.get("classes") or ())
        if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
            raise DataError(f"data set {spec!r}: num_classes must be an integer, got {declared!r}")
        result = tuple(result[k] for k in ("train", "val", "test") if k in result)
    if not isinstance(result, (tuple, list)) or len(result) not in (2, 3):
        raise DataError(f"data set {spec!r}: the factory must return a harness Dataset or the splits "
                        f"(train, val, test) / (train, test); got {type(result).__name__}")
    labels = ("train", "val", "test") if len(result) == 3 else ("train", "test")
    arrays = {k: _as_arrays(v, str(name), k) for k, v in zip(labels, result)}
    num_classes = check_labels(str(name), {k: a[1] for k, a in arrays.items()}, declared)
    digest = content_digest(*[a for pair in arrays.values() for a in pair])
    version = f"user/{'+'.join(str(len(a[1])) for a in arrays.values())}/sha-{digest}"
    if "val" not in arrays:
        x_tr, y_tr = arrays["train"]
        x_te, y_te = arrays["test"]
        return make_dataset(str(name), version, x_tr, y_tr, x_te, y_te, num_classes=num_classes,
                            source=str(spec), classes=classes)
    x = {k: a[0] for k, a in arrays.items()}
    y = {k: a[1] for k, a in arrays.items()}
    return Dataset(str(name), version, num_classes, x, y, source=str(spec), classes=classes)
