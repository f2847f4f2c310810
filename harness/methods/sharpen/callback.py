"""The Lightning callback that runs a :class:`~.schedule.Sharpener` while a sharpenable network
trains (see :mod:`harness.methods.sharpen`). Imported only when a network is sharpened: it
imports Lightning."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from torch import nn

from .layers import SharpenableActivation, set_sharpness
from .schedule import Sharpener, decayed_lr, sharpening_lr


class SharpeningCallback(pl.Callback):
    """Advances ``sharpener`` after every training batch and at every epoch's end.

    When sharpening starts it copies the network's weights (``before``: Whetstone's "original",
    the same network with bounded activations) and from then on sets the optimisers' learning rate
    from ``lr`` (0: :func:`~.schedule.sharpening_lr` of the optimiser's own) decayed with the
    network's sharpness to ``floor`` of it. With a ``val`` loader it appends, at every epoch's end,
    the validation accuracy the network would have if every layer were a step function now to
    ``sharpened_val`` (Whetstone's ``WhetstoneLogger`` reports the same). Training stops once every
    layer is a step function — no gradient is left to train on — or, with ``finetune_epochs``,
    that many epochs later: the activations then train straight through (their ``straight_through``
    flag, cleared when training ends) with the rate decaying from the sharpening's starting rate.
    """

    def __init__(self, sharpener: Sharpener, module: nn.Module, lr: float = 0.0, val=None, floor: float = 0.01,
                 finetune_epochs: int = 0):
        super().__init__()
        self.sharpener, self.module, self.lr, self.val, self.floor = sharpener, module, lr, val, floor
        self.finetune_epochs = finetune_epochs
        self.before: dict[str, torch.Tensor] | None = None
        self.sharpened: dict[str, torch.Tensor] | None = None  # when every layer became a step function
        self.finetune_from: int | None = None  # the epoch in which the fine-tuning started
        self._finetune_start = 0.0  # the same, in epochs with the fraction of that epoch done
        self.lr_used: float | None = None
        self.sharpened_val: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        s = self.sharpener
        batches = max(int(trainer.num_training_batches), 1)
        if self.finetune_from is not None:
            self._set_lr(trainer, self._finetune_lr(trainer.current_epoch + (batch_idx + 1) / batches))
            return
        if s.on_batch(trainer.current_epoch, batch_idx, batches):
            self.before = copy.deepcopy(self.module.state_dict())
            self.lr_used = self.lr if self.lr > 0 else _optimiser_lr(trainer, batches)
        s.apply()
        if s.started and self.lr_used is not None:
            self._set_lr(trainer, decayed_lr(self.lr_used, sum(s.values) / max(len(s.values), 1), self.floor))
        if s.done and self.finetune_epochs > 0:
            self.sharpened = copy.deepcopy(self.module.state_dict())
            self.finetune_from = trainer.current_epoch
            self._finetune_start = trainer.current_epoch + (batch_idx + 1) / batches
            for _, act in s.acts:
                act.straight_through = True
        elif s.done:
            trainer.should_stop = True

    def _finetune_lr(self, now: float) -> float:
        """Cosine from the sharpening's starting rate down to ``floor`` of it over the fine-tuning
        (the rest of the epoch sharpening ended in and ``finetune_epochs`` more)."""
        assert self.finetune_from is not None and self.lr_used is not None
        span = self.finetune_from + self.finetune_epochs + 1 - self._finetune_start
        return decayed_lr(self.lr_used, (now - self._finetune_start) / span, self.floor)

    @staticmethod
    def _set_lr(trainer, rate: float) -> None:
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = rate

    def on_train_end(self, trainer, pl_module):
        for _, act in self.sharpener.acts:
            act.straight_through = False

    def on_train_epoch_end(self, trainer, pl_module):
        s = self.sharpener
        if self.val is not None:
            self.sharpened_val.append(accuracy_sharpened(s.acts, pl_module, self.val))
        loss = pl_module.history.get("train/loss")
        s.on_epoch_end(trainer.current_epoch, loss[-1] if loss else None)
        if self.finetune_from is not None:
            if trainer.current_epoch >= self.finetune_from + self.finetune_epochs:
                trainer.should_stop = True
        elif s.done:
            trainer.should_stop = True


def _optimiser_lr(trainer, batches: int) -> float | None:
    groups = [g for opt in trainer.optimizers for g in opt.param_groups]
    return sharpening_lr(float(groups[0]["lr"]), batches) if groups else None


def accuracy_sharpened(acts: list[tuple[str, SharpenableActivation]], model: nn.Module, loader) -> float:
    """Accuracy on ``loader`` with every activation a step function (restored afterwards). It runs in
    a forked RNG: iterating a loader draws a seed from torch's generator, which would otherwise move
    the training's shuffling and dropout."""
    saved = [float(a.sharpness) for _, a in acts]
    was_training = model.training
    set_sharpness(acts, [1.0] * len(acts))
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            return accuracy(model, loader, next(model.parameters()).device)
    finally:
        set_sharpness(acts, saved)
        model.train(was_training)


def accuracy(model: nn.Module, loader, device) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
            total += len(y)
    return correct / max(total, 1)
