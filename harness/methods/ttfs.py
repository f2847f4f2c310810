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

Two evaluators compute this: :meth:`TTFSNetwork.closed_form` (vectorised, one linear op per layer,
used by runs and studies) and :meth:`TTFSNetwork.stepped` (a time-stepped simulation of both
stages, the reference). They share the threshold comparison, so spike times agree exactly
whenever the two ways of summing the silent-stage potential agree (always for weights exactly
representable in binary; tests cover random float64 networks and the edge cases).

Thresholds u_th are calibrated per layer from training data as a percentile of the positive
silent-stage potentials (the paper tunes u_th below u_max = t_max · Σ W⁺ for resolution),
times optional per-layer scale factors; explicit values can be given with ``u_th``. Each run also
writes the paper's Fig. 2 grid (the first layer's RMSE over t_max × u_th) as a CSV the report draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from torch import nn

from ..api import Extras, Method, Preparation
from ..config import Params, param
from ..errors import ConfigError
from ..evaluation import Evaluable, Outputs
from ..graph import Graph, Kind, Op, apply_op, weight_of
from ..io import write_csv
from ..meters import Meters
from ..metrics import MetricSpec

PASS = (Kind.FLATTEN, Kind.IDENTITY)


def ttfs_problems(graph: Graph) -> list[tuple[Op, str]]:
    """Ops of the folded graph without a single-spike meaning (empty: convertible)."""
    problems: list[tuple[Op, str]] = []
    reasons = {
        Kind.ADD: "add of two spike trains: a sum of spike times is not one spike",
        Kind.AVGPOOL: "average pooling: a mean of spike times is not one spike",
        Kind.ADAPTIVE_AVGPOOL: "adaptive average pooling: a mean of spike times is not one spike",
        Kind.NORM: "a BatchNorm that does not directly follow a Conv/Linear layer (nothing to fold it into)",
        Kind.ACTIVATION: "a non-linearity other than ReLU",
        Kind.SCALE: "scaling by a constant",
    }
    for op in graph:
        if op.kind in reasons:
            problems.append((op, reasons[op.kind]))
        elif op.kind in (Kind.OTHER, Kind.ENCODER, Kind.EXPAND, Kind.DECODE):
            problems.append((op, "an op without a single-spike equivalent"))
    if problems:
        return problems
    for op in graph.neurons:
        src = graph[op.inputs[0]]
        if src.kind != Kind.SYNAPSE:
            hint = " (put the ReLU first: pooling and ReLU commute)" if src.kind == Kind.MAXPOOL else ""
            problems.append((op, f"a neuron fed by {src.describe()} rather than directly by a Conv/Linear layer{hint}"))
    for op in graph.synapses:
        users = graph.consumers(op.name)
        if len(users) == 1 and users[0].kind == Kind.NEURON:
            continue
        if _reaches_output(graph, op.name):
            continue
        problems.append((op, "a layer whose output is not the input of exactly one ReLU (nor the readout)"))
    feed = graph[graph.output.inputs[0]]
    while feed.kind in PASS:
        feed = graph[feed.inputs[0]]
    if feed.kind != Kind.SYNAPSE:
        problems.append((graph.output, "the network must end in a linear readout layer (no ReLU or pooling "
                                       "after it)"))
    return problems


def _reaches_output(graph: Graph, name: str) -> bool:
    users = graph.consumers(name)
    if len(users) != 1:
        return False
    u = users[0]
    return u.kind == Kind.OUTPUT or (u.kind in PASS and _reaches_output(graph, u.name))


def _linear_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    w = (weight_of(layer) if weight is None else weight).to(x.dtype)
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, w)
    conv: Any = nn.functional.conv2d if isinstance(layer, nn.Conv2d) else nn.functional.conv1d
    c: Any = layer
    return conv(x, w, None, c.stride, c.padding, c.dilation, c.groups)


