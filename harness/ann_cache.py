"""The ANN: trained once per (data content, architecture, training config, seed, harness version)
and cached, or brought by the user (``--weights FILE.pt``).

The cache key hashes the data set's name and version (which carries a digest of its content), the
architecture's fingerprint from the fx trace (module types, hyper-parameters, parameter shapes and
wiring: editing one network changes its own key and no other's), the training configuration, the
seed and the code version (package version + the source of ``training.py`` and this file). Files
are written atomically and loaded with ``weights_only=True``; a file that is not a harness cache
entry is named as corrupt. Lightning is imported only on a cache miss.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import ConfigError, DataError
from .io import save_torch_atomic


def _code_version() -> str:
    h = hashlib.sha256(__version__.encode())
    for name in ("training.py", "ann_cache.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:12]


def ann_cache_key(ctx) -> str:
    ds = ctx.dataset
    payload = dict(dataset=ds.name, version=ds.version, shape=list(ds.input_shape), classes=ds.num_classes,
                   model=ctx.model_name, architecture=ctx.graph.fingerprint(), train=ctx.train.as_dict(),
                   seed=ctx.seed, code=_code_version())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-60:]


def ann_cache_path(ctx) -> Path:
    return ctx.cache_dir / "ann" / f"{_safe(ctx.dataset.name)}__{_safe(ctx.model_name)}__{ann_cache_key(ctx)}.pt"


def load_cached(path: Path) -> dict:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        raise DataError(f"ANN cache file {path} is corrupt ({type(exc).__name__}: {exc}); delete it to retrain") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict):
        raise DataError(f"ANN cache file {path} is not a harness cache entry (no state_dict); delete it to retrain")
    history = blob.get("history", {})
    if not isinstance(history, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)
            for k, v in history.items()):
        raise DataError(f"ANN cache file {path} is not a harness cache entry (its training history is not a "
                        "mapping of finite curves); delete it to retrain")
    return blob


def check_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """Raise ``ConfigError`` naming the first key whose presence or shape differs from ``model``'s."""
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


def load_weights(ctx, path: str | Path) -> nn.Module:
    """The run's architecture with the weights of ``path`` (a state_dict, or a dict holding one)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--weights {p}: no such file")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means an unusable file
        raise DataError(f"--weights {p} is not a readable torch state_dict ({type(exc).__name__}: {exc})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise DataError(f"--weights {p}: expected a state_dict (a dict of tensors), got {type(blob).__name__}")
    model = ctx.architecture()
    check_state_dict(model, state, f"--weights {p}")
    model.load_state_dict(state)
    return model.eval()


def train_ann(ctx) -> tuple[nn.Module, dict]:
    """The trained ANN for ``ctx`` (from the cache when present), and its training history."""
    path = ann_cache_path(ctx)
    if path.is_file():
        blob = load_cached(path)
        model = ctx.architecture()
        try:
            check_state_dict(model, blob["state_dict"], f"ANN cache file {path}")
        except ConfigError as exc:
            raise DataError(f"{exc}: it is not this model's cache entry; delete it to retrain") from None
        model.load_state_dict(blob["state_dict"])
        ctx.info["ann_cache"] = "hit"
        ctx.info["ann_cache_file"] = str(path)
        return model.eval(), blob.get("history", {})
    from .training import Classifier, fit

    torch.manual_seed(ctx.seed)
    model = ctx.architecture()
    tc = ctx.train
    module = Classifier(model, lr=tc.lr, weight_decay=tc.weight_decay, act_l1=tc.act_l1)
    if tc.epochs > 0:
        fit(ctx, module, tc.epochs, stage="ann")
    history = {k: [float(x) for x in v] for k, v in module.history.items() if all(map(math.isfinite, v))}
    model = module.model.cpu().eval()
    try:
        save_torch_atomic({"state_dict": model.state_dict(), "history": history, "key": ann_cache_key(ctx)}, path)
    except OSError as exc:
        from .errors import OutputError

        raise OutputError(f"writing the ANN cache {path} failed ({exc.strerror or exc}); the trained ANN was not "
                          "kept and nothing was logged (no partial file was left)") from None
    ctx.info["ann_cache"] = "miss"
    ctx.info["ann_cache_file"] = str(path)
    return model, history
