"""A time-stepped simulation of a TTFS network, written from the paper's equations on the
discrete clock: the reference the closed form (:mod:`.network`) is checked against (tests) and
timed against (benchmarks). It imports nothing of the TTFS implementation, only the traced graph:
its encoding, bias potential, scales and firing rule are its own.

Per step t = 0 … T−1 (T = t_max):

* input (eq. 1): a value x ∈ [0, x_max] is one spike at step t = ⌈T·(x_max − x)/x_max⌉; a spike
  at step T or later is no spike (x ≤ 0);
* silent stage (eqs. 2–3): every input spike at step t_j adds its weight to the potential's slope
  from step t_j on; the potential starts at the bias charge b·T/λ_in, so after T steps it is
  u = Σ_j W_ij (T − t_j) + b_i·T/λ_in. Inputs of different scales (after a concatenation) weigh
  their spikes by λ_j/λ_in, λ_in the largest;
* spiking stage (eq. 4): charged by I_ext = u_th/T, the neuron fires at the first step τ with
  u + τ·I_ext ≥ u_th (never if that takes T steps or more), once; its scale is λ = u_th·λ_in/T;
* max pooling passes the earliest spike of its window; flatten, dropout and concatenation move
  spikes as they are; the readout layer's potential, × λ_in/T, gives the logits.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...graph import Graph, Kind, Op, apply_op


def _per_step(op: Op, seqs: list[torch.Tensor]) -> torch.Tensor:
    """A stateless op on ``[T, B, ...]`` sequences (time folded into the batch)."""
    T, B = seqs[0].shape[:2]
    y = apply_op(op, [s.reshape(T * B, *s.shape[2:]) for s in seqs])
    return y.reshape(T, B, *y.shape[1:])


def input_spikes(x: torch.Tensor, T: int, x_max: float) -> torch.Tensor:
    """``[T, B, ...]``: one spike per input at step ⌈T·(x_max − x)/x_max⌉ if that is before T."""
    step = torch.ceil(T * (x_max - x) / x_max).clamp(min=0)
    t = torch.arange(T, dtype=x.dtype).view(-1, *([1] * x.dim()))
    return (t == step.unsqueeze(0)).to(x.dtype)


@torch.no_grad()
def simulate(graph: Graph, u_th: dict[str, float], t_max: int, x: torch.Tensor,
             x_max: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every neuron op's codes (T − spike step, 0 = silent), in topological order, of
    the folded ``graph`` with thresholds ``u_th`` (see the module docstring)."""
    T = t_max
    spikes: dict[str, torch.Tensor] = {graph.input.name: input_spikes(x, T, x_max)}
    scale: dict[str, torch.Tensor] = {graph.input.name: torch.full((1, *graph.input.shape), float(x_max),
                                                                   dtype=torch.float64)}
    potential: dict[str, torch.Tensor] = {}
    codes: list[torch.Tensor] = []
    for op in graph:
        if op.kind in (Kind.INPUT, Kind.OUTPUT, Kind.SHAPE):
            continue
        if op.kind == Kind.SYNAPSE:
            potential[op.name], scale[op.name] = _silent_stage(op, spikes[op.inputs[0]], scale[op.inputs[0]], T)
        elif op.kind == Kind.NEURON:
            u, lam_in = potential[op.inputs[0]], float(scale[op.inputs[0]].max())
            spikes[op.name] = _spiking_stage(u, u_th[op.name], T)
            fired, first = spikes[op.name].any(0), spikes[op.name].argmax(0).to(u.dtype)
            codes.append(torch.where(fired, T - first, torch.zeros_like(first)))
            scale[op.name] = torch.full((1, *op.shape), u_th[op.name] * lam_in / T, dtype=torch.float64)
        elif op.inputs and op.inputs[0] in potential:  # after the readout layer: potentials move
            potential[op.name] = apply_op(op, [potential[i] for i in op.inputs])
            scale[op.name] = scale[op.inputs[0]]
        else:
            scale[op.name] = apply_op(op, [scale[i] for i in op.inputs])
            if op.kind == Kind.MAXPOOL:  # the earliest spike: pool "has fired by t", then its steps
                fired_by = _per_step(op, [spikes[op.inputs[0]].cumsum(0)])
                spikes[op.name] = torch.diff(fired_by, dim=0, prepend=torch.zeros_like(fired_by[:1]))
            else:
                spikes[op.name] = _per_step(op, [spikes[i] for i in op.inputs])
    feed = graph.output.inputs[0]
    return potential[feed] * (float(scale[feed].max()) / T), codes


def _silent_stage(op: Op, s: torch.Tensor, lam: torch.Tensor, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The potential after T steps and the layer's reference scale (module docstring)."""
    layer: Any = op.layer
    lam_in = float(lam.max())
    rel = (lam / lam_in).to(s.dtype)
    weight = layer.weight.detach().to(s.dtype)
    bias = getattr(layer, "bias", None)

    def synaptic(v: torch.Tensor) -> torch.Tensor:  # the layer's linear map, without bias
        if isinstance(layer, torch.nn.Linear):
            return torch.nn.functional.linear(v, weight)
        conv: Any = torch.nn.functional.conv2d if weight.dim() == 4 else torch.nn.functional.conv1d
        return conv(v, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    slope = torch.zeros_like(synaptic(s[0]))
    u = slope.clone()
    if isinstance(bias, torch.Tensor):
        charge = bias.detach().to(s.dtype) * (T / lam_in)
        u = u + (charge.view(-1, *([1] * (u.dim() - 2))) if u.dim() > 2 else charge)
    for t in range(T):
        slope = slope + synaptic(s[t] * rel)
        u = u + slope
    return u, torch.tensor(lam_in, dtype=torch.float64)


def _spiking_stage(u: torch.Tensor, u_th: float, T: int) -> torch.Tensor:
    """``[T, ...]`` spikes: the first step τ < T with u + τ·u_th/T ≥ u_th, once."""
    if not math.isfinite(u_th) or u_th <= 0:
        raise ValueError(f"threshold {u_th}: a TTFS threshold is a positive number")
    current = u_th / T
    out = torch.zeros((T, *u.shape), dtype=u.dtype)
    fired = torch.zeros_like(u, dtype=torch.bool)
    for tau in range(T):
        now = (u + tau * current >= u_th) & ~fired
        out[tau] = now.to(u.dtype)
        fired |= now
    return out
