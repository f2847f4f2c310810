"""The ANN: trained once per (data content, architecture, training config, seed, harness version)
and cached (a user's own ``--weights FILE.pt`` bypass the cache: :mod:`harness.inputs`).

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

from ._version import __version__
from .errors import ConfigError, DataError
from .inputs import check_state_dict
from .io import save_torch_atomic


def code_digest(*files: Path) -> str:
    """The package version and the source of ``files`` (default: ``training.py`` and this file),
    hashed: a cache entry made by other code is another entry."""
    h = hashlib.sha256(__version__.encode())
    for f in files or (Path(__file__).parent / "training.py", Path(__file__)):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def ann_cache_key(ctx) -> str:
    ds = ctx.dataset
    payload = dict(dataset=ds.name, version=ds.version, shape=list(ds.input_shape), classes=ds.num_classes,
                   model=ctx.model_name, architecture=ctx.graph.fingerprint(), train=ctx.train.as_dict(),
                   seed=ctx.seed, code=code_digest())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def cache_file(ctx, kind: str, key: str) -> Path:
    """``<cache>/<kind>/<data set>__<model>__<key>.pt``, names made safe for any file system."""
    def safe(name: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-60:]

    return ctx.cache_dir / kind / f"{safe(ctx.dataset.name)}__{safe(ctx.model_name)}__{key}.pt"


def ann_cache_path(ctx) -> Path:
    return cache_file(ctx, "ann", ann_cache_key(ctx))


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


def train_ann(ctx) -> tuple[nn.Module, dict, dict[str, str]]:
    """The trained ANN for ``ctx`` (from the cache when present), its training history, and
    provenance notes (``ann_cache``: hit or miss, ``ann_cache_file``)."""
    path = ann_cache_path(ctx)
    if path.is_file():
        blob = load_cached(path)
        model = ctx.architecture()
        try:
            check_state_dict(model, blob["state_dict"], f"ANN cache file {path}")
        except ConfigError as exc:
            raise DataError(f"{exc}: it is not this model's cache entry; delete it to retrain") from None
        model.load_state_dict(blob["state_dict"])
        return model.eval(), blob.get("history", {}), {"ann_cache": "hit", "ann_cache_file": str(path)}
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
    return model, history, {"ann_cache": "miss", "ann_cache_file": str(path)}
