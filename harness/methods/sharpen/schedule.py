"""The sharpening schedules and the learning rate while sharpening (see
:mod:`harness.methods.sharpen`): plain logic, advanced by the Lightning callback of
:mod:`.callback` once per batch and epoch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .layers import SharpenableActivation, layer_sharpness, set_sharpness

if TYPE_CHECKING:  # pragma: no cover
    from . import SharpenParams

class Sharpener:
    """The schedules of the module docstring, advanced per batch (Whetstone's sharpener callbacks,
    reimplemented for Lightning). ``history`` holds each layer's sharpness at every epoch's end."""

    def __init__(self, acts: list[tuple[str, SharpenableActivation]], p: SharpenParams):
        self.acts, self.p = acts, p
        self.names = [n for n, _ in acts]
        self.values = [0.0] * len(self.names)
        self.history: dict[str, list[float]] = {n: [] for n in self.names}
        self.global_value = 0.0
        # adaptive state (Whetstone's AdaptiveSharpener)
        self.sharpening = False
        self.reference_loss = math.inf
        self.no_improvement = 0
        self.wait = False
        self.started = False  # set when the first sharpness leaves 0

    @property
    def done(self) -> bool:
        return all(v >= 1.0 for v in self.values)

    def on_batch(self, epoch: int, batch: int, batches: int) -> bool:
        """Advance the schedule after ``batch`` (0-based) of ``epoch``'s ``batches`` and apply the
        sharpness; True on the batch where sharpening starts (the first sharpness above 0), before
        it is applied, so the caller can keep the network as it was."""
        p = self.p
        if p.schedule == "scheduled":
            elapsed = epoch + (batch + 1) / batches - p.start_epoch
            if p.intermission and p.bottom_up:
                self.values = staged_sharpness(elapsed, len(self.values), p.duration, p.intermission)
            else:
                self.values = layer_sharpness(elapsed / p.duration, len(self.values), p.bottom_up)
        elif p.schedule == "fixed":
            if epoch >= p.start_epoch:
                self.global_value = min(1.0, self.global_value + p.rate / batches)
                if 1.0 - self.global_value < 1e-6:
                    self.global_value = 1.0
            self.values = layer_sharpness(self.global_value, len(self.values), p.bottom_up)
        elif self.sharpening:
            self._adaptive_step(batches)
        starts = not self.started and any(v > 0.0 for v in self.values)
        self.started = self.started or starts
        return starts

    def apply(self) -> None:
        """Set the activations to the schedule's current sharpness."""
        set_sharpness(self.acts, self.values)

    def _adaptive_step(self, batches: int) -> None:
        p = self.p
        todo = [i for i, v in enumerate(self.values) if v < 1.0]
        if not todo:
            self.sharpening = False
            return
        idx = todo if not p.bottom_up else [todo[0]]
        if p.bottom_up and self.wait:
            return
        for i in idx:
            amount = (p.cz_rate if self.values[i] >= p.critical else p.rate) / batches
            self.values[i] = min(1.0, self.values[i] + amount)
            if 1.0 - self.values[i] < 1e-3:
                self.values[i] = 1.0
                self.wait = p.bottom_up  # the next layer starts after this epoch (overshoot guard)

    def on_epoch_end(self, epoch: int, train_loss: float | None) -> None:
        for n, v in zip(self.names, self.values):
            self.history[n].append(v)
        if self.p.schedule != "adaptive" or train_loss is None:
            return
        p = self.p
        self.wait = False
        change = (train_loss - self.reference_loss) / self.reference_loss if math.isfinite(self.reference_loss) else -1.0
        improved, degraded = change <= -p.sig_change, change >= p.sig_change
        if epoch < p.start_epoch - 1:
            self.reference_loss = train_loss
            return
        if improved:
            self.reference_loss, self.no_improvement = train_loss, 0
        else:
            self.no_improvement += 1
        if self.sharpening and degraded:
            self.reference_loss, self.no_improvement, self.sharpening = train_loss, 0, False
        elif not self.sharpening and self.no_improvement > p.patience:
            self.reference_loss, self.no_improvement, self.sharpening = train_loss, 0, True


def staged_sharpness(elapsed: float, n: int, duration: float, intermission: float) -> list[float]:
    """Whetstone's scheduled example: layer i (from the input) sharpens from 0 to 1 over
    ``duration / n`` epochs starting ``i · (duration / n + intermission)`` epochs after sharpening
    began, so every layer holds for ``intermission`` epochs before the next one starts."""
    window = duration / n
    out = []
    for i in range(n):
        v = min(max((elapsed - i * (window + intermission)) / window, 0.0), 1.0)
        out.append(1.0 if 1.0 - v < 1e-9 else v)
    return out


def schedule_end(p: SharpenParams, layers: int) -> float:
    """The epoch at which ``scheduled`` makes the last of ``layers`` a step function."""
    gaps = p.intermission * (layers - 1) if p.bottom_up else 0.0
    return p.start_epoch + p.duration + gaps


AUTO_LR_BATCHES = 64  # batches per epoch up to which the sharpening learning rate equals lr


def sharpening_lr(lr: float, batches: int) -> float:
    """The default learning rate while sharpening: ``lr · min(1, 64 / batches)`` (module docstring)."""
    return lr * min(1.0, AUTO_LR_BATCHES / max(batches, 1))


def decayed_lr(start: float, sharpness: float, floor: float = 0.01) -> float:
    """The learning rate at network sharpness ``sharpness`` ∈ [0, 1]: cosine from ``start`` down to
    ``floor · start`` (module docstring)."""
    return start * (floor + (1.0 - floor) * (1.0 + math.cos(math.pi * min(max(sharpness, 0.0), 1.0))) / 2.0)

