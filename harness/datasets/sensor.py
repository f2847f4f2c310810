"""``mnist-5k-dvs``: event recordings of the embedded ``mnist-5k`` digits by a simulated event sensor,
so event data needs no download.

The sensor follows the principle of ESIM / v2e: a pixel emits an ON (OFF) event each time its log
intensity has risen (fallen) by the contrast threshold ``CONTRAST`` since its last event, and the
event's timestamp is interpolated linearly between the two rendered positions whose log intensities
straddle the crossing. The scene is N-MNIST's (Orchard et al., 2015; tonic's ``stabilize``): the digit
on a 34 × 34 sensor, moved along three saccades of ``SACCADE_US`` each forming a triangle — (0, 0) →
(3.5, 7) → (7, 0) → (0, 0) pixels in (x, y) — rendered ``STEPS`` times per saccade.

Details that make it deterministic on any machine: the log intensity of each of the 256 pixel
values is rounded to a multiple of 2⁻²⁰ (so the platform's ``log`` cannot move a threshold crossing)
and positions between pixels are rendered by bilinear interpolation of that log intensity; no noise.
Events are tonic's structured ``x, y, t, p`` arrays (t in µs, p = 1 for ON); they are generated
when a binning's frames are not cached yet (5 000 digits: about 30 s), and only the frames are kept.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .events import EVENT_DTYPE, Binning, Recordings, event_dataset

SENSOR = (34, 34, 2)  # tonic's (W, H, P), N-MNIST's
SACCADES = ((0.0, 0.0), (3.5, 7.0), (7.0, 0.0), (0.0, 0.0))  # (x, y) in pixels at the saccades' ends
SACCADE_US = 105_000
STEPS = 60  # rendered positions per saccade (at most 0.13 pixel apart)
CONTRAST = 0.5  # log-intensity change per event (about 4 450 events per digit)
LOG_FLOOR = 0.1  # log(I + LOG_FLOOR), I in [0, 1]: the sensor's dark floor
DEFAULT_BINS = 8
VERSION = "esim-v1"


def parameters() -> dict:
    return dict(sensor=list(SENSOR), saccades=[list(s) for s in SACCADES], saccade_us=SACCADE_US, steps=STEPS,
                contrast=CONTRAST, log_floor=LOG_FLOOR, version=VERSION)


def log_table() -> np.ndarray:
    """log(v / 255 + LOG_FLOOR) for the 256 pixel values, rounded to multiples of 2⁻²⁰."""
    v = np.arange(256, dtype=np.float64) / 255.0
    return np.round(np.log(v + LOG_FLOOR) * 2.0**20) / 2.0**20


def positions() -> tuple[np.ndarray, np.ndarray]:
    """Times (µs) and (x, y) offsets of the rendered positions, from t = 0 to the end."""
    times, offsets = [0.0], [SACCADES[0]]
    for (x0, y0), (x1, y1), k in zip(SACCADES, SACCADES[1:], range(len(SACCADES) - 1)):
        for s in range(1, STEPS + 1):
            f = s / STEPS
            times.append(k * SACCADE_US + f * SACCADE_US)
            offsets.append((x0 + f * (x1 - x0), y0 + f * (y1 - y0)))
    return np.array(times), np.array(offsets)


def render(logs: np.ndarray, dx: float, dy: float, dark: float) -> np.ndarray:
    """The log-intensity images ``logs`` (B, 28, 28) shifted by (dx, dy) on the 34 × 34 sensor,
    bilinear between pixels; the sensor sees ``dark`` where the image is not."""
    B, h, w = logs.shape
    W, H = SENSOR[0], SENSOR[1]
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy

    def at(ox: int, oy: int) -> np.ndarray:  # the image's top-left pixel on sensor pixel (ox, oy) ≥ 0
        out = np.full((B, H, W), dark)
        hh, ww = min(h, H - oy), min(w, W - ox)
        out[:, oy:oy + hh, ox:ox + ww] = logs[:, :hh, :ww]
        return out

    return ((1 - fx) * (1 - fy) * at(ix, iy) + fx * (1 - fy) * at(ix + 1, iy)
            + (1 - fx) * fy * at(ix, iy + 1) + fx * fy * at(ix + 1, iy + 1))


def simulate(images: np.ndarray) -> Recordings:
    """The events of ``images`` (uint8, (B, 28, 28)) moved along the saccades (labels left 0)."""
    table = log_table()
    logs = table[images]
    dark = float(table[0])
    times, offsets = positions()
    prev = render(logs, float(offsets[0][0]), float(offsets[0][1]), dark)
    ref = prev.copy()
    parts: list[tuple[np.ndarray, ...]] = []
    for k in range(1, len(times)):
        cur = render(logs, float(offsets[k][0]), float(offsets[k][1]), dark)
        diff = cur - ref
        n = np.floor(np.abs(diff) / CONTRAST).astype(np.int64)
        b, y, x = np.nonzero(n)
        if len(b):
            cnt = n[b, y, x]
            sign = np.sign(diff[b, y, x])
            rep = np.repeat(np.arange(len(b)), cnt)
            j = np.arange(len(rep)) - np.repeat(np.cumsum(cnt) - cnt, cnt) + 1  # 1 … n per pixel
            level = ref[b, y, x][rep] + j * CONTRAST * sign[rep]
            lp, lc = prev[b, y, x][rep], cur[b, y, x][rep]
            t = times[k - 1] + (level - lp) / (lc - lp) * (times[k] - times[k - 1])
            parts.append((b[rep], x[rep], y[rep], np.floor(t).astype(np.int64), (sign[rep] > 0).astype(np.int8)))
            ref[b, y, x] += cnt * CONTRAST * sign
        prev = cur
    cols = [np.concatenate([p[i] for p in parts]) if parts else np.zeros(0, np.int64) for i in range(5)]
    order = np.lexsort((cols[3], cols[0]))  # by sample, then time
    ev = np.zeros(len(order), EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = cols[1][order], cols[2][order], cols[3][order], cols[4][order]
    counts = np.bincount(cols[0], minlength=len(images))
    return Recordings(ev, np.concatenate([[0], np.cumsum(counts)]), np.zeros(len(images), np.int64))


def recordings(images: np.ndarray, labels: np.ndarray, chunk: int = 500) -> Recordings:
    """The recordings of ``images`` with their labels (simulated ``chunk`` images at a time)."""
    parts = [simulate(images[i:i + chunk]) for i in range(0, len(images), chunk)]
    counts = np.concatenate([np.diff(p.offsets) for p in parts]) if parts else np.zeros(0, np.int64)
    events = np.concatenate([p.events for p in parts]) if parts else np.zeros(0, EVENT_DTYPE)
    return Recordings(events, np.concatenate([[0], np.cumsum(counts)]), labels.astype(np.int64))


def load_mnist5k_dvs(data_dir: str | None = None, download: bool = True, binning: Binning | None = None):
    """``mnist-5k`` through the simulated sensor: 4 000 training recordings (400 of them for
    validation) and the 1 000 test ones, binned into ``DEFAULT_BINS`` frames unless told otherwise."""
    from .base import SPLITS
    from .embedded import load_mnist5k

    ds = load_mnist5k()
    pix = {s: np.round(ds.x[s][:, 0] * 255.0).astype(np.uint8) for s in SPLITS}
    train_img = np.concatenate([pix["train"], pix["val"]])
    train_y = np.concatenate([ds.y["train"], ds.y["val"]])
    digest = ds.version.rsplit("sha-", 1)[-1]
    b = (binning or Binning()).with_default_bins(DEFAULT_BINS)
    key = hashlib.sha256(str(sorted(parameters().items())).encode()).hexdigest()[:8]
    return event_dataset("mnist-5k-dvs", f"mnist-5k-dvs/{VERSION}-{key}/sha-{digest}", sensor_size=SENSOR,
                         train=lambda: recordings(train_img, train_y),
                         test=lambda: recordings(pix["test"], ds.y["test"]), binning=b, num_classes=10,
                         loader="harness simulated sensor",
                         source=f"mnist-5k ({ds.source}) through a simulated event sensor",
                         duration_us=3 * SACCADE_US)
