"""The ANN cache: one trained network per (data set, model, training config, seed, code version).

The key hashes the data set (name + version), the model, the training configuration, the seed
and the code version (package version + the source of ``models.py``, ``training.py`` and this
file). Files are written to a temporary file and renamed, so an interrupted run never leaves a
half-written cache; they are loaded with ``weights_only=True``. Lightning is imported only on a
cache miss.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import DataError
from .models import build_model


def _code_version() -> str:
    h = hashlib.sha256(__version__.encode())
    for name in ("models.py", "training.py", "ann_cache.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def ann_cache_key(ctx) -> str:
    ds = ctx.dataset
    payload = dict(dataset=ds.name, version=ds.version, shape=list(ds.input_shape), classes=ds.num_classes,
                   model=ctx.model_name, train=ctx.train.as_dict(), seed=ctx.seed, code=_code_version())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def ann_cache_path(ctx) -> Path:
    return ctx.cache_dir / "ann" / f"{ctx.dataset.name}__{ctx.model_name}__{ann_cache_key(ctx)}.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_cached(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means an unusable cache file
        raise DataError(f"ANN cache file {path} is corrupt ({exc}); delete it to retrain") from None


def train_ann(ctx) -> tuple[nn.Module, dict]:
    """The trained ANN for ``ctx`` (from the cache when present), and its training history."""
    ds = ctx.dataset
    model = build_model(ctx.model_name, ds.input_shape, ds.num_classes)
    path = ann_cache_path(ctx)
    if path.is_file():
        blob = load_cached(path)
        model.load_state_dict(blob["state_dict"])
        ctx.info["ann_cache"] = "hit"
        ctx.info["ann_cache_file"] = str(path)
        return model.eval(), blob.get("history", {})
    from .training import Classifier, fit

    torch.manual_seed(ctx.seed)
    model = build_model(ctx.model_name, ds.input_shape, ds.num_classes)
    tc = ctx.train
    module = Classifier(model, lr=tc.lr, weight_decay=tc.weight_decay, act_l1=tc.act_l1)
    if tc.epochs > 0:
        fit(ctx, module, tc.epochs)
    history = {k: [float(x) for x in v] for k, v in module.history.items() if all(map(math.isfinite, v))}
    model = module.model.cpu().eval()
    save_atomic({"state_dict": model.state_dict(), "history": history,
                 "key": ann_cache_key(ctx)}, path)
    ctx.info["ann_cache"] = "miss"
    ctx.info["ann_cache_file"] = str(path)
    return model, history
