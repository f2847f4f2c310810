"""Recorded event data sets through tonic: ``nmnist``, ``dvs-gesture`` and ``shd``.

Each is read from tonic's on-disk layout (a ``--data-dir`` holding it, or the harness's data folder
where tonic's checksummed download puts it), checked sample by sample
(:func:`harness.datasets.events.check_sample`) and binned by tonic
(:mod:`harness.datasets.events`). The files are read with tonic's own readers where tonic has one
(N-MNIST's 40-bit binary events); tonic's dataset classes themselves are not used to read, because
they insist on the full data set being present (10 000 files for N-MNIST) and would otherwise start
a download. Sample counts are those of tonic's files:

* ``nmnist``: ``NMNIST/Train|Test/<digit>/<n>.bin``, 60 000 + 10 000 recordings on a 34 × 34 × 2 sensor;
* ``dvs-gesture``: tonic's preprocessed ``DVSGesture/ibmGestureTrain|ibmGestureTest/<user>_<light>/<label>.npy``
  (columns x, y, p, t in ms), 1 077 + 264 recordings of 11 classes on 128 × 128 × 2 — tonic cut the
  original recordings into one gesture each and finds 1 341, where the paper counts 1 342 and
  SpikingJelly's own cutting gives 1 176 + 288; by default denoised (10 ms) and downsampled to 32 × 32
  as NeuroBench's DVS Gesture example does;
* ``shd``: ``SHD/shd_train.h5|shd_test.h5`` (spikes/times in s, spikes/units, labels), 8 156 + 2 264
  recordings of 20 classes on 700 channels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from .download import default_data_root
from .events import WIDE_DTYPE, Binning, Recordings, event_dataset

NMNIST_SENSOR = (34, 34, 2)
GESTURE_SENSOR = (128, 128, 2)
SHD_SENSOR = (700, 1, 1)
GESTURE_CLASSES = ("hand clap", "right hand wave", "left hand wave", "right arm clockwise",
                   "right arm counter-clockwise", "left arm clockwise", "left arm counter-clockwise", "arm roll",
                   "air drums", "air guitar", "other gestures")


def _find(candidates: list[Path], present: Callable[[Path], bool]) -> Path | None:
    return next((d for d in candidates if present(d)), None)


def _candidates(name: str, folder: str, data_dir: str | None) -> list[Path]:
    out = [Path(data_dir), Path(data_dir) / folder, Path(data_dir) / name / folder] if data_dir else []
    return out + [default_data_root() / name / folder]


def _locate(name: str, folder: str, data_dir: str | None, download: bool, present: Callable[[Path], bool],
            remotes: list[tuple[str, str, str]], what: str) -> Path:
    """The folder holding the set (downloaded by tonic, md5-checked, when absent and allowed)."""
    candidates = _candidates(name, folder, data_dir)
    found = _find(candidates, present)
    why = ""
    if found is None and download:
        from tonic.download_utils import download_and_extract_archive

        root = candidates[-1]
        try:
            for url, filename, md5 in remotes:
                download_and_extract_archive(url, str(root), filename=filename, md5=md5, remove_finished=True)
            found = root if present(root) else None
        except Exception as exc:  # noqa: BLE001 - network, checksum and archive errors all mean "not downloaded"
            why = f" Download failed: {type(exc).__name__}: {exc}."
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(f"{name}: {what} not found. Looked in: {looked}.{why} Provide them with --data-dir DIR.")
    return found


def _listing_digest(files: list[Path], root: Path) -> str:
    """A digest of the files' relative names and sizes (their contents are read when binned, not hashed)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}:{f.stat().st_size};".encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# N-MNIST


def _nmnist_files(root: Path, split: str) -> list[Path]:
    return sorted((root / split).glob("[0-9]/*.bin"))


def read_nmnist(files: list[Path]) -> Recordings:
    """N-MNIST's binary files (tonic's ``read_mnist_file``); the label is the parent folder's digit."""
    from tonic.datasets import NMNIST
    from tonic.io import read_mnist_file

    samples, labels = [], []
    for f in files:
        size = f.stat().st_size
        if size % 5:
            raise DataError(f"{f}: {size} bytes is not a whole number of 5-byte N-MNIST events; the file is "
                            "truncated or not an N-MNIST recording")
        samples.append(read_mnist_file(str(f), dtype=NMNIST.dtype))
        labels.append(int(f.parent.name))
    return Recordings.from_list(samples, labels, [str(f) for f in files])


def load_nmnist(data_dir: str | None = None, download: bool = True, binning: Binning | None = None):
    from tonic.datasets import NMNIST

    remotes = [(NMNIST.train_url, NMNIST.train_filename, NMNIST.train_md5),
               (NMNIST.test_url, NMNIST.test_filename, NMNIST.test_md5)]
    root = _locate("nmnist", "NMNIST", data_dir, download,
                   lambda d: bool(_nmnist_files(d, "Train")) and bool(_nmnist_files(d, "Test")), remotes,
                   "the N-MNIST folders Train/ and Test/ (<digit>/<n>.bin)")
    train, test = _nmnist_files(root, "Train"), _nmnist_files(root, "Test")
    version = f"nmnist-tonic/{len(train)}+{len(test)}/sha-{_listing_digest(train + test, root)}"
    return event_dataset("nmnist", version, sensor_size=NMNIST_SENSOR, train=lambda: read_nmnist(train),
                         test=lambda: read_nmnist(test), binning=(binning or Binning()).with_default_bins(16),
                         num_classes=10, source=str(root), loader="tonic NMNIST files (tonic.io.read_mnist_file)")


