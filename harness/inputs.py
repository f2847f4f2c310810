"""The one check of everything a user brings — images, labels, weights — before any run opens and
before any training: numbers that would give silent nonsense are refused with one line that names
the split or tensor and an index, and says what to do.

* **images**: finite (a NaN or inf pixel named with its split and index); magnitudes plausible
  (beyond ``MAX_ABS`` refused with the range found, beyond ``WARN_ABS`` warned about: the methods
  calibrate on the data, but training and TTFS's encoding expect images scaled to about [0, 1]);
  ``uint8`` images are scaled to [0, 1] and ``(N, H, W)`` images get their channel axis where
  user data enters (:func:`harness.datasets.base.from_factory_result`).
* **labels**: integer class indices in ``0 … num_classes − 1``, ``num_classes`` declared by the data
  set (or by a factory that returns it) or else inferred as the largest label + 1 — and then checked
  for what inference hides: a single class, labels that start at 1, a class that no training
  sample has, a class whose few training samples look like stray labels.
* **weights** (``--weights``): a torch ``state_dict`` of the run's network, every tensor finite.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

log = logging.getLogger(__name__)

MAX_ABS = 1e4  # pixel magnitudes beyond this are refused: no image scaling produces them
WARN_ABS = 10.0  # beyond this, warned about: the methods expect images scaled to about [0, 1]
STRAY_FRACTION = 0.01  # a class with at most STRAY_MAX training samples and under 1 % of the median class
STRAY_MAX = 5


def _first(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(mask.ravel())[0]), mask.shape))


def check_images(name: str, split: str, x: np.ndarray) -> None:
    """Finite values of plausible magnitude (see the module docstring)."""
    if x.size == 0:
        return
    bad = ~np.isfinite(x)
    if bad.any():
        where = _first(bad)
        what = "NaN" if np.isnan(x[where]) else f"{float(x[where])}"
        raise DataError(f"{name}/{split}: input {where[0]} holds {what} at index {where}; "
                        f"{int(bad.sum())} non-finite value{'s' * (int(bad.sum()) > 1)} in this split — clean or drop them")
    lo, hi = float(x.min()), float(x.max())
    if max(-lo, hi) > MAX_ABS:
        raise DataError(f"{name}/{split}: inputs span [{lo:g}, {hi:g}], beyond ±{MAX_ABS:g}; scale the images "
                        "(the harness expects values of about [0, 1], e.g. pixels / 255)")
    if max(-lo, hi) > WARN_ABS:
        log.warning("%s/%s: inputs span [%g, %g]; the methods expect images scaled to about [0, 1] "
                    "(e.g. pixels / 255)", name, split, lo, hi)


def as_float_images(x: np.ndarray, name: str, what: str) -> np.ndarray:
    """User images as float32: ``uint8`` scaled to [0, 1], ``(N, H, W)`` given a channel axis."""
    if x.dtype == np.uint8:
        log.info("%s: %s images are uint8: scaled to [0, 1] (÷ 255)", name, what)
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3:
        log.info("%s: %s images of shape %s get a channel axis: (N, 1, H, W)", name, what, x.shape)
        x = x[:, None]
    return x.astype(np.float32)


def check_labels(name: str, y: Mapping[str, np.ndarray], num_classes: int | None) -> int:
    """Check the labels of every split; return the class count (``num_classes`` if declared, else
    inferred and checked for the traps of inference)."""
    declared = num_classes is not None
    for split, ys in y.items():
        if ys.size and int(ys.min()) < 0:
            i = int(np.flatnonzero(ys < 0)[0])
            raise DataError(f"{name}/{split}: label {int(ys[i])} at index {i} is negative; labels are class indices "
                            "0, 1, …")
    every = np.concatenate([ys for ys in y.values()]) if y else np.zeros(0, np.int64)
    if every.size == 0:
        raise DataError(f"data set {name}: every split is empty")
    if num_classes is None:
        num_classes = int(every.max()) + 1
        if int(every.min()) == 1 and num_classes > 2:
            raise DataError(f"data set {name}: labels run from 1 to {num_classes - 1} and no sample has label 0: "
                            "they look 1-based; subtract 1 (labels are class indices 0 … K−1), or declare "
                            "num_classes")
    if num_classes < 2:
        raise DataError(f"data set {name}: {'it declares' if declared else 'every label is 0:'} {num_classes} class; "
                        "a classifier needs at least 2")
    for split, ys in y.items():
        if ys.size and int(ys.max()) >= num_classes:
            i = int(np.flatnonzero(ys >= num_classes)[0])
            raise DataError(f"{name}/{split}: label {int(ys[i])} at index {i} is outside 0 … {num_classes - 1} "
                            f"({num_classes} classes)")
    _check_train_classes(name, y, num_classes, declared)
    return num_classes


def _check_train_classes(name: str, y: Mapping[str, np.ndarray], num_classes: int, declared: bool) -> None:
    train = y.get("train")
    if train is None or train.size == 0:
        return
    counts = np.bincount(train, minlength=num_classes)
    elsewhere = np.concatenate([ys for s, ys in y.items() if s != "train"] or [np.zeros(0, np.int64)])
    seen = np.bincount(elsewhere, minlength=num_classes) if elsewhere.size else np.zeros(num_classes, np.int64)
    missing = [c for c in range(num_classes) if counts[c] == 0 and seen[c] > 0]
    if missing:
        many = len(missing) > 1
        raise DataError(f"data set {name}: class{'es' * many} {', '.join(map(str, missing[:10]))} "
                        f"appear{'' if many else 's'} in the evaluation splits but in no training sample: the "
                        f"network could never learn {'them' if many else 'it'}; fix the split or the labels")
    absent = [c for c in range(num_classes) if counts[c] == 0 and seen[c] == 0]
    if absent and not declared:
        raise DataError(f"data set {name}: no sample has label {', '.join(map(str, absent[:10]))} although labels "
                        f"go up to {num_classes - 1}; relabel the classes 0 … K−1, or declare num_classes")
    if declared:
        return
    median = float(np.median(counts[counts > 0]))
    stray = [c for c in range(num_classes) if 0 < counts[c] <= STRAY_MAX and counts[c] < STRAY_FRACTION * median]
    if stray:
        c = stray[0]
        raise DataError(f"data set {name}: class {c} has {int(counts[c])} training sample{'s' * (int(counts[c]) > 1)} "
                        f"where the median class has {median:g}: a stray label? Fix it, or declare num_classes "
                        "(a factory may return {'train': …, 'test': …, 'num_classes': K})")


# ---------------------------------------------------------------------------------------------
# weights


def check_state_dict(model: "nn.Module", state: dict, source: str) -> None:
    """Raise ``ConfigError`` naming the first key whose presence or shape differs from ``model``'s."""
    import torch

    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            raise ConfigError(f"{source}: no entry for the model's {key!r} (shape {tuple(value.shape)})")
        other = state[key]
        if not isinstance(other, torch.Tensor):
            raise ConfigError(f"{source}: {key!r} is a {type(other).__name__}, not a tensor")
        if tuple(other.shape) != tuple(value.shape):
            raise ConfigError(f"{source}: {key!r} has shape {tuple(other.shape)}, the model's has {tuple(value.shape)}")
    extra = [k for k in state if k not in own]
    if extra:
        raise ConfigError(f"{source}: {extra[0]!r} (shape {tuple(getattr(state[extra[0]], 'shape', ()))}) is not a "
                          f"parameter or buffer of the model")


