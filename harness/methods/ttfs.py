"""ttfs — time-to-first-spike single-spike conversion (López-Randulfe, Reeb & Knoll).

Encoding (eq. 1): a value x in [0, λ] is one spike at t = t_max/λ · (λ − x). On the discrete clock
of this implementation a spike carries the integer code k = t_max − t ∈ {1 … t_max}; k = 0 means
*no spike* (value 0: zero and negative values are the absence of a spike). Quantisation is
k = clip(floor(t_max · x / λ), 0, t_max).

Two-stage neuron, per layer l with input scale λ_{l−1} and threshold u_th:

* silent stage (t ∈ [0, t_max)): u_i(t) = Σ_j W_ij (t − t_j) over inputs that have spiked, plus
  the bias as an initial membrane potential b_i · t_max / λ_{l−1}. At t_max,
  u_i = Σ_j W_ij k_j + t_max b_i / λ_{l−1} = t_max / λ_{l−1} · (W x + b)_i   (eq. 3).
* spiking stage: charged by I_ext = u_th / t_max (eq. 4); the neuron fires at the first step
  τ ∈ [0, t_max) with u + τ · I_ext ≥ u_th, i.e. τ ≥ c = (u_th − u) / I_ext. Non-positive potentials never reach threshold inside the window (the ReLU); potentials above
  u_th fire at τ = 0 (saturation). At most one spike per neuron; the output code is t_max − τ,
  the same encoding as the input, with λ_l = u_th · λ_{l−1} / t_max, so layers stack.

Max-pooling passes the earliest spike (the largest code). The readout layer has no spiking stage:
its silent-stage potential, scaled back by λ_{l−1}/t_max, gives the logits. Latency is
t_max · (hidden layers + 1) time steps.

Two evaluators compute this: :meth:`TTFSNetwork.closed_form` (vectorised, one linear op per layer,
used by runs and studies) and :meth:`TTFSNetwork.stepped` (a time-stepped simulation of both
stages, the reference). They share the threshold comparison, so spike times agree exactly
whenever the two ways of summing the silent-stage potential agree (always for weights exactly
representable in binary; tests cover random float64 networks and the edge cases).

Thresholds u_th are calibrated per layer from training data as a percentile of the positive
silent-stage potentials (the paper tunes u_th below u_max = t_max · Σ W⁺ for resolution),
times optional per-layer scale factors; explicit values can be given with ``u_th``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..api import Evaluation, Method
from ..config import Params, param
from ..errors import ConfigError
from ..meters import Meters
from ..netparse import Block, parse_blocks

def parse_stages(model: nn.Module) -> list[Block]:
    """TTFS blocks: max-pooling (earliest spike) is the only pooling with a single-spike meaning."""
    return parse_blocks(model, "ttfs", (nn.MaxPool2d,))


def _linear_op(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    w = layer.weight.to(x.dtype)
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, w)
    return nn.functional.conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _bias_offset(layer: nn.Module, t_max: int, lam_in: float, dtype, ndim: int) -> torch.Tensor | float:
    """The bias as an initial membrane potential: t_max · b / λ_in, broadcast over the output."""
    if layer.bias is None:
        return 0.0
    b = layer.bias.detach().to(dtype) * (t_max / lam_in)
    return b.view(-1, *([1] * (ndim - 2))) if ndim > 2 else b


def steps_to_threshold(u: torch.Tensor, u_th: torch.Tensor, t_max: int) -> torch.Tensor:
    """c = (u_th − u) / I_ext with I_ext = u_th / t_max: the neuron fires at the first step τ ≥ c.

    Both evaluators compare integer steps against this same number, so they agree bit for bit.
    """
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


def encode(x: torch.Tensor, t_max: int, x_max: float, out_of_range: str) -> torch.Tensor:
    """Input codes k = clip(floor(t_max · x / x_max), 0, t_max) (eq. 1 on the discrete clock)."""
    if out_of_range == "error":
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > x_max:
            raise ConfigError(f"ttfs: inputs span [{lo:g}, {hi:g}], outside [0, x_max={x_max:g}]; "
                              "set x_max or out_of_range=clip")
    return torch.floor(x * (t_max / x_max)).clamp_(0, t_max)


class TTFSNetwork(nn.Module):
    """A converted network: the ANN's weights plus one threshold per spiking layer."""

    def __init__(self, ann: nn.Module, t_max: int, x_max: float = 1.0, out_of_range: str = "error",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.ann = ann.eval()
        self.stages = parse_stages(ann)
        self.t_max, self.x_max, self.out_of_range, self.dtype = t_max, x_max, out_of_range, dtype
        self.u_th: list[float] = [float("nan")] * self.n_hidden

    @property
    def n_hidden(self) -> int:
        return len(self.stages) - 1

    @property
    def latency(self) -> int:
        return self.t_max * (self.n_hidden + 1)

    def scales(self) -> list[float]:
        """λ_l for the input (index 0) and every hidden layer."""
        lam = [self.x_max]
        for th in self.u_th:
            lam.append(th * lam[-1] / self.t_max)
        return lam

    def _potential(self, i: int, k: torch.Tensor, lam_in: float) -> torch.Tensor:
        st = self.stages[i]
        u = _linear_op(st.layer, k)
        return u + _bias_offset(st.layer, self.t_max, lam_in, k.dtype, u.dim())

    # ---- evaluators ----------------------------------------------------------------------------
    @torch.no_grad()
    def closed_form(self, x: torch.Tensor, meters: Meters | None = None, keep_codes: bool = False):
        """Logits (and, with ``keep_codes``, every hidden layer's output codes, before pooling)."""
        T = self.t_max
        k = encode(x.to(self.dtype), T, self.x_max, self.out_of_range)
        lams = self.scales()
        codes = []
        for i, st in enumerate(self.stages):
            for _, m in st.pre:
                k = m(k)
            if meters is not None:
                meters.record_synapse(st.name, st.layer, (k > 0).float(), spikes=True)
            u = self._potential(i, k, lams[i])
            if st.neuron is None:
                return (u * (lams[i] / T), codes) if keep_codes else u * (lams[i] / T)
            k = fire_codes(u, torch.tensor(self.u_th[i], dtype=u.dtype, device=u.device), T)
            if meters is not None:
                spikes = float((k > 0).sum())
                meters.record_neuron_counts(st.neuron, spikes=spikes, entries=float(k.numel()),
                                            zeros=float(k.numel()) - spikes, kind="TTFS two-stage")
            codes.append(k)
        raise AssertionError("unreachable: parse_stages guarantees a readout")

    @torch.no_grad()
    def stepped(self, x: torch.Tensor):
        """Time-stepped simulation of both stages on the discrete clock (the reference).

        Returns logits and every hidden layer's output codes (t_max − spike step, 0 = silent).
        """
        T = self.t_max
        k = encode(x.to(self.dtype), T, self.x_max, self.out_of_range)
        t_idx = torch.arange(T, device=k.device).view(-1, *([1] * k.dim())).to(k.dtype)
        spikes = (t_idx == (T - k)).to(k.dtype)  # [T, B, ...]: one spike at t = T − k (none if k = 0)
        lams = self.scales()
        codes = []
        for i, st in enumerate(self.stages):
            for _, m in st.pre:
                if isinstance(m, nn.MaxPool2d):  # earliest spike: pool "has fired by t", then difference
                    has_fired = torch.stack([m(c) for c in spikes.cumsum(0)])
                    spikes = torch.diff(has_fired, dim=0, prepend=torch.zeros_like(has_fired[:1]))
                else:
                    spikes = torch.stack([m(s) for s in spikes])
            # silent stage: slope g(t) = Σ_{t_j ≤ t} W_ij, u(t + 1) = u(t) + g(t)
            g = torch.zeros_like(_linear_op(st.layer, spikes[0]))
            u = g + _bias_offset(st.layer, T, lams[i], g.dtype, g.dim())
            for t in range(T):
                g = g + _linear_op(st.layer, spikes[t])
                u = u + g
            if st.neuron is None:
                return u * (lams[i] / T), codes
            # spiking stage: charge with I_ext = u_th / t_max, fire once when u + τ·I_ext ≥ u_th
            c = steps_to_threshold(u, torch.tensor(self.u_th[i], dtype=u.dtype, device=u.device), T)
            fired = torch.zeros_like(u, dtype=torch.bool)
            out = torch.zeros((T, *u.shape), dtype=u.dtype, device=u.device)
            for tau in range(T):
                now = (c <= tau) & ~fired
                out[tau] = now.to(u.dtype)
                fired |= now
            spikes = out
            first = out.argmax(0).to(out.dtype)  # step of the (only) spike
            codes.append(torch.where(out.any(0), T - first, torch.zeros_like(first)))
        raise AssertionError("unreachable: parse_stages guarantees a readout")

    # ---- calibration ---------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, percentile: float, scales: tuple[float, ...] = (),
                  explicit: tuple[float, ...] = (), max_values: int = 2_000_000, seed: int = 0) -> None:
        """Set u_th layer by layer from the positive silent-stage potentials of ``x``."""
        T = self.t_max
        gen = torch.Generator().manual_seed(seed)
        k = encode(x.to(self.dtype), T, self.x_max, self.out_of_range)
        lam = self.x_max
        for i, st in enumerate(self.stages[:-1]):
            for _, m in st.pre:
                k = m(k)
            u = self._potential(i, k, lam)
            if explicit:
                th = explicit[i]
            else:
                pos = u[u > 0].flatten().cpu()
                if pos.numel() == 0:
                    th = float(T)  # a silent layer: any threshold gives the same (empty) output
                else:
                    if pos.numel() > max_values:
                        pos = pos[torch.randint(pos.numel(), (max_values,), generator=gen)]
                    th = float(torch.quantile(pos.double(), percentile / 100.0))
                th *= scales[i] if i < len(scales) else 1.0
            self.u_th[i] = th
            k = fire_codes(u, torch.tensor(th, dtype=u.dtype, device=u.device), T)
            lam = th * lam / T


