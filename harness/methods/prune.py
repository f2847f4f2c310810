"""prune — magnitude pruning with Zhu & Gupta's polynomial schedule, as a transform of the ANN.

The cached ANN is fine-tuned for ``epochs`` epochs through Lightning with its ``ModelPruning``
callback (global L1-unstructured pruning of every Linear/Conv weight via
``torch.nn.utils.prune``). Sparsity follows s_t = s_f + (s_i − s_f)(1 − (t − t_0)/(n·Δt))³
from epoch ``start_epoch`` (5, as in the seed) over ``ramp_epochs`` epochs; the remaining epochs
let accuracy recover. The masks are made permanent before anything else sees the network.

Alone (``--method prune``) the pruned ANN is metered like ``ann``; in a chain it hands the pruned
network to the next method: ``--method prune+ttfs``, ``prune+rate``, ``prune+layer-scaling``
(parameters of the transform are addressed as ``--set prune.final_sparsity=0.9``). Per-epoch
sparsity, loss and accuracy are logged as step metrics ``prune/...``; the pruned ANN's own test
accuracy is ``prune/ann/test/accuracy``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from ..api import Method, Preparation
from ..config import ConfigError, Params, param, scaled_schedule
from ..graph import SYNAPTIC_TYPES
from ..meters import connection_sparsity
from ..metrics import MetricSpec, fine_tuning_curves


def polynomial_sparsity(epoch: int, s_i: float, s_f: float, start: int, ramp: int) -> float:
    """Target sparsity after ``epoch`` (0-based) under Zhu & Gupta's cubic schedule."""
    if epoch < start:
        return s_i
    progress = min(1.0, (epoch - start + 1) / ramp)
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def pruning_amount(epoch: int, s_i: float, s_f: float, start: int, ramp: int) -> float:
    """Fraction of the *remaining* weights to prune at the end of ``epoch`` (what
    ``torch.nn.utils.prune`` expects when pruning repeatedly)."""
    if epoch < start or epoch >= start + ramp:
        return 0.0
    before = s_i if epoch == start else polynomial_sparsity(epoch - 1, s_i, s_f, start, ramp)
    after = polynomial_sparsity(epoch, s_i, s_f, start, ramp)
    if epoch == start and s_i > 0:  # the initial sparsity is applied together with the first step
        before = 0.0
    return max(0.0, 1.0 - (1.0 - after) / (1.0 - before))


@dataclass(frozen=True)
class PruneParams(Params):
    final_sparsity: float = param(0.8, "s_f: fraction of weights removed at the end", low=0, high=0.95)
    initial_sparsity: float = param(0.0, "s_i: sparsity applied at start_epoch", low=0, high=0.95)
    start_epoch: int = param(5, "t_0: first epoch that prunes (the seed waits 5 epochs)", low=0)
    ramp_epochs: int = param(8, "n·Δt: epochs over which sparsity rises to s_f", low=1)
    epochs: int = param(20, "fine-tuning epochs, recovery included", low=1)
    lr: float = param(1e-3, "fine-tuning learning rate", low=0, low_open=True)

    @classmethod
    def completed(cls, given):
        """``epochs`` set alone: the sparsity schedule (start_epoch, ramp_epochs) follows it."""
        return scaled_schedule(given, cls, epochs="epochs", start="start_epoch", length="ramp_epochs")

    def validate(self) -> None:
        if self.start_epoch + self.ramp_epochs > self.epochs:
            raise ConfigError(
                f"prune: the schedule ends at epoch {self.start_epoch + self.ramp_epochs} but training "
                f"has {self.epochs} epochs; valid: start_epoch + ramp_epochs <= epochs")
        if self.initial_sparsity > self.final_sparsity:
            raise ConfigError("prune: initial_sparsity must not exceed final_sparsity")


class Prune(Method):
    name = "prune"
    spiking = False
    is_transform = True
    trains = True
    default_model = "cnn7"
    smoke_sets = {"epochs": "4", "start_epoch": "1", "ramp_epochs": "2", "final_sparsity": "0.8"}
    Params = PruneParams
    metrics = (
        MetricSpec("prune/ann/test/accuracy", "test accuracy of the pruned ANN alone", "fraction", "max", 0, 1),
        MetricSpec("prune/connection_sparsity", "zero weights ÷ weights after pruning", "fraction", None, 0, 1),
        MetricSpec("prune/sparsity", "connection sparsity after each fine-tuning epoch", "fraction", None, 0, 1,
                   curve=True),
    ) + fine_tuning_curves("prune")

    @classmethod
    def search_space(cls, trial):
        return cls.Params(final_sparsity=trial.suggest_float("final_sparsity", 0.0, 0.95))

    def prepare(self, ctx, ann, params):
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import ModelPruning

        from ..training import Classifier, fit

        model = copy.deepcopy(ann).cpu().train()
        targets = [(m, "weight") for m in model.modules() if isinstance(m, SYNAPTIC_TYPES)]
        p = params

        def amount(epoch: int) -> float:
            return pruning_amount(epoch, p.initial_sparsity, p.final_sparsity, p.start_epoch, p.ramp_epochs)

        history: list[float] = []

        class SparsityLog(pl.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                history.append(connection_sparsity(pl_module.model))

        module = Classifier(model, lr=p.lr)
        pruning = ModelPruning("l1_unstructured", parameters_to_prune=targets, amount=amount,
                               use_global_unstructured=True, use_lottery_ticket_hypothesis=False,
                               make_pruning_permanent=True)
        fit(ctx, module, p.epochs, callbacks=[pruning, SparsityLog()], stage="prune")
        pruned = module.model.eval()
        alone = ctx.evaluate(pruned, desc="evaluate pruned ANN", what="the pruned ANN")
        steps = {"prune/sparsity": history, **{f"prune/{k}": v for k, v in module.history.items()}}
        return Preparation(pruned, metrics={"prune/ann/test/accuracy": alone.metrics["test/accuracy"],
                                            "prune/connection_sparsity": alone.metrics["connection_sparsity"]},
                           step_metrics=steps)
