"""A fine-tuned copy of the run's ANN, kept in its own cache entry (``<cache>/<kind>/``), never the
ANN's: keyed by the tensors of the network it is derived from (so a pruned or user-given ANN has its
own entry), the knobs that shape the fine-tuning, the run's training configuration, the seed, the
data set and the code that fine-tunes. Written atomically; a file that does not fit is named.
Used by ``qcfs`` (the QCFS ANN) and ``ttfs`` (its sparsity fine-tuning)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .ann_cache import cache_file, code_digest, load_cached
from .errors import DataError, OutputError
from .io import save_torch_atomic


def fine_tune_path(ctx, kind: str, source: nn.Module, knobs: dict[str, Any], code: tuple[Path, ...]) -> Path:
    """Where the network fine-tuned from ``source`` with ``knobs`` by ``code`` is kept."""
    h = hashlib.sha256()
    for k, v in sorted(source.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    payload = dict(source=h.hexdigest(), knobs=knobs, train=ctx.train.as_dict(), seed=ctx.seed,
                   dataset=[ctx.dataset.name, ctx.dataset.version], code=code_digest(*code))
    key = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return cache_file(ctx, kind, key)


def cached_fine_tune(path: Path, start: nn.Module, train: Callable[[nn.Module], Any],
                     what: str) -> tuple[nn.Module, dict, str]:
    """The entry at ``path`` loaded into ``start``, or ``train(start)`` — a fitted Lightning
    ``Classifier`` — kept there; returns the network (eval mode, on the CPU), its finite curves and
    ``hit``/``miss``."""
    if path.is_file():
        blob = load_cached(path)
        try:
            start.load_state_dict(blob["state_dict"])
        except RuntimeError as exc:
            raise DataError(f"{what} cache file {path} does not fit this network ({exc}); delete it to fine-tune "
                            "again") from None
        return start.eval(), blob.get("history", {}), "hit"
    module = train(start)
    net = module.model.cpu().eval()
    history = {k: [float(v) for v in vs] for k, vs in module.history.items() if all(map(math.isfinite, vs))}
    try:
        save_torch_atomic({"state_dict": net.state_dict(), "history": history}, path)
    except OSError as exc:
        raise OutputError(f"writing the {what} cache {path} failed ({exc.strerror or exc}); nothing was logged (no "
                          "partial file was left)") from None
    return net, history, "miss"
