"""The ANN-side half of the paper's sparsity: fewer neurons with a positive activation.

A converted TTFS network fires one spike per neuron whose ANN activation is positive, so its
spikes per neuron cannot fall below the ANN's fraction of positive activations (0.536 for the
default ttfs-cnn on mnist-5k). The paper reaches 0.142 "by adapting the ReLU activation function";
here the trained ANN is fine-tuned for ``sparsity_epochs`` with a penalty that *is* that fraction,
made differentiable: for each hidden ReLU layer l with n_l neurons (N in all),

    penalty = Σ_l (n_l / N) · mean_i  a_i / (a_i + ε_l),      ε_l = sparsity_eps · mean(a | a > 0)

a_i / (a_i + ε) is 0 at a = 0 and tends to 1 above ε, so the penalty approximates spikes per neuron;
its gradient ε / (a + ε)² is largest for small positive activations, which it moves below zero (the
cheapest spikes to silence), and the detached, per-batch ε_l makes it independent of a layer's
scale. The loss is cross-entropy + ``sparsity`` · penalty. The run's ANN baseline stays the
unmodified ANN, so ``test/accuracy_drop`` is measured against it.

Written here because neither Lightning nor torch has an activation-count penalty; the training
loop itself is the harness's Lightning ``Classifier``.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ...errors import ConfigError


class ActivityPenalty:
    """Collects the hidden ReLU outputs of a forward pass and turns them into the penalty."""

    def __init__(self, model: nn.Module, eps: float):
        self.eps, self.outputs = eps, list[torch.Tensor]()
        self.relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        self.hooks = [m.register_forward_hook(lambda _m, _i, out: self.outputs.append(out)) for m in self.relus]

    def __call__(self) -> torch.Tensor:
        sizes = [a[0].numel() for a in self.outputs]
        total = float(sum(sizes))
        terms = []
        for a, n in zip(self.outputs, sizes):
            positive = a[a > 0]
            eps = self.eps * (positive.mean().detach() if positive.numel() else a.new_tensor(1.0))
            terms.append((n / total) * (a / (a + eps)).mean())
        self.outputs.clear()
        return torch.stack(terms).sum()

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def sparsified(ctx, ann: nn.Module, params) -> tuple[nn.Module, dict, str]:
    """The ANN fine-tuned with the activity penalty (cached: ``<cache>/ttfs-sparse/``)."""
    from ...finetune import cached_fine_tune, fine_tune_path
    from ...training import Classifier, fit

    start = copy.deepcopy(ann).cpu()
    if not any(isinstance(m, nn.ReLU) for m in start.modules()):
        raise ConfigError(f"ttfs: sparsity needs the network's ReLUs as nn.ReLU modules; {ctx.model_name} has none")

    def train(model: nn.Module):
        penalty = ActivityPenalty(model, params.sparsity_eps)

        def loss(logits, y):
            ce = nn.functional.cross_entropy(logits, y)
            return ce + params.sparsity * penalty() if penalty.outputs else ce

        try:
            return fit(ctx, Classifier(model.train(), lr=params.sparsity_lr, loss_fn=loss), params.sparsity_epochs,
                       stage="ttfs_sparse")
        finally:
            penalty.remove()

    knobs = {k: getattr(params, k) for k in ("sparsity", "sparsity_eps", "sparsity_epochs", "sparsity_lr")}
    path = fine_tune_path(ctx, "ttfs-sparse", start, knobs, (Path(__file__), Path(__file__).parent.parent.parent /
                                                              "training.py"))
    return cached_fine_tune(path, start, train, "sparse TTFS ANN")