# ---------------------------------------------------------------------------------------------
# DVS Gesture


def _gesture_files(root: Path, folder: str) -> list[Path]:
    return sorted((root / folder).glob("*/*.npy"))


def read_gesture(files: list[Path]) -> Recordings:
    """tonic's preprocessed DVS Gesture arrays: (N, 4) columns x, y, p, t (ms); label = the file's stem."""
    samples, labels = [], []
    for f in files:
        try:
            raw = np.load(f, allow_pickle=False)
            label = int(f.stem)
        except (OSError, ValueError, EOFError) as exc:
            raise DataError(f"{f}: not a readable DVS Gesture recording ({exc}); the file is truncated or of "
                            "another format") from None
        if raw.ndim != 2 or raw.shape[1] != 4 or raw.dtype.kind not in "iuf":
            raise DataError(f"{f}: expected an (N, 4) numeric array of x, y, p, t; found {raw.dtype} {raw.shape}")
        ev = np.zeros(len(raw), WIDE_DTYPE)
        ev["x"], ev["y"], ev["p"] = raw[:, 0], raw[:, 1], raw[:, 2]
        ev["t"] = np.round(raw[:, 3] * 1000.0)
        samples.append(ev)
        labels.append(label)
    bad = [i for i, y in enumerate(labels) if not 0 <= y < len(GESTURE_CLASSES)]
    if bad:
        raise DataError(f"{files[bad[0]]}: label {labels[bad[0]]} outside 0 … {len(GESTURE_CLASSES) - 1}")
    return Recordings.from_list(samples, labels, [str(f) for f in files])


def load_dvs_gesture(data_dir: str | None = None, download: bool = True, binning: Binning | None = None):
    from tonic.datasets import DVSGesture

    remotes = [(DVSGesture.train_url, DVSGesture.train_filename, DVSGesture.train_md5),
               (DVSGesture.test_url, DVSGesture.test_filename, DVSGesture.test_md5)]
    root = _locate("dvs-gesture", "DVSGesture", data_dir, download,
                   lambda d: bool(_gesture_files(d, "ibmGestureTrain")) and bool(_gesture_files(d, "ibmGestureTest")),
                   remotes, "tonic's DVS Gesture folders ibmGestureTrain/ and ibmGestureTest/ (<user>/<label>.npy)")
    train, test = _gesture_files(root, "ibmGestureTrain"), _gesture_files(root, "ibmGestureTest")
    b = binning or Binning()
    b = Binning(b.time_bins if b.time_bins or b.time_window_ms else 16, b.time_window_ms,
                10.0 if b.denoise_ms is None else b.denoise_ms, 0.25 if b.downsample is None else b.downsample)
    version = f"dvs-gesture-tonic/{len(train)}+{len(test)}/sha-{_listing_digest(train + test, root)}"
    return event_dataset("dvs-gesture", version, sensor_size=GESTURE_SENSOR, train=lambda: read_gesture(train),
                         test=lambda: read_gesture(test), binning=b, num_classes=len(GESTURE_CLASSES),
                         classes=GESTURE_CLASSES, source=str(root), loader="tonic DVSGesture files (preprocessed .npy)")


# ---------------------------------------------------------------------------------------------
# SHD


def read_shd(path: Path) -> Recordings:
    """An SHD HDF5 file as tonic reads it: spikes/times (s) → t (µs), spikes/units → x, labels."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            times, units, labels = f["spikes/times"][:], f["spikes/units"][:], np.asarray(f["labels"][:])
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path}: not a readable SHD file ({exc}); expected HDF5 with spikes/times, spikes/units "
                        "and labels") from None
    if not len(times) == len(units) == len(labels):
        raise DataError(f"{path}: {len(times)} spike-time arrays, {len(units)} unit arrays, {len(labels)} labels")
    samples = []
    for i, (t, u) in enumerate(zip(times, units)):
        if len(t) != len(u):
            raise DataError(f"{path} (sample {i}): {len(t)} spike times but {len(u)} units")
        ev = np.zeros(len(t), WIDE_DTYPE)
        ev["t"] = np.round(np.asarray(t, np.float64) * 1e6)
        ev["x"] = u
        samples.append(ev)
    return Recordings.from_list(samples, labels.astype(np.int64), [str(path)] * len(samples))


def load_shd(data_dir: str | None = None, download: bool = True, binning: Binning | None = None):
    from tonic.datasets import SHD

    remotes = [(SHD.base_url + SHD.train_zip, SHD.train_zip, SHD.train_md5),
               (SHD.base_url + SHD.test_zip, SHD.test_zip, SHD.test_md5)]
    root = _locate("shd", "SHD", data_dir, download,
                   lambda d: (d / "shd_train.h5").is_file() and (d / "shd_test.h5").is_file(), remotes,
                   "the SHD files shd_train.h5 and shd_test.h5")
    files = [root / "shd_train.h5", root / "shd_test.h5"]
    from .base import files_digest

    version = f"shd-tonic/sha-{files_digest(files)}"
    return event_dataset("shd", version, sensor_size=SHD_SENSOR, train=lambda: read_shd(files[0]),
                         test=lambda: read_shd(files[1]), binning=(binning or Binning()).with_default_bins(50),
                         num_classes=20, source=str(root), loader="tonic SHD files (HDF5)")
