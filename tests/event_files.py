"""Small event data sets written in each set's own on-disk format (no download in tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def nmnist_record(x, y, p, t) -> bytes:
    """N-MNIST's 40-bit events, written from the format: x, y, p << 7 | t[22:16], t[15:8], t[7:0]."""
    x, y, p, t = (np.asarray(a, np.int64) for a in (x, y, p, t))
    b = np.zeros((len(x), 5), np.uint8)
    b[:, 0], b[:, 1] = x, y
    b[:, 2] = (p << 7) | ((t >> 16) & 127)
    b[:, 3], b[:, 4] = (t >> 8) & 255, t & 255
    return b.tobytes()


def random_events(rng, n, sensor, duration_us=300_000):
    w, h, pol = sensor
    t = np.sort(rng.integers(0, duration_us, n))
    return rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, pol, n), t


def write_nmnist(root: Path, per_class=(3, 2), events=60, seed=0) -> Path:
    """``root/NMNIST/Train|Test/<digit>/<k>.bin``; returns the NMNIST folder."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("Train", "Test"), per_class):
        for d in range(10):
            folder = root / "NMNIST" / split / str(d)
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                (folder / f"{k:05d}.bin").write_bytes(nmnist_record(*random_events(rng, events, (34, 34, 2))))
    return root / "NMNIST"


def write_gesture(root: Path, users=(1, 2), events=200, seed=0) -> Path:
    """tonic's preprocessed DVS Gesture: ``ibmGestureTrain|Test/user<NN>_<light>/<label>.npy`` of
    (N, 4) rows x, y, p, t (ms)."""
    rng = np.random.default_rng(seed)
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        for u in users:
            folder = root / "DVSGesture" / split / f"user{u:02d}_fluorescent"
            folder.mkdir(parents=True, exist_ok=True)
            for label in range(11):
                x, y, p, t = random_events(rng, events, (128, 128, 2), 6_000_000)
                np.save(folder / f"{label}.npy", np.stack([x, y, p, t // 1000], 1).astype(np.int64))
    return root / "DVSGesture"


def write_shd(root: Path, per_class=(2, 1), events=80, seed=0) -> Path:
    """``SHD/shd_train.h5`` and ``shd_test.h5``: spikes/times (s, float), spikes/units, labels."""
    import h5py

    rng = np.random.default_rng(seed)
    folder = root / "SHD"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in zip(("shd_train.h5", "shd_test.h5"), per_class):
        labels = np.repeat(np.arange(20), n).astype(np.uint16)
        with h5py.File(folder / name, "w") as f:
            times = f.create_dataset("spikes/times", (len(labels),), dtype=h5py.vlen_dtype(np.float32))
            units = f.create_dataset("spikes/units", (len(labels),), dtype=h5py.vlen_dtype(np.uint16))
            for i in range(len(labels)):
                times[i] = np.sort(rng.uniform(0, 1.0, events)).astype(np.float32)
                units[i] = rng.integers(0, 700, events).astype(np.uint16)
            f.create_dataset("labels", data=labels)
    return folder


def frames_by_hand(x, y, p, t, bins, sensor) -> np.ndarray:
    """tonic's n_time_bins binning written from its definition: ``bins`` windows of
    ⌊(t_last − t_first) / bins⌋ µs from the first event, each counting the events of [start, end)."""
    w, h, pol = sensor
    order = np.argsort(t, kind="stable")
    x, y, p, t = x[order], y[order], p[order], t[order]
    width = (t[-1] - t[0]) // bins
    out = np.zeros((bins, pol, h, w), np.int64)
    for k in range(bins):
        start = t[0] + k * width
        for i in np.flatnonzero((t >= start) & (t < start + width)):
            out[k, p[i], y[i], x[i]] += 1
    return out