def _bias(layer: nn.Module) -> torch.Tensor | None:
    b = getattr(layer, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def _bias_offset(layer: nn.Module, t_max: int, lam_in: float, dtype, ndim: int) -> torch.Tensor | float:
    """The bias as an initial membrane potential: t_max · b / λ_in, broadcast over the output."""
    bias = _bias(layer)
    if bias is None:
        return 0.0
    b = bias.detach().to(dtype) * (t_max / lam_in)
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


Scale: TypeAlias = float | torch.Tensor  # λ of a code tensor: one number, or one per element (after a cat)


def _ref(scale) -> float:
    return float(scale.max()) if isinstance(scale, torch.Tensor) else float(scale)


class TTFSNetwork(nn.Module):
    """A converted network: the folded graph of the ANN plus one threshold per neuron op."""

    def __init__(self, graph: Graph, t_max: int, x_max: float = 1.0, out_of_range: str = "error",
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.graph = graph
        self.t_max, self.x_max, self.out_of_range, self.dtype = t_max, x_max, out_of_range, dtype
        self.neuron_names = [op.name for op in graph.neurons]
        self.u_th: dict[str, float] = {n: float("nan") for n in self.neuron_names}
        self.plan = [op for op in graph if op.kind not in (Kind.INPUT, Kind.OUTPUT, Kind.SHAPE)]
        self._weights: dict[str, torch.Tensor] = {}  # effective weights of layers fed by a cat
        self._reads_input = graph.static_ops()

    @property
    def n_hidden(self) -> int:
        return len(self.neuron_names)

    @property
    def latency(self) -> int:
        return self.t_max * (self.graph.depth() + 1)

    def scales(self) -> dict[str, Scale]:
        """λ of every op's output codes (the input's is x_max)."""
        return self._walk(None, None)[1]

    def _walk(self, x: torch.Tensor | None, meters: Meters | None, keep_codes: bool = False,
              calibrate: dict | None = None):
        """One pass of the closed form (``x`` None: only the scales). Returns (logits, scales, codes)."""
        T = self.t_max
        g = self.graph
        scale: dict[str, Scale] = {g.input.name: self.x_max}
        value: dict[str, torch.Tensor] = {}
        if x is not None:
            value[g.input.name] = encode(x.to(self.dtype), T, self.x_max, self.out_of_range)
        codes: list[torch.Tensor] = []
        logits = None
        for op in self.plan:
            if op.kind == Kind.SYNAPSE:
                lam_in = scale[op.inputs[0]]
                lam_ref = _ref(lam_in)
                if x is not None:
                    k = value[op.inputs[0]]
                    if meters is not None:
                        meters.record_synapse(op.name, op.module, (k > 0).float(), spikes=True,  # type: ignore[arg-type]
                                              reads_input=op.inputs[0] in self._reads_input)
                    u = _linear_op(op.module, k, self._effective_weight(op, lam_in))  # type: ignore[arg-type]
                    value[op.name] = u + _bias_offset(op.module, T, lam_ref, k.dtype, u.dim())  # type: ignore[arg-type]
                scale[op.name] = lam_ref  # a potential in units of t_max / λ_ref
            elif op.kind == Kind.NEURON:
                src = op.inputs[0]
                lam_in = scale[src]
                if calibrate is not None and x is not None:
                    self.u_th[op.name] = calibrate["fn"](op.name, value[src])
                th = self.u_th[op.name]
                if x is not None:
                    u = value[src]
                    k = fire_codes(u, torch.tensor(th, dtype=u.dtype, device=u.device), T)
                    value[op.name] = k
                    if meters is not None:
                        spikes = float((k > 0).sum())
                        meters.record_neuron_counts(op.name, spikes=spikes, entries=float(k.numel()),
                                                    zeros=float(k.numel()) - spikes, kind="TTFS two-stage")
                    if keep_codes:
                        codes.append(k)
                scale[op.name] = th * lam_in / T
            else:  # max pooling, flatten, identity, cat: codes and scales move alike
                ins = op.inputs
                if x is not None:
                    value[op.name] = apply_op(op, [value[i] for i in ins])
                scale[op.name] = self._move_scale(op, [scale[i] for i in ins])
        feed = g.output.inputs[0]
        if x is not None:
            logits = value[feed] * (scale[feed] / T)
        return logits, scale, codes

    def _move_scale(self, op: Op, scales: list) -> Scale:
        if all(not isinstance(s, torch.Tensor) for s in scales) and len(set(scales)) == 1:
            return scales[0]
        maps = [s if isinstance(s, torch.Tensor) else torch.full((1, *self.graph[i].shape), float(s),
                                                                  dtype=torch.float64)
                for s, i in zip(scales, op.inputs)]
        return apply_op(op, maps)

    def _effective_weight(self, op: Op, lam_in) -> torch.Tensor | None:
        """Weights with per-input scales folded in (inputs of different λ after a cat), else None."""
        if not isinstance(lam_in, torch.Tensor):
            return None
        if op.name not in self._weights:
            w = weight_of(op.layer).detach()
            rel = (lam_in[0] / lam_in.max()).to(w.dtype)
            if isinstance(op.module, nn.Linear):
                factor = rel.reshape(1, -1)
            else:  # per input channel (constant over space: scales are per layer or per channel)
                factor = rel.reshape(rel.shape[0], -1)[:, 0].reshape(1, -1, *([1] * (w.dim() - 2)))
            self._weights[op.name] = w * factor
        return self._weights[op.name]

    # ---- evaluators ----------------------------------------------------------------------------
    @torch.no_grad()
    def closed_form(self, x: torch.Tensor, meters: Meters | None = None, keep_codes: bool = False):
        """Logits (and, with ``keep_codes``, every neuron op's output codes in topological order)."""
        logits, _, codes = self._walk(x, meters, keep_codes)
        return (logits, codes) if keep_codes else logits

    @torch.no_grad()
    def stepped(self, x: torch.Tensor):
        """Time-stepped simulation of both stages on the discrete clock (the reference).

        Returns logits and every neuron op's output codes (t_max − spike step, 0 = silent).
        """
        T = self.t_max
        g = self.graph
        k = encode(x.to(self.dtype), T, self.x_max, self.out_of_range)
        t_idx = torch.arange(T, device=k.device).view(-1, *([1] * k.dim())).to(k.dtype)
        spikes = {g.input.name: (t_idx == (T - k)).to(k.dtype)}  # [T, B, ...]: one spike at t = T − k
        scales = self.scales()
        potentials: dict[str, torch.Tensor] = {}
        codes = []
        for op in self.plan:
            if op.kind == Kind.SYNAPSE:
                s = spikes[op.inputs[0]]
                lam_in = scales[op.inputs[0]]
                w = self._effective_weight(op, lam_in)
                # silent stage: slope g(t) = Σ_{t_j ≤ t} W_ij, u(t + 1) = u(t) + g(t)
                slope = torch.zeros_like(_linear_op(op.module, s[0], w))  # type: ignore[arg-type]
                u = slope + _bias_offset(op.module, T, _ref(lam_in), slope.dtype, slope.dim())  # type: ignore[arg-type]
                for t in range(T):
                    slope = slope + _linear_op(op.module, s[t], w)  # type: ignore[arg-type]
                    u = u + slope
                potentials[op.name] = u
            elif op.kind == Kind.NEURON:
                u = potentials[op.inputs[0]]
                # spiking stage: charge with I_ext = u_th / t_max, fire once when u + τ·I_ext ≥ u_th
                c = steps_to_threshold(u, torch.tensor(self.u_th[op.name], dtype=u.dtype, device=u.device), T)
                fired = torch.zeros_like(u, dtype=torch.bool)
                out = torch.zeros((T, *u.shape), dtype=u.dtype, device=u.device)
                for tau in range(T):
                    now = (c <= tau) & ~fired
                    out[tau] = now.to(u.dtype)
                    fired |= now
                spikes[op.name] = out
                first = out.argmax(0).to(out.dtype)  # step of the (only) spike
                codes.append(torch.where(out.any(0), T - first, torch.zeros_like(first)))
            elif op.name in potentials or (op.inputs and op.inputs[0] in potentials):
                potentials[op.name] = apply_op(op, [potentials[i] for i in op.inputs])  # after the readout
            elif op.kind == Kind.MAXPOOL:  # earliest spike: pool "has fired by t", then difference
                has_fired = _per_step(op, [spikes[op.inputs[0]].cumsum(0)])
                spikes[op.name] = torch.diff(has_fired, dim=0, prepend=torch.zeros_like(has_fired[:1]))
            else:
                spikes[op.name] = _per_step(op, [spikes[i] for i in op.inputs])
        feed = g.output.inputs[0]
        return potentials[feed] * (_ref(scales[feed]) / T), codes

    # ---- calibration ---------------------------------------------------------------------------
    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, percentile: float, scales: dict[str, float] | None = None,
                  explicit: dict[str, float] | None = None, max_values: int = 2_000_000, seed: int = 0) -> None:
        """Set u_th neuron by neuron (in topological order) from the positive silent-stage potentials of ``x``."""
        gen = torch.Generator().manual_seed(seed)
        T = self.t_max

        def threshold(name: str, u: torch.Tensor) -> float:
            if explicit:
                return explicit[name]
            pos = u[u > 0].flatten().cpu()
            if pos.numel() == 0:
                th = float(T)  # a silent layer: any threshold gives the same (empty) output
            else:
                if pos.numel() > max_values:
                    pos = pos[torch.randint(pos.numel(), (max_values,), generator=gen)]
                th = float(torch.quantile(pos.double(), percentile / 100.0))
            return th * (scales or {}).get(name, 1.0)

        self._walk(x, None, calibrate={"fn": threshold})


def _per_step(op: Op, seqs: list[torch.Tensor]) -> torch.Tensor:
    """Apply a stateless op to ``[T, B, ...]`` sequences, time folded into the batch."""
    T, B = seqs[0].shape[:2]
    y = apply_op(op, [s.reshape(T * B, *s.shape[2:]) for s in seqs])
    return y.reshape(T, B, *y.shape[1:])


class TTFSEvaluable(Evaluable):
    """The closed-form evaluator: event-driven (one update per neuron), at most one spike each."""

    event_driven = True
    input_spikes = True
    max_spikes_per_neuron = 1.0

    def __init__(self, net: TTFSNetwork):
        self.net, self.graph = net, net.graph
        self.latency = net.latency

    def to(self, device):
        self.graph.gm.to(device)
        return self

    def run_batch(self, x, meters):
        return Outputs(logits=self.net.closed_form(x, meters))


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


class TTFS(Method):
    name = "ttfs"
    default_model = "ttfs-cnn"
    smoke_sets = {"t_max": "16", "t_max_sweep": "8,16", "fig2_t_max": "8,16", "fig2_fractions": "0.1,0.5"}
    Params = TTFSParams
    metrics = (
        MetricSpec("t_max", "time steps of each TTFS stage", "steps", None, 1),
        MetricSpec("layer/{layer}/u_th", "threshold u_th of a neuron op (potential units)", "potential", None, 0),
        MetricSpec("layer/{layer}/lambda", "scale λ of a neuron op's output codes", "activation units", None, 0),
        MetricSpec("ttfs/test/accuracy_vs_t_max", "test accuracy at each t_max of the sweep", "fraction", "max",
                   0, 1, curve=True),
        MetricSpec("ttfs/t_max_sweep", "the t_max values of the sweep", "steps", None, 1, curve=True),
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
        from ..graph import trace

        graph = trace(ann.to(ctx.device).eval(), ctx.dataset.input_shape).folded()
        net = self._calibrated(ctx, graph, params, params.t_max)
        scales = net.scales()
        metrics = {"t_max": float(net.t_max)}
        for name in net.neuron_names:
            metrics[f"layer/{name}/u_th"] = net.u_th[name]
            metrics[f"layer/{name}/lambda"] = _ref(scales[name])
        return Preparation(TTFSEvaluable(net), metrics=metrics)

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
            extras.artifacts.append(write_csv([dict(t_max=t, test_accuracy=a) for t, a in zip(params.t_max_sweep, accs)],
                                              ctx.artifact("ttfs_accuracy_vs_t_max.csv")))
        if params.fig2:
            extras.artifacts.append(fig2_rmse(ctx, net, params))
        return extras


@torch.no_grad()
def layer_rmse_grid(layer: nn.Module, x: torch.Tensor, t_values, fractions, x_max: float = 1.0) -> list[dict]:
    """Fig. 2: RMSE between a layer's ANN output ReLU(Wx + b) and its TTFS equivalent, over a grid
    of t_max × u_th, with u_th a fraction of u_max = t_max · max_i (Σ_j W⁺_ij · x_max + b⁺_i) / x_max,
    the largest potential the layer can reach (eq. 5, bias included)."""
    x = x.double()
    w = weight_of(layer).detach().double()
    bias = _bias(layer)
    ann_out = torch.relu(_linear_op(layer, x, w) + (0 if bias is None else
                         bias.detach().double().view(-1, *([1] * (x.dim() - 2)))))
    pos = w.clamp(min=0).flatten(1).sum(1) * x_max
    if bias is not None:
        pos = pos + bias.detach().double().clamp(min=0)
    rows = []
    for T in t_values:
        u_max = T * float(pos.max()) / x_max
        k = encode(x, T, x_max, "clip")
        u = _linear_op(layer, k, w) + _bias_offset(layer, T, x_max, torch.float64, x.dim())
        for f in fractions:
            th = f * u_max
            codes = fire_codes(u, torch.tensor(th, dtype=u.dtype), T)
            lam = th * x_max / T
            snn_out = codes * (lam / T)
            rmse = float(torch.sqrt(torch.mean((snn_out - ann_out) ** 2)))
            rows.append(dict(t_max=T, u_th_fraction=f, u_th=th, u_max=u_max, rmse=rmse))
    return rows


def fig2_rmse(ctx, net: TTFSNetwork, params):
    """The grid of :func:`layer_rmse_grid` for the layer that reads the encoded input, as a CSV
    (``harness report`` draws it)."""
    x, _ = ctx.dataset.subset("val", params.fig2_samples)
    inp, name = torch.from_numpy(x).to(ctx.device), net.graph.input.name
    for op in net.graph:  # reshapes between the input and its layer (a dense network's Flatten)
        if op.kind in (Kind.FLATTEN, Kind.IDENTITY) and op.inputs == (name,):
            inp, name = apply_op(op, [inp]), op.name
    first = next(op for op in net.graph.synapses if op.inputs[0] == name)
    rows = layer_rmse_grid(first.layer, inp, params.fig2_t_max, params.fig2_fractions, params.x_max)
    return write_csv(rows, ctx.artifact("ttfs_fig2_rmse.csv"))
