"""Calibration from data: the scale of a layer's activity, read off the ANN on training images.

Conversions set thresholds (``rate``'s λ per neuron op, ``ttfs``'s u_th) from a high percentile of
the positive values a layer produces on calibration data — the maximum is an outlier of one image,
a percentile a robust stand-in for it (Rueckauer et al. 2017; SpikingJelly's ``RateCodingRecipe``).
"""

from __future__ import annotations

import torch

MAX_VALUES = 2_000_000  # values a quantile is computed from at most (a seeded sample beyond)


def positive_quantile(values: torch.Tensor, percentile: float, *, max_values: int = MAX_VALUES,
                      generator: torch.Generator | None = None, empty: float = 1.0) -> float:
    """The ``percentile`` (0–100] of the positive entries of ``values`` (linear interpolation
    between order statistics, as ``numpy.percentile``), from a uniform sample of ``max_values``
    of them when there are more (drawn with ``generator``); ``empty`` when none is positive."""
    pos = values[values > 0].flatten().cpu()
    if pos.numel() == 0:
        return float(empty)
    if percentile >= 100.0:
        return float(pos.max())
    if pos.numel() > max_values:
        pos = pos[torch.randint(pos.numel(), (max_values,), generator=generator)]
    return float(torch.quantile(pos.double(), percentile / 100.0))


def calibrate_scales(graph, x: torch.Tensor, mode: str, percentile: float, max_values: int = MAX_VALUES,
                     seed: int = 0) -> dict[str, float]:
    """λ of every neuron op of ``graph`` (a traced ANN) from its activations on ``x``: the largest
    positive activation (``mode="max"``) or the ``percentile`` of them; 1 for a layer that never
    fires (any scale gives the same, empty, output)."""
    from .graph import Kind

    gen = torch.Generator().manual_seed(seed)
    lams: dict[str, float] = {}

    def on_op(op, args, out):
        if op.kind != Kind.NEURON:
            return
        if mode == "max":
            lams[op.name] = positive_quantile(out, 100.0)
        else:
            lams[op.name] = positive_quantile(out, percentile, max_values=max_values, generator=gen)

    with torch.no_grad():
        graph.run(x, on_op)
    return lams


def calibrate_channel_percentiles(graph, x: torch.Tensor, percentile: float, max_values: int = MAX_VALUES,
                                  seed: int = 0) -> dict[str, torch.Tensor]:
    """λ per output channel (dimension 1) of every neuron op of ``graph``: the ``percentile`` of
    that channel's positive activations on ``x`` (as :func:`calibrate_scales` per layer); a channel
    that never fires gets its layer's λ (any scale gives the same, empty, output)."""
    from .graph import Kind

    gen = torch.Generator().manual_seed(seed)
    lams: dict[str, torch.Tensor] = {}

    def on_op(op, args, out):
        if op.kind != Kind.NEURON:
            return
        layer = positive_quantile(out, percentile, max_values=max_values, generator=gen)
        per = out.detach().transpose(0, 1).reshape(out.shape[1], -1)
        lams[op.name] = torch.tensor([positive_quantile(c, percentile, max_values=max_values, generator=gen,
                                                        empty=layer) for c in per])

    with torch.no_grad():
        graph.run(x, on_op)
    return lams


def calibrate_channel_ltb(graph, x: torch.Tensor, batch: int, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """λ per output channel (dimension 1) of every neuron op of ``graph``, by local threshold
    balancing (Bu, Li & Yu, CVPR 2025; the rule of SpikingJelly's ``LocalThresholdBalancingRecipe``):
    from θ = 0, for each batch of ``batch`` calibration images in order,
    θ_c ← max(θ_c + 2 · mean over the batch and positions of max(a − θ_c, 0), eps), where a is the
    ReLU's output. The threshold grows while activations overflow it, so it depends on how many
    batches it sees: measured on mnist-5k vgg-small (1 000 images, T = 8), batches of 100 left it
    far too low (accuracy 0.37), batches of 10 and 1 gave 0.968 and 0.973. As in SpikingJelly,
    each layer's output is clipped at its thresholds so far before the layers after it see it."""
    from .graph import Kind

    lams: dict[str, torch.Tensor] = {}

    def on_op(op, args, out):
        if op.kind != Kind.NEURON:
            return
        a = out.detach().clamp_min(0).float()
        dims = [d for d in range(a.dim()) if d != 1]
        theta = lams.get(op.name)
        if theta is None:
            theta = torch.zeros(a.shape[1], dtype=a.dtype, device=a.device)
        view = theta.reshape([1, -1] + [1] * (a.dim() - 2))
        theta = (theta + 2.0 * (a - view).clamp_min(0).mean(dims)).clamp_min(eps)
        lams[op.name] = theta
        return torch.minimum(a, theta.reshape(view.shape)).to(out.dtype)

    with torch.no_grad():
        for b0 in range(0, x.shape[0], batch):
            graph.run(x[b0:b0 + batch], on_op, rewrite=True)
    return {n: t.cpu() for n, t in lams.items()}
