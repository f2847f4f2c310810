"""Training through Lightning, shared by every method that trains.

This module imports Lightning (about 5 s), so it is imported only when something is trained:
a run whose ANN is in the cache (:mod:`harness.ann_cache`) never loads it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from .errors import DivergedError, UnknownNameError

for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
HIDDEN_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh)


class Classifier(pl.LightningModule):
    """Cross-entropy classifier with an optional L1 penalty on hidden activations.

    ``act_l1`` adds ``act_l1 · mean |a|`` summed over hidden activation layers: sparser ANNs
    convert into SNNs that fire less (used by ``ttfs``). Non-finite losses stop training with
    :class:`DivergedError`.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.0, act_l1: float = 0.0,
                 loss_fn=None, activation_types: tuple = HIDDEN_ACTIVATIONS, optimizer: str = "adam"):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.act_l1 = lr, weight_decay, act_l1
        if optimizer not in OPTIMIZERS:
            raise UnknownNameError("optimizer", optimizer, OPTIMIZERS)
        self.optimizer = optimizer
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
        # Lightning hands a logged "step" to its loggers as the step: curves streamed to MLflow are
        # indexed by epoch, as the step metrics written at the end of a run are
        self.log("step", float(self.current_epoch), on_step=False, on_epoch=True)
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
        return OPTIMIZERS[self.optimizer](self.parameters(), lr=self.lr, weight_decay=self.weight_decay)


def epoch_logger(ctx, stage: str):
    """Lightning's ``MLFlowLogger`` on the run's own MLflow run (``ctx.live_run``), so its training
    curves can be watched as they happen: keys ``<stage>/train/loss`` … at step = epoch, the keys
    and steps the run's step metrics have. None when the run is not tracked."""
    if ctx.live_run is None:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    class EpochCurves(MLFlowLogger):
        LOGGER_JOIN_CHAR = "/"

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            pass  # the run's parameters are the harness's (one per knob), logged by the harness

        def log_metrics(self, metrics, step=None) -> None:
            from .errors import uninterrupted

            with uninterrupted():  # Ctrl-C lands after this write, not inside it
                super().log_metrics(metrics, step)
                ctx.live_run.streamed.update(f"{stage}/{k}" for k in metrics)

        def finalize(self, status: str = "success") -> None:
            pass  # the run ends with the harness's work, not with this training

    return EpochCurves(tracking_uri=ctx.live_run.tracking_uri, run_id=ctx.live_run.run_id, prefix=stage)


def make_trainer(ctx, max_epochs: int, callbacks: list | None = None, stage: str | None = None,
                 **kwargs: Any) -> pl.Trainer:
    """A Trainer with the harness's defaults: no checkpoint files, one device, no logger but the
    run's own MLflow run (``stage`` prefixes its curves)."""
    accelerator = "gpu" if ctx.device.startswith("cuda") else "cpu"
    logger = epoch_logger(ctx, stage) if stage else None
    return pl.Trainer(
        max_epochs=max_epochs, accelerator=accelerator, devices=1, logger=logger or False, log_every_n_steps=1,
        enable_checkpointing=False, enable_model_summary=False,
        # the bar only on a terminal: redirected output would get a \r update per batch
        enable_progress_bar=bool(ctx.progress) and sys.stderr.isatty(),
        callbacks=callbacks or [], num_sanity_val_steps=0, **kwargs,
    )


def fit(ctx, module: Classifier, max_epochs: int, callbacks: list | None = None, stage: str | None = None,
        frames: bool = False, **kwargs: Any) -> Classifier:
    """Train ``module`` on the train split, validating on val each epoch; with ``stage`` (the prefix
    of its step metrics: ``ann``, ``surrogate`` …) the curves stream to the run's MLflow run; with
    ``frames``, on event data's frames instead of images."""
    pl.seed_everything(ctx.seed, workers=True, verbose=False)
    trainer = make_trainer(ctx, max_epochs, [*(callbacks or []), *ctx.fit_callbacks], stage=stage,
                           **kwargs)
    try:
        # Lightning's bar writes to stdout, which carries the run's result alone: send it to stderr
        with contextlib.redirect_stdout(sys.stderr):
            extra = {"frames": True} if frames else {}
            trainer.fit(module, ctx.loader("train", shuffle=True, **extra), ctx.loader("val", **extra))
    except SystemExit:  # Lightning turns Ctrl-C into exit(1): it is an interruption
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise
    if trainer.interrupted:
        raise KeyboardInterrupt
    return module
