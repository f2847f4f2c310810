"""Whetstone's layers (sandia-*), reimplemented in PyTorch because Whetstone is Keras-only: the
sharpenable activations, the N-hot output decoder and the input encodings (see
:mod:`harness.methods.sharpen`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...graph import Kind, register_module_kind

SIGMOID_K = 4.0 * math.log(2.0 + math.sqrt(3.0))
EPSILON = 0.001


class SharpenableActivation(nn.Module):
    """Whetstone's ``Spiking_BRelu`` / ``Spiking_Sigmoid``; ``sharpness`` is a buffer in [0, 1]."""

    sharpness: torch.Tensor

    def __init__(self, kind: str = "brelu"):
        super().__init__()
        self.kind = kind
        self.register_buffer("sharpness", torch.tensor(0.0))
        # set by the straight-through fine-tuning (``finetune_epochs``): a step function forward,
        # the unsharpened activation's gradient backward
        self.straight_through = False

    @property
    def threshold(self) -> float:
        return 0.5 if self.kind == "brelu" else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = float(self.sharpness)
        if s >= 1.0:
            if self.straight_through and torch.is_grad_enabled():
                return _StraightThrough.apply(x, self.kind, self.threshold)
            return (x >= self.threshold).to(x)
        return self._bounded(x, s)

    def _bounded(self, x: torch.Tensor, s: float) -> torch.Tensor:
        width = 1.0 - s + EPSILON
        if self.kind == "brelu":
            return ((x - 0.5) / width + 0.5).clamp(0.0, 1.0)
        return torch.sigmoid(x * (SIGMOID_K / width))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, sharpness={float(self.sharpness):.3f}"


class _StraightThrough(torch.autograd.Function):
    """The step function forward (exactly); backward, the gradient of the same activation at
    sharpness 0 (bounded ReLU: 1/(1 + ε) where it is not clipped; sigmoid: its slope). Written by hand:
    a ``soft + (step − soft).detach()`` would round the forward value away from 0 and 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str, threshold: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.kind = kind
        return (x >= threshold).to(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        width = 1.0 + EPSILON
        if ctx.kind == "brelu":
            inside = ((x - 0.5) / width + 0.5 > 0.0) & ((x - 0.5) / width + 0.5 < 1.0)
            return grad * inside.to(grad) / width, None, None
        k = SIGMOID_K / width
        sig = torch.sigmoid(k * x)
        return grad * k * sig * (1.0 - sig), None, None


class NHotDecode(nn.Module):
    """Whetstone's ``Softmax_Decode`` with a non-overlapping key: logits = (2y − 1)(2K − 1)ᵀ."""

    key: torch.Tensor

    def __init__(self, num_classes: int, n_hot: int):
        super().__init__()
        key = torch.zeros(num_classes, num_classes * n_hot)
        for c in range(num_classes):
            key[c, c * n_hot:(c + 1) * n_hot] = 1.0
        self.register_buffer("key", 2.0 * key - 1.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (2.0 * y - 1.0) @ self.key.t()

    def decide(self, votes: torch.Tensor, potential: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions from the decoded ``votes`` [B, C] and the readout neurons' ``potential``
        [B, C·n_hot] (see the module docstring), and which samples tie at the top."""
        top = votes.max(-1, keepdim=True).values
        tied = votes == top
        ties = tied.sum(-1) > 1
        if rule == "first":
            return votes.argmax(-1), ties  # torch's argmax returns the first maximum, as Keras's
        owned = self.owned(potential)
        return torch.where(tied, owned, torch.full_like(owned, -math.inf)).argmax(-1), ties

    def owned(self, potential: torch.Tensor) -> torch.Tensor:
        """Per class, the summed potential of the readout neurons it owns: ``[B, C]``."""
        return potential.reshape(potential.shape[0], -1) @ ((self.key.t() + 1.0) / 2.0)


class InputEncoding(nn.Module):
    """``binary`` / ``contours`` / ``current`` (see the module docstring); images in [0, 1]."""

    sobel: torch.Tensor

    def __init__(self, kind: str, binary_threshold: float = 0.5, contour_threshold: float = 1.0):
        super().__init__()
        self.kind, self.binary_threshold, self.contour_threshold = kind, binary_threshold, contour_threshold
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1))  # [2, 1, 3, 3]

    @property
    def spiking(self) -> bool:
        return self.kind != "current"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "current":
            return x
        if self.kind == "binary":
            return (x >= self.binary_threshold).to(x)
        c = x.shape[1]
        g = nn.functional.conv2d(x.reshape(-1, 1, *x.shape[2:]), self.sobel, padding=1)
        mag = g.pow(2).sum(1, keepdim=True).sqrt().reshape(x.shape[0], c, *x.shape[2:])
        return (mag >= self.contour_threshold).to(x)


def layer_sharpness(value: float, n: int, bottom_up: bool) -> list[float]:
    """Whetstone's ``set_model_sharpness``: the network's sharpness as per-layer values."""
    value = min(max(value, 0.0), 1.0)
    if not bottom_up:
        return [value] * n
    if value >= 1.0:
        return [1.0] * n
    done, rest = divmod(value * n, 1.0)
    done = int(done)
    return [1.0] * done + [rest] + [0.0] * (n - done - 1)




def set_sharpness(acts: list[tuple[str, SharpenableActivation]], values: list[float]) -> None:
    for (_, m), v in zip(acts, values):
        m.sharpness.fill_(v)



register_module_kind(SharpenableActivation, Kind.NEURON)
register_module_kind(InputEncoding, Kind.ENCODER)
register_module_kind(NHotDecode, Kind.DECODE)
