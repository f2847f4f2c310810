"""Training through Lightning, shared by every method that trains, and the ANN cache.

The cache key hashes the data set (name + version), the model, the training configuration,
the seed and the code version (package version + the source of ``models.py`` and this file).
Cache files are written to a temporary file and renamed, so an interrupted run never leaves a
half-written cache; they are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from . import __version__
from .errors import DataError, DivergedError
from .models import build_model

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

HIDDEN_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh)


class Classifier(pl.LightningModule):
    """Cross-entropy classifier with an optional L1 penalty on hidden activations.

    ``act_l1`` adds ``act_l1 · mean |a|`` summed over hidden activation layers: sparser ANNs
    convert into SNNs that fire less (used by ``ttfs``). Non-finite losses stop training with
    :class:`DivergedError`.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, act_l1: float = 0.0,
                 loss_fn=None, activation_types: tuple = HIDDEN_ACTIVATIONS):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.act_l1 = lr, weight_decay, act_l1
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.activation_types = activation_types
        self.history: dict[str, list[float]] = {}
        self._sums: dict[str, list] = {}
        self._acts: list[torch.Tensor] = []
        self._hooks: list = []

    def forward(self, x):
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.act_l1 > 0:
            for m in self.model.modules():
                if isinstance(m, self.activation_types):
                    self._hooks.append(m.register_forward_hook(lambda _m, _i, out: self._acts.append(out)))

    def on_fit_end(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _step(self, batch, stage: str):
        x, y = batch
        self._acts.clear()
        logits = self(x)
        loss = self.loss_fn(logits, y)
        if stage == "train" and self.act_l1 > 0 and self._acts:
            loss = loss + self.act_l1 * sum(a.abs().mean() for a in self._acts)
        self._acts.clear()
        if not torch.isfinite(loss):
            raise DivergedError(f"{stage} loss became {loss.item()} at epoch {self.current_epoch}; "
                                "lower the learning rate or check the method's parameters")
        acc = (logits.argmax(-1) == y).float().mean()
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage == "train")
        self.log(f"{stage}/accuracy", acc, on_step=False, on_epoch=True, prog_bar=True)
        sums = self._sums.setdefault(stage, [0.0, 0.0, 0])
        n = len(y)
        sums[0] += float(loss.detach()) * n
        sums[1] += float(acc) * n
        sums[2] += n
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._sums.clear()

    def on_train_epoch_end(self) -> None:
        # Per-epoch curves, kept here (not read from Lightning's logger) so they travel with the
        # cached ANN and become MLflow step metrics.
        for stage, (loss, acc, n) in self._sums.items():
            if n:
                self.history.setdefault(f"{stage}/loss", []).append(loss / n)
                self.history.setdefault(f"{stage}/accuracy", []).append(acc / n)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def make_trainer(ctx, max_epochs: int, callbacks: list | None = None, **kwargs: Any) -> pl.Trainer:
    """A Trainer with the harness's defaults: no checkpoint files, no logger, one device."""
    accelerator = "gpu" if ctx.device.startswith("cuda") else "cpu"
    return pl.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=ctx.progress,
        callbacks=callbacks or [], num_sanity_val_steps=0, **kwargs,
    )


def fit(ctx, module: Classifier, max_epochs: int, callbacks: list | None = None, **kwargs: Any) -> Classifier:
    """Train ``module`` on the train split, validating on val each epoch."""
    pl.seed_everything(ctx.seed, workers=True, verbose=False)
    trainer = make_trainer(ctx, max_epochs, callbacks, **kwargs)
    trainer.fit(module, ctx.loader("train", shuffle=True), ctx.loader("val"))
    if trainer.interrupted:
        raise KeyboardInterrupt
    return module


# ---- the ANN cache --------------------------------------------------------------------------

def _code_version() -> str:
    h = hashlib.sha256(__version__.encode())
    for name in ("models.py", "training.py"):
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