def check_weights(state: Mapping[str, Any], source: str) -> None:
    """Every tensor of ``state`` finite; the first that is not is named with an index."""
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = ~torch.isfinite(value)
            if bool(bad.any()):
                where = tuple(int(i) for i in bad.nonzero()[0].tolist())
                what = "NaN" if bool(torch.isnan(value[where])) else str(float(value[where]))
                raise DataError(f"{source}: {key!r} holds {what} at index {where} ({int(bad.sum())} non-finite of "
                                f"{value.numel()}); the file cannot give a meaningful network")


def load_checked_weights(architecture, path: str | Path) -> tuple[Any, str]:
    """The run's network with the weights of ``path`` (a ``state_dict``, or a dict holding one
    under ``state_dict``), and the file's SHA-256; refused with one line if the file is not a torch
    file, not this network's weights, or holds non-finite numbers."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--weights {p}: no such file")
    data = p.read_bytes()
    try:
        import io

        blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "not a torch file" if _not_torch(data) else "not a readable torch state_dict"
        raise DataError(f"--weights {p} is {kind} ({type(exc).__name__}{': ' + first[:200] if first else ''}); "
                        "save one with torch.save(model.state_dict(), path)") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"--weights {p}: expected a state_dict (a dict of tensors), got {type(blob).__name__}")
    model = architecture()
    check_state_dict(model, state, f"--weights {p}")
    check_weights(state, f"--weights {p}")
    model.load_state_dict(state)
    return model.eval(), hashlib.sha256(data).hexdigest()


def _not_torch(data: bytes) -> bool:
    """Neither a zip archive (torch's format since 1.6) nor a pickle (the legacy format)."""
    return not (data[:4] == b"PK\x03\x04" or data[:1] == b"\x80")
