"""Event data: recordings of ``(x, y, t, p)`` events, checked, binned into frames by tonic, cached.

An event data set is a :class:`~harness.datasets.base.Dataset` whose ``frames`` hold, per split,
the event counts of every sample binned into ``T`` frames, ``[N, T, P, H, W]`` (P polarities,
tonic's ``ToFrame`` layout), and whose ``x`` holds their mean over the bins: the input an ANN is
trained on, and the mean input current a spiking network receives when it is fed one frame per
step. Methods that take events read the frames (:meth:`Dataset.loader` with ``frames=True``).

* **events**: tonic's structured arrays (fields ``x``, ``y``, ``t`` in microseconds, ``p``); each
  sample is checked before binning — coordinates inside the sensor, polarities below its channel
  count, no negative timestamp — and a bad one is refused with its index and file.
* **binning** (:class:`Binning`): tonic's ``ToFrame`` with ``n_time_bins`` (every sample spans
  ``T`` equal bins from 0 to its last event, or the recording's fixed duration) or ``time_window``
  (bins of fixed length; shorter samples end in empty frames), after tonic's ``Denoise`` and
  ``Downsample`` when asked. A binning whose frames are mostly empty is warned about.
* **cache**: the frames of a (data set version, binning) pair are written once, atomically, to
  ``<cache>/frames/`` (``$HARNESS_CACHE_DIR`` or ``~/.cache/snn-harness``), so a second run does
  not re-bin; a cache file that cannot be read is named and rebuilt.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])
# events as read from a file, and as tonic's transforms take them
WIDE_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
FRAMES_FORMAT = "frames-v1"
EMPTY_WARN = 0.5  # warn when more than this fraction of all frames hold no event


@dataclass(frozen=True)
class Binning:
    """How events become frames (CLI: ``--time-bins``, ``--time-window``, ``--denoise``, ``--downsample``)."""

    time_bins: int | None = None
    time_window_ms: float | None = None
    denoise_ms: float | None = None
    downsample: float | None = None

    def __post_init__(self) -> None:
        if self.time_bins is not None and self.time_window_ms is not None:
            raise ConfigError("--time-bins and --time-window both given: choose one way to bin the events")
        if self.time_bins is not None and not 1 <= self.time_bins <= 10_000:
            raise ConfigError(f"--time-bins {self.time_bins}: valid range 1 … 10000")
        for name, v in (("--time-window", self.time_window_ms), ("--denoise", self.denoise_ms)):
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} {v}: must be a positive number of milliseconds")
        if self.downsample is not None and not (math.isfinite(self.downsample) and 0 < self.downsample <= 1):
            raise ConfigError(f"--downsample {self.downsample}: valid range (0, 1] (0.25: 128×128 to 32×32)")

    @property
    def given(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def with_default_bins(self, bins: int) -> "Binning":
        if self.time_bins is None and self.time_window_ms is None:
            return Binning(bins, None, self.denoise_ms, self.downsample)
        return self

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.describe().items()))


@dataclass
class Recordings:
    """One split's samples: events concatenated, ``offsets[i]:offsets[i + 1]`` the i-th sample's."""

    events: np.ndarray
    offsets: np.ndarray
    labels: np.ndarray
    files: list[str] | None = None  # a file per sample, to name a bad one

    def __len__(self) -> int:
        return len(self.labels)

    def sample(self, i: int) -> np.ndarray:
        return self.events[self.offsets[i]:self.offsets[i + 1]]

    def where(self, i: int) -> str:
        return self.files[i] if self.files else f"sample {i}"

    @classmethod
    def from_list(cls, samples: list[np.ndarray], labels: list[int] | np.ndarray,
                  files: list[str] | None = None) -> "Recordings":
        lengths = np.array([len(s) for s in samples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        for i, s in enumerate(samples):  # values the compact fields cannot hold would wrap into the sensor
            for f in ("x", "y", "p"):
                info = np.iinfo(EVENT_DTYPE[f])
                if f in (s.dtype.names or ()) and len(s) and (s[f].min() < info.min or s[f].max() > info.max):
                    bad = int(np.flatnonzero((s[f] < info.min) | (s[f] > info.max))[0])
                    where = files[i] if files else f"sample {i}"
                    raise DataError(f"{where} (sample {i}): event {bad} has {f} {int(s[f][bad])}, outside any sensor")
        events = np.concatenate([as_events(s) for s in samples]) if samples else np.zeros(0, EVENT_DTYPE)
        return cls(events, offsets, np.asarray(labels, dtype=np.int64), files)


def as_events(a: np.ndarray) -> np.ndarray:
    """A structured array of tonic's fields (``x``, ``y`` optional for 1-D sensors, ``t``, ``p``) as
    :data:`EVENT_DTYPE`."""
    out = np.zeros(len(a), EVENT_DTYPE)
    for f in ("x", "y", "t", "p"):
        if a.dtype.names and f in a.dtype.names:
            out[f] = a[f]
    return out


def check_sample(events: np.ndarray, sensor_size: tuple[int, int, int], where: str, index: int) -> None:
    """Refuse events outside the sensor (``sensor_size`` = tonic's (W, H, P)) or before time 0."""
    if not len(events):
        return
    w, h, p = sensor_size
    for field_, size, what in (("x", w, "x"), ("y", h, "y"), ("p", p, "polarity")):
        v = events[field_]
        bad = (v < 0) | (v >= size)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where} (sample {index}): event {i} has {what} {int(v[i])}, outside the sensor's "
                            f"0 … {size - 1} ({int(bad.sum())} such events); the file is corrupt or of another sensor")
    neg = events["t"] < 0
    if neg.any():
        i = int(np.flatnonzero(neg)[0])
        raise DataError(f"{where} (sample {index}): event {i} has the negative timestamp {int(events['t'][i])} µs")


