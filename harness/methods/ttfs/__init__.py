"""ttfs — time-to-first-spike single-spike conversion (López-Randulfe, Reeb & Knoll).

Encoding (eq. 1): a value x in [0, λ] is one spike at t = t_max/λ · (λ − x). On the discrete clock
of this implementation a spike carries the integer code k = t_max − t ∈ {1 … t_max}; k = 0 means
*no spike* (value 0: zero and negative values are the absence of a spike). Quantisation is
k = clip(floor(t_max · x / λ), 0, t_max).

Two-stage neuron, per neuron op l fed by one synaptic layer with input scale λ_{l−1} and
threshold u_th:

* silent stage (t ∈ [0, t_max)): u_i(t) = Σ_j W_ij (t − t_j) over inputs that have spiked, plus
  the bias as an initial membrane potential b_i · t_max / λ_{l−1}. At t_max,
  u_i = Σ_j W_ij k_j + t_max b_i / λ_{l−1} = t_max / λ_{l−1} · (W x + b)_i   (eq. 3).
* spiking stage: charged by I_ext = u_th / t_max (eq. 4); the neuron fires at the first step
  τ ∈ [0, t_max) with u + τ · I_ext ≥ u_th, i.e. τ ≥ c = (u_th − u) / I_ext. Non-positive potentials
  never reach threshold inside the window (the ReLU); potentials above u_th fire at τ = 0
  (saturation). At most one spike per neuron; the output code is t_max − τ, the same encoding as
  the input, with λ_l = u_th · λ_{l−1} / t_max, so layers stack.

The network is the traced ANN with BatchNorm folded into the layer before it. Ops whose TTFS meaning
is a single spike are accepted: Conv/Linear layers each followed by a ReLU (or the linear readout),
max pooling (the earliest spike), flatten, dropout/identity and channel concatenation (the inputs
keep their own scales λ, folded into the next layer's weight columns). A sum of two spike times
(a residual ``add``) is not one spike, and neither is a mean of spike times (average pooling): both
are refused before training, naming the node. The readout layer has no spiking stage: its
silent-stage potential, scaled back by λ_{l−1}/t_max, gives the logits. Latency is
t_max · (the largest number of neuron layers on a path + 1) time steps.

Two evaluators compute this: :meth:`.network.TTFSNetwork.closed_form` (vectorised, one linear op per
layer, used by runs and studies) and :func:`.reference.simulate` (a time-stepped simulation of both
stages written from the equations, sharing no code with the closed form but the traced graph: the
reference). Their spike times agree exactly whenever their arithmetic is exact (weights and
thresholds representable in binary; tests cover random float64 networks and the edge cases).

Thresholds u_th are calibrated per layer from training data as a percentile of the positive
silent-stage potentials (the paper tunes u_th below u_max = t_max · Σ W⁺ for resolution),
times optional per-layer scale factors; explicit values can be given with ``u_th``. Each run also
writes the paper's Fig. 2 grid (the first layer's RMSE over t_max × u_th) as a CSV the report draws.

The package: :mod:`.coding` (encoding, firing rule, the layers' linear maps), :mod:`.network` (the
converted network, its closed form and calibration), :mod:`.fig2`, :mod:`.reference` (the oracle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ...api import Artifact, Extras, Method, Preparation
from ...config import Params, param
from ...errors import ConfigError
from ...graph import Graph
from ...io import write_csv
from ...metrics import MetricSpec, fine_tuning_curves
from .coding import encode, fire_codes, ref_scale
from .fig2 import fig2_rmse, layer_rmse_grid
from .network import TTFSEvaluable, TTFSNetwork, ttfs_problems

__all__ = ["TTFS", "TTFSEvaluable", "TTFSNetwork", "TTFSParams", "encode", "fire_codes", "layer_rmse_grid",
           "ttfs_problems"]


@dataclass(frozen=True)
class TTFSParams(Params):
    t_max: int = param(64, "time steps of each stage (resolution vs latency and cost)", low=1, high=100_000)
    percentile: float = param(99.9, "u_th = this percentile of a layer's positive silent-stage potentials",
                              low=0, low_open=True, high=100)
    threshold_scale: float = param(1.0, "factor on every calibrated u_th", low=0, low_open=True)
    threshold_scales: tuple[float, ...] = param((), "per-layer factors on u_th (neuron layers in order)",
                                                low=0, low_open=True)
    u_th: tuple[float, ...] = param((), "explicit per-layer thresholds (potential units); empty = calibrate",
                                    low=0, low_open=True)
    x_max: float = param(1.0, "input range [0, x_max] of the TTFS input encoding", low=0, low_open=True)
    out_of_range: Literal["error", "clip"] = param("error", "inputs outside [0, x_max]: refuse or clip")
    calibration_samples: int = param(1000, "training images used to calibrate u_th", low=1)
    precision: Literal["float32", "float64"] = param("float32", "arithmetic of the evaluators")
    t_max_sweep: tuple[int, ...] = param((8, 16, 32, 64, 128),
                                         "also log test accuracy at these t_max (recalibrated)", low=1)
    fig2: bool = param(True, "save the paper's Fig. 2 grid: the first layer's RMSE over t_max x u_th (CSV)")
    fig2_t_max: tuple[int, ...] = param((8, 16, 32, 64, 128), "Fig. 2 grid: t_max values", low=1)
    fig2_fractions: tuple[float, ...] = param((0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0),
                                              "Fig. 2 grid: u_th as a fraction of u_max", low=0,
                                              low_open=True, high=1)
    fig2_samples: int = param(256, "validation images for Fig. 2", low=1)
    sparsity: float = param(0.0, "weight of the spike-count penalty in a fine-tuning of the ANN before conversion "
                                 "(0: off; see harness/methods/ttfs/sparsity.py)", low=0)
    sparsity_epochs: int = param(8, "epochs of that fine-tuning", low=1, high=10_000)
    sparsity_lr: float = param(3e-4, "learning rate of that fine-tuning", low=0, low_open=True)
    sparsity_eps: float = param(0.1, "the penalty's ε as a fraction of a layer's mean positive activation", low=0,
                                low_open=True)


class TTFS(Method):
    name = "ttfs"
    default_model = "ttfs-cnn"
    smoke_sets = {"t_max": "16", "t_max_sweep": "8,16", "fig2_t_max": "8,16", "fig2_fractions": "0.1,0.5"}
    Params = TTFSParams
    events_refusal = ("it codes each input as one spike whose time is the pixel's intensity, while an "
                      "event sensor's pixels send many events of two polarities over the recording (no intensity to "
                      "time-code)")
    metrics = (
        MetricSpec("t_max", "time steps of each TTFS stage", "steps", None, 1),
        MetricSpec("layer/{layer}/u_th", "threshold u_th of a neuron op (potential units)", "potential", None, 0),
        MetricSpec("layer/{layer}/lambda", "scale λ of a neuron op's output codes", "activation units", None, 0),
        MetricSpec("ttfs/test/accuracy_vs_t_max", "test accuracy at each t_max of the sweep", "fraction", "max",
                   0, 1, curve=True),
        MetricSpec("ttfs/t_max_sweep", "the t_max values of the sweep", "steps", None, 1, curve=True),
        MetricSpec("ttfs/sparse_ann/test/accuracy", "test accuracy of the ANN fine-tuned with the spike-count penalty "
                   "(sparsity > 0), before conversion", "fraction", "max", 0, 1),
        MetricSpec("ttfs/sparse_ann/spikes_per_neuron", "its fraction of positive hidden activations (the converted "
                   "network's floor of spikes per neuron)", "spikes/neuron", "min", 0, 1),
        *fine_tuning_curves("ttfs_sparse"),
    )

    @classmethod
    def search_space(cls, trial):
        return cls.Params(
            t_max=trial.suggest_categorical("t_max", [8, 16, 32, 64, 128]),
            percentile=trial.suggest_float("percentile", 99.0, 100.0),
            threshold_scale=trial.suggest_float("threshold_scale", 0.5, 1.5),
            t_max_sweep=(), fig2=False,
        )

    @classmethod
    def graph_problems(cls, graph):
        folded = graph.folded()
        return [(graph.ops.get(op.name, op), why) for op, why in ttfs_problems(folded)]

    def check(self, ctx, params):
        super().check(ctx, params)
        neurons = [op.name for op in ctx.graph.neurons]
        for key in ("threshold_scales", "u_th"):
            values = getattr(params, key)
            if values and len(values) != len(neurons):
                raise ConfigError(f"ttfs: {key} has {len(values)} values but {ctx.model_name} has {len(neurons)} "
                                  f"spiking layers ({', '.join(neurons)})")
        if params.out_of_range == "error":  # the encoding would refuse the data after training: say so now
            for split in ("train", "test"):
                x = ctx.dataset.x[split]
                lo, hi = float(x.min()), float(x.max())
                if lo < 0 or hi > params.x_max:
                    raise ConfigError(f"ttfs: {ctx.dataset.name}/{split} inputs span [{lo:g}, {hi:g}], outside the "
                                      f"encoding's [0, x_max={params.x_max:g}]; set x_max (--set x_max={hi:g}) or "
                                      "out_of_range=clip")

    def _dtype(self, params):
        return torch.float64 if params.precision == "float64" else torch.float32

    def _calibrated(self, ctx, graph: Graph, params, t_max: int) -> TTFSNetwork:
        net = TTFSNetwork(graph, t_max, params.x_max, params.out_of_range, self._dtype(params))
        x, _ = ctx.dataset.subset("train", params.calibration_samples)
        names = net.neuron_names
        factors = tuple(s * params.threshold_scale for s in params.threshold_scales) or (params.threshold_scale,) * len(names)
        net.calibrate(torch.from_numpy(x).to(ctx.device), params.percentile, dict(zip(names, factors)),
                      dict(zip(names, params.u_th)) if params.u_th else None, seed=ctx.seed)
        return net

    def prepare(self, ctx, ann, params):
        from ...graph import trace

        metrics: dict[str, float] = {}
        steps: dict[str, list[float]] = {}
        info: dict[str, str] = {}
        if params.sparsity > 0:
            from .sparsity import sparsified

            ann, history, info["ttfs_sparse_cache"] = sparsified(ctx, ann, params)
            steps.update({f"ttfs_sparse/{k}": v for k, v in history.items()})
            alone = ctx.evaluate(ann, desc="evaluate sparse ANN", what="the sparsified ANN").metrics
            metrics["ttfs/sparse_ann/test/accuracy"] = alone["test/accuracy"]
            metrics["ttfs/sparse_ann/spikes_per_neuron"] = alone["spikes_per_neuron"]
        graph = trace(ann.to(ctx.device).eval(), ctx.dataset.input_shape).folded()
        net = self._calibrated(ctx, graph, params, params.t_max)
        scales = net.scales()
        metrics["t_max"] = float(net.t_max)
        for name in net.neuron_names:
            metrics[f"layer/{name}/u_th"] = net.u_th[name]
            metrics[f"layer/{name}/lambda"] = ref_scale(scales[name])
        return Preparation(TTFSEvaluable(net), metrics=metrics, step_metrics=steps, info=info)

    def analyse(self, ctx, prep, evaluation, params) -> Extras:
        extras = Extras()
        net = prep.model.net
        if params.t_max_sweep:
            accs = []
            for T in params.t_max_sweep:
                other = net if T == net.t_max else self._calibrated(ctx, net.graph, params, T)
                m = ctx.evaluate(TTFSEvaluable(other), desc=f"ttfs t_max={T}", what=f"ttfs at t_max={T}").metrics
                accs.append(m["test/accuracy"])
            extras.step_metrics["ttfs/test/accuracy_vs_t_max"] = accs
            extras.step_metrics["ttfs/t_max_sweep"] = [float(t) for t in params.t_max_sweep]
            rows = [dict(t_max=t, test_accuracy=a) for t, a in zip(params.t_max_sweep, accs)]
            extras.artifacts.append(Artifact("ttfs_accuracy_vs_t_max.csv", lambda path: write_csv(rows, path)))
        if params.fig2:
            extras.artifacts.append(fig2_rmse(ctx, net, params))
        return extras
