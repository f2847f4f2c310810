"""TTFS coding on the discrete clock: the input encoding (eq. 1), the spiking stage's firing rule
(eq. 4), and the synaptic layers' linear maps as the two-stage neuron sees them (see
:mod:`harness.methods.ttfs`)."""

from __future__ import annotations

from typing import Any, TypeAlias

import torch
from torch import nn

from ...errors import ConfigError
from ...graph import weight_of

Scale: TypeAlias = float | torch.Tensor  # λ of a code tensor: one number, or one per element (after a cat)


def encode(x: torch.Tensor, t_max: int, x_max: float, out_of_range: str) -> torch.Tensor:
    """Input codes k = clip(floor(t_max · x / x_max), 0, t_max) (eq. 1 on the discrete clock);
    ``out_of_range="error"`` refuses inputs outside [0, x_max]."""
    if out_of_range == "error":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > x_max:
            raise ConfigError(f"ttfs: inputs span [{lo:g}, {hi:g}], outside [0, x_max={x_max:g}]; "
                              "set x_max or out_of_range=clip")
    return torch.floor(x * (t_max / x_max)).clamp_(0, t_max)


def steps_to_threshold(u: torch.Tensor, u_th: torch.Tensor, t_max: int) -> torch.Tensor:
    """c = (u_th − u) / I_ext with I_ext = u_th / t_max: the neuron fires at the first step τ ≥ c."""
    c = u.neg()
    c += u_th
    c *= t_max
    c /= u_th
    return c


def fire_codes(u: torch.Tensor, u_th: torch.Tensor, t_max: int) -> torch.Tensor:
    """Closed-form spiking stage: code t_max − τ of the first step τ ∈ [0, t_max) with τ ≥ c,
    i.e. τ = ceil(c), or 0 (no spike). In place: this is the hot loop."""
    tau = steps_to_threshold(u, u_th, t_max).ceil_().clamp_(min=0)
    return tau.neg_().add_(t_max).clamp_(min=0)


def linear_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``layer``'s linear map without its bias (optionally with another weight tensor)."""
    w = (weight_of(layer) if weight is None else weight).to(x.dtype)
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, w)
    conv: Any = nn.functional.conv2d if isinstance(layer, nn.Conv2d) else nn.functional.conv1d
    c: Any = layer
    return conv(x, w, None, c.stride, c.padding, c.dilation, c.groups)


def bias_of(layer: nn.Module) -> torch.Tensor | None:
    b = getattr(layer, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def bias_offset(layer: nn.Module, t_max: int, lam_in: float, dtype, ndim: int) -> torch.Tensor | float:
    """The bias as an initial membrane potential: t_max · b / λ_in, broadcast over the output."""
    bias = bias_of(layer)
    if bias is None:
        return 0.0
    b = bias.detach().to(dtype) * (t_max / lam_in)
    return b.view(-1, *([1] * (ndim - 2))) if ndim > 2 else b


def ref_scale(scale: Scale) -> float:
    """The one λ a layer's potential is expressed in: the largest of its inputs' scales."""
    return float(scale.max()) if isinstance(scale, torch.Tensor) else float(scale)