def bin_recordings(rec: Recordings, sensor_size: tuple[int, int, int], binning: Binning,
                   duration_us: float | None = None, bins: int | None = None,
                   progress: str = "") -> np.ndarray:
    """Frames ``[N, T, P, H, W]`` of event counts (uint8, or uint16 where a bin holds more than 255
    events of one pixel). ``bins`` fixes ``T`` for ``time_window`` binning (pad or crop)."""
    import tonic.transforms as tt
    from tqdm.auto import tqdm

    from ..io import tqdm_disable

    size = sensor_size
    pre = []
    if binning.denoise_ms is not None:
        pre.append(tt.Denoise(filter_time=binning.denoise_ms * 1000.0))
    if binning.downsample is not None:
        pre.append(tt.Downsample(spatial_factor=binning.downsample))
        size = (max(1, int(size[0] * binning.downsample)), max(1, int(size[1] * binning.downsample)), size[2])
    frames: list[np.ndarray] = []
    for i in tqdm(range(len(rec)), desc=f"binning {progress}", disable=tqdm_disable(bool(progress)), leave=False):
        ev = rec.sample(i)
        check_sample(ev, sensor_size, rec.where(i), i)
        ev = ev.astype(WIDE_DTYPE)
        ev = ev[np.argsort(ev["t"], kind="stable")]  # tonic's slicers search the timestamps
        for t in pre:
            ev = t(ev)
        frames.append(_to_frames(ev, size, binning, duration_us, bins))
    if bins is None:
        bins = max((len(f) for f in frames), default=1)
    out = np.zeros((len(frames), bins, size[2], size[1], size[0]), dtype=np.uint16)
    for i, f in enumerate(frames):
        n = min(len(f), bins)
        if f.size and f.max() > np.iinfo(np.uint16).max:
            raise DataError(f"{rec.where(i)} (sample {i}): {int(f.max())} events in one bin of one pixel; "
                            "use more time bins")
        out[i, :n] = f[:n]
    return out.astype(np.uint8) if out.size and out.max() <= 255 else out