class TTFS(Method):
    name = "ttfs"
    default_model = "ttfs-cnn"
    smoke_sets = {"t_max": "16", "t_max_sweep": "8,16", "fig2_t_max": "8,16", "fig2_fractions": "0.1,0.5"}

    @dataclass(frozen=True)
    class Params(Params):
        t_max: int = param(64, "time steps of each stage (resolution vs latency and cost)", low=1, high=100_000)
        percentile: float = param(99.9, "u_th = this percentile of a layer's positive silent-stage potentials",
                                  low=0, low_open=True, high=100)
        threshold_scale: float = param(1.0, "factor on every calibrated u_th", low=0, low_open=True)
        threshold_scales: tuple[float, ...] = param((), "per-layer factors on u_th (hidden layers in order)",
                                                    low=0, low_open=True)
        u_th: tuple[float, ...] = param((), "explicit per-layer thresholds (potential units); empty = calibrate",
                                        low=0, low_open=True)
        x_max: float = param(1.0, "input range [0, x_max] of the TTFS input encoding", low=0, low_open=True)
        out_of_range: Literal["error", "clip"] = param("error", "inputs outside [0, x_max]: refuse or clip")
        calibration_samples: int = param(1000, "training images used to calibrate u_th", low=1)
        precision: Literal["float32", "float64"] = param("float32", "arithmetic of the evaluators")
        t_max_sweep: tuple[int, ...] = param((8, 16, 32, 64, 128),
                                             "also log test accuracy at these t_max (recalibrated)", low=1)
        fig2: bool = param(True, "save the paper's Fig. 2: the first layer's RMSE over t_max x u_th")
        fig2_t_max: tuple[int, ...] = param((8, 16, 32, 64, 128), "Fig. 2 grid: t_max values", low=1)
        fig2_fractions: tuple[float, ...] = param((0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
                                                  "Fig. 2 grid: u_th as a fraction of u_max", low=0,
                                                  low_open=True, high=1)
        fig2_samples: int = param(256, "validation images for Fig. 2", low=1)

    @classmethod
    def search_space(cls, trial):
        return cls.Params(
            t_max=trial.suggest_categorical("t_max", [8, 16, 32, 64, 128]),
            percentile=trial.suggest_float("percentile", 99.0, 100.0),
            threshold_scale=trial.suggest_float("threshold_scale", 0.5, 1.5),
            t_max_sweep=(), fig2=False,
        )

    def check(self, ctx, params):
        from ..models import build_model

        ds = ctx.dataset
        stages = parse_stages(build_model(ctx.model_name, ds.input_shape, ds.num_classes))
        n_hidden = len(stages) - 1
        for key in ("threshold_scales", "u_th"):
            values = getattr(params, key)
            if values and len(values) != n_hidden:
                raise ConfigError(f"ttfs: {key} has {len(values)} values but {ctx.model_name} has {n_hidden} "
                                  f"spiking layers ({', '.join(s.name for s in stages[:-1])})")

    def _dtype(self, params):
        return torch.float64 if params.precision == "float64" else torch.float32

    def _calibrated(self, ctx, ann, params, t_max: int) -> TTFSNetwork:
        net = TTFSNetwork(ann, t_max, params.x_max, params.out_of_range, self._dtype(params))
        x, _ = ctx.dataset.subset("train", params.calibration_samples)
        net.calibrate(torch.from_numpy(x).to(ctx.device), params.percentile,
                      tuple(s * params.threshold_scale for s in params.threshold_scales)
                      or (params.threshold_scale,) * net.n_hidden, params.u_th, seed=ctx.seed)
        return net

    def prepare(self, ctx, ann, params):
        return self._calibrated(ctx, ann.to(ctx.device), params, params.t_max)

    def evaluate(self, ctx, model: TTFSNetwork, params, split="test"):
        from tqdm.auto import tqdm

        meters = Meters(timesteps=1)
        for x, y in tqdm(ctx.loader(split), desc="evaluate ttfs", disable=not ctx.progress, leave=False):
            meters.record_batch(model.closed_form(x.to(ctx.device), meters), y.to(ctx.device))
        metrics, layers = meters.summary()
        # event-driven: every neuron resolves its single spike time once per inference
        metrics["neuron_updates"] = metrics["neurons"]
        metrics["timesteps"] = float(model.latency)
        metrics["t_max"] = float(model.t_max)
        lams = model.scales()
        for i, st in enumerate(model.stages[:-1]):
            metrics[f"layer/{st.neuron}/u_th"] = model.u_th[i]
            metrics[f"layer/{st.neuron}/lambda"] = lams[i + 1]
        ev = Evaluation(metrics, layers)
        if params.t_max_sweep:
            accs = []
            for T in params.t_max_sweep:
                net = model if T == model.t_max else self._calibrated(ctx, model.ann, params, T)
                accs.append(_accuracy(net, ctx.loader(split), ctx.device))
            ev.step_metrics["ttfs/test/accuracy_vs_t_max"] = accs
            ev.step_metrics["ttfs/t_max_sweep"] = [float(t) for t in params.t_max_sweep]
            path = ctx.artifact("ttfs_accuracy_vs_t_max.csv")
            path.write_text("t_max,test_accuracy\n" + "".join(f"{t},{a}\n" for t, a in zip(params.t_max_sweep, accs)))
            ev.artifacts.append(path)
        if params.fig2:
            ev.artifacts += fig2_rmse(ctx, model, params)
        return ev


@torch.no_grad()
def _accuracy(net: TTFSNetwork, loader, device: str) -> float:
    meters = Meters()
    for x, y in loader:
        meters.record_batch(net.closed_form(x.to(device)).cpu(), y)
    return meters.correct / max(meters.samples, 1)


@torch.no_grad()
def layer_rmse_grid(layer: nn.Module, x: torch.Tensor, t_values, fractions, x_max: float = 1.0) -> list[dict]:
    """Fig. 2: RMSE between a layer's ANN output ReLU(Wx + b) and its TTFS equivalent, over a grid
    of t_max × u_th, with u_th a fraction of u_max = t_max · max_i (Σ_j W⁺_ij · x_max + b⁺_i) / x_max,
    the largest potential the layer can reach (eq. 5, bias included)."""
    x = x.double()
    w = layer.weight.detach().double()
    ann_out = torch.relu(_linear_op(layer, x) + (0 if layer.bias is None else
                         layer.bias.detach().double().view(-1, *([1] * (x.dim() - 2)))))
    pos = w.clamp(min=0).flatten(1).sum(1) * x_max
    if layer.bias is not None:
        pos = pos + layer.bias.detach().double().clamp(min=0)
    rows = []
    for T in t_values:
        u_max = T * float(pos.max()) / x_max
        k = encode(x, T, x_max, "clip")
        u = _linear_op(layer, k) + _bias_offset(layer, T, x_max, torch.float64, x.dim())
        for f in fractions:
            th = f * u_max
            codes = fire_codes(u, torch.tensor(th, dtype=u.dtype), T)
            lam = th * x_max / T
            snn_out = codes * (lam / T)
            rmse = float(torch.sqrt(torch.mean((snn_out - ann_out) ** 2)))
            rows.append(dict(t_max=T, u_th_fraction=f, u_th=th, u_max=u_max, rmse=rmse))
    return rows


def fig2_rmse(ctx, model: TTFSNetwork, params) -> list:
    import csv

    stage = model.stages[0]  # the layer that reads the encoded input, as in the paper
    x, _ = ctx.dataset.subset("val", params.fig2_samples)
    rows = layer_rmse_grid(stage.layer, torch.from_numpy(x).to(ctx.device), params.fig2_t_max, params.fig2_fractions, params.x_max)
    csv_path = ctx.artifact("ttfs_fig2_rmse.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    png = ctx.artifact("ttfs_fig2_rmse.png")
    _heatmap(rows, png, stage.name)
    return [csv_path, png]


def _heatmap(rows: list[dict], path, layer_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(rows).pivot(index="u_th_fraction", columns="t_max", values="rmse").sort_index(ascending=False)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sns.heatmap(df, annot=True, fmt=".3f", cmap="viridis_r", ax=ax, cbar_kws={"label": "RMSE (activation units)"})
    ax.set_xlabel("t_max (time steps)")
    ax.set_ylabel("u_th / u_max")
    ax.set_title(f"TTFS conversion error of layer {layer_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


