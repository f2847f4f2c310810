"""The paper's Fig. 2: how well one TTFS layer reproduces its ANN layer over a grid of t_max and
thresholds (see :mod:`harness.methods.ttfs`)."""

from __future__ import annotations

import torch
from torch import nn

from ...api import Artifact
from ...graph import Kind, apply_op, weight_of
from ...io import write_csv
from .coding import bias_of, bias_offset, encode, fire_codes, linear_op
from .network import TTFSNetwork


@torch.no_grad()
def layer_rmse_grid(layer: nn.Module, x: torch.Tensor, t_values, fractions, x_max: float = 1.0) -> list[dict]:
    """Fig. 2: RMSE between a layer's ANN output ReLU(Wx + b) and its TTFS equivalent, over a grid
    of t_max × u_th, with u_th a fraction of u_max = t_max · max_i (Σ_j W⁺_ij · x_max + b⁺_i) / x_max,
    the largest potential the layer can reach (eq. 5, bias included)."""
    x = x.double()
    w = weight_of(layer).detach().double()
    bias = bias_of(layer)
    ann_out = torch.relu(linear_op(layer, x, w) + (0 if bias is None else
                         bias.detach().double().view(-1, *([1] * (x.dim() - 2)))))
    pos = w.clamp(min=0).flatten(1).sum(1) * x_max
    if bias is not None:
        pos = pos + bias.detach().double().clamp(min=0)
    rows = []
    for T in t_values:
        u_max = T * float(pos.max()) / x_max
        k = encode(x, T, x_max, "clip")
        u = linear_op(layer, k, w) + bias_offset(layer, T, x_max, torch.float64, x.dim())
        for f in fractions:
            th = f * u_max
            codes = fire_codes(u, torch.tensor(th, dtype=u.dtype), T)
            lam = th * x_max / T
            snn_out = codes * (lam / T)
            rmse = float(torch.sqrt(torch.mean((snn_out - ann_out) ** 2)))
            rows.append(dict(t_max=T, u_th_fraction=f, u_th=th, u_max=u_max, rmse=rmse))
    return rows


def fig2_rmse(ctx, net: TTFSNetwork, params) -> Artifact:
    """The grid of :func:`layer_rmse_grid` for the layer that reads the encoded input, as a CSV
    artifact (``harness report`` draws it)."""
    x, _ = ctx.dataset.subset("val", params.fig2_samples)
    inp, name = torch.from_numpy(x).to(ctx.device), net.graph.input.name
    for op in net.graph:  # reshapes between the input and its layer (a dense network's Flatten)
        if op.kind in (Kind.FLATTEN, Kind.IDENTITY) and op.inputs == (name,):
            inp, name = apply_op(op, [inp]), op.name
    first = next(op for op in net.graph.synapses if op.inputs[0] == name)
    rows = layer_rmse_grid(first.layer, inp, params.fig2_t_max, params.fig2_fractions, params.x_max)
    return Artifact("ttfs_fig2_rmse.csv", lambda path: write_csv(rows, path))