def _to_frames(ev: np.ndarray, size: tuple[int, int, int], binning: Binning, duration_us: float | None,
               bins: int | None) -> np.ndarray:
    from tonic.functional import to_frame_numpy

    if binning.time_window_ms is not None:
        end = duration_us if duration_us is not None else (float(ev["t"].max()) + 1 if len(ev) else 1.0)
        window = binning.time_window_ms * 1000.0
        n = max(1, math.ceil(end / window))
        if not len(ev):
            return np.zeros((n, size[2], size[1], size[0]), np.int64)
        return np.asarray(to_frame_numpy(ev, size, time_window=window, include_incomplete=True, start_time=0,
                                         end_time=n * window))
    T = binning.time_bins or bins or 1
    if not len(ev):
        return np.zeros((T, size[2], size[1], size[0]), np.int64)
    # tonic's n_time_bins: T bins of ⌊(last − first) / T⌋ µs from the first event
    return np.asarray(to_frame_numpy(ev, size, n_time_bins=T))


def warn_empty(name: str, frames: np.ndarray) -> float:
    """The fraction of frames without an event (warned about above :data:`EMPTY_WARN`)."""
    if not frames.size:
        return 0.0
    empty = float((frames.reshape(frames.shape[0], frames.shape[1], -1).max(-1) == 0).mean())
    if empty > EMPTY_WARN:
        log.warning("%s: %.0f %% of the frames hold no event: the binning is finer than the recordings "
                    "(fewer --time-bins, or a longer --time-window)", name, 100 * empty)
    return empty


def frames_cache(name: str, version: str, binning: Binning) -> Path:
    root = Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "snn-harness")
    key = hashlib.sha256(f"{FRAMES_FORMAT}|{version}|{binning.key()}".encode()).hexdigest()[:16]
    return root / "frames" / name / f"{key}.npz"


def cached_frames(path: Path, build) -> dict[str, np.ndarray]:
    """The arrays stored at ``path``, or ``build()``'s, written there atomically."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            log.warning("%s: cannot read the cached frames (%s); binning again", path, exc)
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("the frames could not be cached at %s (%s); they will be binned again next time", path, exc)
    return arrays


def event_dataset(name: str, version: str, *, sensor_size: tuple[int, int, int], train: Callable[[], Recordings],
                  test: Callable[[], Recordings], binning: Binning, num_classes: int, source: str, loader: str,
                  classes: tuple[str, ...] = (), duration_us: float | None = None, val_fraction: float = 0.1,
                  progress: bool = True):
    """A :class:`~harness.datasets.base.Dataset` of binned frames, cached per binning; ``val`` is a
    stratified part of ``train``. ``train``/``test`` give the recordings; they are only read (called)
    when the binning's frames are not cached yet."""
    from .base import Dataset, stratified_split

    def build() -> dict[str, np.ndarray]:
        train_rec, test_rec = train(), test()
        tr = bin_recordings(train_rec, sensor_size, binning, duration_us, progress=f"{name}/train" * progress)
        te = bin_recordings(test_rec, sensor_size, binning, duration_us, bins=tr.shape[1],
                            progress=f"{name}/test" * progress)
        return {"train": tr, "test": te, "y_train": train_rec.labels, "y_test": test_rec.labels,
                "events_train": np.diff(train_rec.offsets), "events_test": np.diff(test_rec.offsets)}

    arrays = cached_frames(frames_cache(name, version, binning), build)
    empty = warn_empty(name, arrays["train"])
    keep, val = stratified_split(arrays["y_train"], val_fraction, seed=0)
    frames = {"train": arrays["train"][keep], "val": arrays["train"][val], "test": arrays["test"]}
    y = {"train": arrays["y_train"][keep], "val": arrays["y_train"][val], "test": arrays["y_test"]}
    recorded = np.concatenate([arrays["events_train"], arrays["events_test"]])
    binned = frames["test"].reshape(len(frames["test"]), -1).sum(1, dtype=np.int64)
    info = dict(loader=loader, sensor_size=list(sensor_size), binning=binning.describe(),
                time_bins=int(arrays["train"].shape[1]), empty_frame_fraction=round(empty, 4),
                recorded_events_per_sample=float(recorded.mean()) if recorded.size else 0.0,
                binned_events_per_test_sample=float(binned.mean()) if binned.size else 0.0)
    x = {s: f.mean(axis=1, dtype=np.float32) for s, f in frames.items()}
    return Dataset(name, f"{version}/{binning.key()}", num_classes, x, y, source=source, classes=classes,
                   frames=frames, events=info)
