"""A fine-tuned copy of the run's ANN, kept in its own cache entry (``<cache>/<kind>/``), never the
ANN's: keyed by the tensors of the network it starts from (so a pruned or user-given ANN has its
own entry), the knobs that shape the fine-tuning, the run's training configuration, the seed, the
data set and the code that fine-tunes. Written atomically; a file that does not fit is named."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from .ann_cache import cache_file, code_digest, load_cached
from .errors import DataError, OutputError
from .io import save_torch_atomic


def fine_tune_key(ctx, start: nn.Module, knobs: dict[str, Any], code: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for k, v in sorted(start.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    payload = dict(start=h.hexdigest(), knobs=knobs, train=ctx.train.as_dict(), seed=ctx.seed,
                   dataset=[ctx.dataset.name, ctx.dataset.version], code=code_digest(*code))
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_fine_tune(ctx, kind: str, start: nn.Module, knobs: dict[str, Any], code: tuple[Path, ...],
                     train: Callable[[nn.Module], tuple[nn.Module, dict]], what: str) -> tuple[nn.Module, dict, str]:
    """``train(start)`` → (network, history), or the entry kept from an earlier run; returns the
    network (eval mode, on the CPU), its history and ``hit``/``miss``."""
    path = cache_file(ctx, kind, fine_tune_key(ctx, start, knobs, code))
    if path.is_file():
        blob = load_cached(path)
        try:
            start.load_state_dict(blob["state_dict"])
        except RuntimeError as exc:
            raise DataError(f"{what} cache file {path} does not fit this network ({exc}); delete it to fine-tune "
                            "again") from None
        return start.eval(), blob.get("history", {}), "hit"
    net, history = train(start)
    net = net.cpu().eval()
    try:
        save_torch_atomic({"state_dict": net.state_dict(), "history": history}, path)
    except OSError as exc:
        raise OutputError(f"writing the {what} cache {path} failed ({exc.strerror or exc}); nothing was logged (no "
                          "partial file was left)") from None
    return net, history, "miss"
