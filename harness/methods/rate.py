"""rate — rate-coded conversion: ReLU → integrate-and-fire (soft reset; LIF selectable).

Per neuron op l of the traced network the activation scale λ_l is calibrated on training data
(``max`` or a ``percentile`` of the ANN's positive activations, as SpikingJelly's rate-coding
recipe does) and the network is normalised so every neuron has threshold 1 (Diehl et al. 2015;
Rueckauer et al. 2017): a synaptic layer fed by spikes of scale λ_in and feeding neurons of scale
λ_out gets W ← W · λ_in/λ_out, b ← b / λ_out. BatchNorm is folded into the layer before it first.
NengoDL's two knobs, with NengoDL's meaning:

* ``scale_firing_rates`` s: input to each neuron × s, output amplitude × 1/s, so rates rise s-fold
  at the same expected output (until a neuron saturates at one spike per step). Both factors are
  folded into the weights, so the synaptic layers still receive binary spikes.
* ``synapse`` τ: an exponential low-pass on every spiking layer's output (None = no filter). SynOps
  count the spikes, since the filter is linear and lives on the receiving side.

Joins. Where spike trains of different scales meet — a residual ``add`` of an identity shortcut
and a layer's current, or a ``cat`` — every input is brought to one scale at the join (the scale
the consuming neurons need): currents by their layer's weights, spike trains by a constant gain on
that input (normalisation at the join, as SpikingJelly's voltage scalers and Rueckauer et al. do).
The sum is then exact in the rate domain.

Initial membrane potential ``v_init`` (a fraction of the threshold): 0, as SpikingJelly's converter
and Rueckauer et al., gives floor(T·a) spikes for a constant normalised input a ∈ [0, 1]; 0.5 (the
default; Bu et al., ICLR 2022) gives round(T·a), halving every layer's worst-case quantisation error.
Defaults (``percentile`` 99.9, ``v_init`` 0.5) were chosen on fashion-mnist ``resnet-small`` at T = 128
(first 1 000 test images, ANN 0.907): 99.99/0 gave 0.894, 99.9/0 0.897, 99.99/0.5 0.894, 99.9/0.5 0.902.

The input is injected as a constant current into the first layer(s) (their MACs are counted once
per inference). Pooling: average pooling is exact (linear); max pooling passes the maximum of the
(filtered) spike signals in each window — a spike if any input in the window spiked this step — an
approximation that over-counts activity (``maxpool=gate`` below does not). Output decoding:
``membrane`` (a non-leaky integrator of the readout current: argmax of the time-averaged logits),
``spikes`` (spike counts of IF readout neurons) or ``filtered`` (the low-passed readout current at
each step).

Options for few time steps (off by default; measured in the README):

* ``normalization=channel``: one λ per output channel, the ``percentile`` of that channel's
  positive activations; ``normalization=ltb``: one λ per output channel by local threshold
  balancing (Bu, Li & Yu, CVPR 2025, SpikingJelly's rule, in batches of ``ltb_batch`` images:
  :func:`harness.calibration.calibrate_channel_ltb`). The layer keeps λ = its largest channel's;
  channel c's neurons see x/θ_c and their spikes carry θ_c (θ_c = λ_c/λ), SpikingJelly's pair of
  channel voltage scalers around an IF node.
* ``maxpool=gate``: a max pool that spikes reach passes, in each window, the spikes of the input
  with the most spikes so far (Rueckauer et al. 2017); SynOps downstream count what passed.
* ``calibration=bias``: after conversion, each layer's bias is corrected, layer by layer, by its
  channels' mean excess activity over the ANN at the T of the run; ``calibration=light`` then also
  each neuron's initial membrane by what remains (Li et al., ICML 2021; see :func:`light_calibration`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from ..api import Evaluable, Extras, Method, Outputs, Preparation, SingleStep
from ..calibration import calibrate_channel_ltb, calibrate_channel_percentiles, calibrate_scales
from ..config import ConfigError, Params, param
from ..errors import NirUnsupported
from ..graph import Graph, Kind, Op, spike_paths, unsupported_ops, weight_of
from ..metrics import MetricSpec
from ..simulate import NeuronPool, RateNetwork, Simulator, pool_geometry

UNARY = (Kind.MAXPOOL, Kind.AVGPOOL, Kind.ADAPTIVE_AVGPOOL, Kind.FLATTEN, Kind.IDENTITY)
JOINS = (Kind.ADD, Kind.CAT)


@dataclass(frozen=True)
class RateParams(Params):
    timesteps: int = param(64, "simulation length T (time steps of dt)", low=1, high=1_000_000)
    dt: float = param(1e-3, "time step in seconds (firing rates in Hz = spikes / (T·dt))", low=0, low_open=True)
    scale_firing_rates: float = param(1.0, "NengoDL scale s: input × s, output amplitude × 1/s", low=0,
                                      low_open=True)
    synapse: float | None = param(None, "τ (s) of the low-pass on every spiking layer's output; none = off",
                                  low=0)
    neuron: Literal["if", "lif"] = param("if", "integrate-and-fire, or leaky (lif_tau)")
    lif_tau: float = param(20.0, "LIF membrane time constant in steps", low=1, low_open=True)
    v_init: float = param(0.5, "initial membrane potential, in units of the threshold (0: floor, 0.5: round)",
                          low=0, high=1, high_open=True)
    normalization: Literal["max", "percentile", "channel", "ltb"] = param(
        "percentile", "how λ is calibrated: per layer (max, percentile), per channel (channel: the percentile of "
        "each channel; ltb: local threshold balancing)")
    ltb_batch: int = param(10, "normalization=ltb: calibration images per update of the thresholds", low=1)
    percentile: float = param(99.9, "percentile of positive activations for λ_l", low=0, low_open=True,
                              high=100)
    calibration_samples: int = param(1000, "training images used for calibration", low=1)
    maxpool: Literal["max", "gate"] = param(
        "max", "spiking max pool: any spike of the window, or the spikes of the busiest input (gate)")
    calibration: Literal["none", "bias", "light"] = param(
        "none", "after conversion, match each layer's mean activity to the ANN's: per channel through the bias "
        "(bias), then per neuron through the initial membrane (light)")
    decode: Literal["membrane", "spikes", "filtered"] = param("membrane", "output decoding")
    eval_samples: int = param(0, "evaluate on the first N test images (0 = all)", low=0)
    time_chunk: int = param(64, "at most this many time steps per chunk", low=1)
    batch_chunk: int = param(500, "images simulated together (at most --eval-batch-size)", low=1)
    memory_mb: float = param(0.0, "memory for one chunk's spikes, bounds the chunk length (0 = by device)",
                             low=0)
    neuron_backend: Literal["auto", "inplace", "spikingjelly"] = param(
        "auto", "neuron kernel: SpikingJelly's IFNode/LIFNode (its CUDA/Triton kernels) on a GPU and the in-place "
        "loop on CPU (auto), or either one (same spikes)")

    def validate(self) -> None:
        if self.synapse is not None and self.synapse == 0:
            raise ConfigError("synapse=0 is out of range; valid range is (0, inf] or none")


# ---------------------------------------------------------------------------------------------
# structure: which ops rate coding can map, and how scales flow through the graph


def rate_problems(graph: Graph) -> list[tuple[Op, str]]:
    """Ops of the folded graph that rate coding cannot map (empty: it can convert the network)."""
    problems = unsupported_ops(graph, {
        Kind.NORM: "a BatchNorm that does not directly follow a Conv/Linear layer (nothing to fold it into)",
        Kind.ACTIVATION: "a non-linearity other than ReLU",
        Kind.SCALE: "an op without a rate-coded equivalent"}, "an op without a rate-coded equivalent")
    if problems:
        return problems
    problems = spike_paths(graph, graph.static_ops())[1]
    if graph.feed(graph.output.name, UNARY).kind == Kind.NEURON:
        problems.append((graph.output, "the network ends in a neuron (ReLU); it must end in a linear readout"))
    return problems


@dataclass
class ScalePlan:
    factors: dict[str, tuple[float, float]]  # synapse -> (weight factor, bias factor)
    gains: dict[tuple[str, int], float]  # (op, input index) -> constant gain


def plan_scales(graph: Graph, amp: dict[str, float], gain: dict[str, float]) -> ScalePlan:
    """Weight factors and join gains for neuron amplitudes ``amp`` (λ/s) and input gains ``gain``
    (s/λ). A tensor's scale σ means value = simulated signal × σ; ``None`` marks a layer's current,
    whose scale its weights set to what its consumer needs (its *demand*, a gain)."""
    ops = list(graph)
    sigma: dict[str, float | None] = {}
    for op in ops:
        if op.kind == Kind.INPUT:
            sigma[op.name] = 1.0
        elif op.kind == Kind.NEURON:
            sigma[op.name] = amp[op.name]
        elif op.kind in UNARY:
            sigma[op.name] = sigma[op.inputs[0]]
        elif op.kind in JOINS:
            sigma[op.name] = None  # set below, once its demand is known
        else:
            sigma[op.name] = None
    # demand (a gain) each op's value must meet, from its consumers
    demand: dict[str, float | None] = {}
    join_in: dict[str, float] = {}

    def consumer_demand(c: Op) -> float | None:
        if c.kind == Kind.NEURON:
            return gain[c.name]
        if c.kind == Kind.OUTPUT:
            return 1.0 / 1.0
        if c.kind in UNARY:
            return demand.get(c.name)
        if c.kind in JOINS:
            return join_in.get(c.name)
        return None  # a synaptic layer absorbs any scale into its weights

    order = {op.name: i for i, op in enumerate(ops)}
    for op in reversed(ops):
        if op.kind in (Kind.OUTPUT, Kind.SHAPE):
            continue
        wants = {d for d in (consumer_demand(c) for c in graph.consumers(op.name)) if d is not None}
        if len(wants) > 1 and sigma.get(op.name) is None and op.kind not in JOINS:
            raise ConfigError(f"{op.describe()} feeds neurons of different scales; rate coding cannot map it")
        demand[op.name] = next(iter(wants)) if wants else None
        if op.kind in JOINS:
            d = demand[op.name]
            if d is None:  # the join feeds a synaptic layer: keep the first spike train's scale
                fixed = [s for s in (sigma[i] for i in op.inputs) if s is not None]
                d = 1.0 / fixed[0] if fixed else 1.0
            join_in[op.name] = d
            sigma[op.name] = 1.0 / d
            # a join's free inputs upstream were visited later in this reversed loop: fine
    del order
    factors: dict[str, tuple[float, float]] = {}
    gains: dict[tuple[str, int], float] = {}
    for op in ops:
        if op.kind == Kind.SYNAPSE:
            s_in = sigma[op.inputs[0]]
            wanted = demand[op.name]
            out = wanted if wanted is not None else 1.0
            factors[op.name] = ((1.0 if s_in is None else s_in) * out, out)
        if op.kind in (Kind.NEURON, Kind.OUTPUT) or op.kind in JOINS:
            need = gain[op.name] if op.kind == Kind.NEURON else (1.0 if op.kind == Kind.OUTPUT else join_in[op.name])
            for k, i in enumerate(op.inputs):
                s = sigma[i]
                if s is not None and graph[i].kind != Kind.SHAPE:
                    g = s * need
                    if g != 1.0:
                        gains[(op.name, k)] = g
    return ScalePlan(factors, gains)


@dataclass
class RateModel:
    """The calibrated ANN: conversion per scale vector is cheap, so layer-scaling re-converts for
    each configuration. ``channel``: per neuron op, per-channel thresholds relative to λ (λ is
    then the largest channel's); ``shifts``: per synaptic op, a per-channel bias correction in the
    ANN's units (light calibration); ``gate``: max pools converted as gated pools."""

    graph: Graph  # folded
    lams: dict[str, float]
    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    shifts: dict[str, torch.Tensor] = field(default_factory=dict)
    potentials: dict[str, torch.Tensor] = field(default_factory=dict)  # per neuron, added to v_init
    gate: bool = False

    @property
    def neuron_names(self) -> list[str]:
        return [op.name for op in self.graph.neurons]

    def convert(self, params: RateParams, scales: dict[str, float] | None = None) -> RateNetwork:
        s = scales if scales is not None else {n: params.scale_firing_rates for n in self.lams}
        amp = {n: self.lams[n] / s[n] for n in self.lams}
        gain = {n: s[n] / self.lams[n] for n in self.lams}
        plan = plan_scales(self.graph, amp, gain)
        layers: dict[str, nn.Module] = {}
        for op in self.graph.synapses:
            lin = copy.deepcopy(op.layer).eval()
            w_factor, b_factor = plan.factors[op.name]
            shift = self.shifts.get(op.name)
            with torch.no_grad():
                if shift is not None and getattr(lin, "bias", None) is None:
                    lin.bias = nn.Parameter(torch.zeros_like(shift))  # a bias-free layer gets one to correct
                bias = getattr(lin, "bias", None)
                if shift is not None and isinstance(bias, torch.Tensor):
                    bias.add_(shift.to(bias))
                weight_of(lin).mul_(w_factor)
                if isinstance(bias, torch.Tensor):
                    bias.mul_(b_factor)
            layers[op.name] = lin
        neurons = {n: NeuronPool(None if params.neuron == "if" else params.lif_tau, params.neuron_backend,
                                 params.v_init + self.potentials[n] if n in self.potentials else params.v_init)
                   for n in self.lams}
        channel = {n: _channel_view(t, self.graph[n]) for n, t in self.channel.items()}
        return RateNetwork(self.graph, layers, neurons, plan.gains, channel,
                           gated_pools(self.graph) if self.gate else frozenset())


def _channel_view(theta: torch.Tensor, op: Op) -> torch.Tensor:
    """θ per channel shaped to broadcast over the op's ``[N, C, ...]`` output."""
    n = len(op.shape)
    return theta.reshape([-1] + [1] * (n - 1)) if n > 1 else theta


def gated_pools(graph: Graph) -> frozenset[str]:
    """The max pools that gate: every 2-d max pool that spikes reach (through concatenations, adds
    or other pools). A pool of the input image alone or of a layer's currents (conv → pool → ReLU)
    is exact as it is and stays a max pool."""
    from ..graph import event_path

    static = graph.static_ops()
    gated: set[str] = set()
    for op in graph.of(Kind.MAXPOOL):
        if op.name in static:
            continue
        try:
            event_path(graph, op.name, stops=frozenset(gated))
        except ConfigError:
            continue  # it pools currents, not spikes
        pool_geometry(op)  # a 2-d max pool, or refused here
        gated.add(op.name)
    return frozenset(gated)


def calibrated_model(graph: Graph, x: torch.Tensor, params: RateParams, seed: int = 0,
                     lams: dict[str, float] | None = None) -> RateModel:
    """The folded ``graph`` calibrated on the images ``x`` as ``params`` say: λ per layer (or the
    given ``lams``), or per channel (``normalization=channel`` or ``ltb``), gated max pools, then
    light calibration."""
    channel: dict[str, torch.Tensor] = {}
    if lams is None and params.normalization in ("channel", "ltb"):
        per = (calibrate_channel_percentiles(graph, x, params.percentile, seed=seed) if params.normalization == "channel"
               else calibrate_channel_ltb(graph, x, params.ltb_batch))
        lams = {n: float(t.max()) for n, t in per.items()}
        channel = {n: t / lams[n] for n, t in per.items()}
    elif lams is None:
        lams = calibrate_scales(graph, x, params.normalization, params.percentile, seed=seed)
    model = RateModel(graph, lams, channel, gate=params.maxpool == "gate")
    if params.calibration != "none":
        light_calibration(model, params, x, potentials=params.calibration == "light")
    return model


def light_calibration(model: RateModel, params: RateParams, x: torch.Tensor, scales: dict[str, float] | None = None,
                      potentials: bool = True) -> None:
    """Light calibration of Li et al. (ICML 2021, "A free lunch from ANN"), in ``model`` (its
    ``shifts`` and ``potentials``), layer by layer in order, each layer measured with the
    corrections of the layers before it: simulate the converted network for T steps on the
    calibration images and compare each neuron's activity in the ANN's units (spikes/T × its
    amplitude λ_c/s) with the ANN's activation clipped at the same amplitude, both averaged over the
    images.

    1. Bias correction: the excess averaged over each channel's positions is subtracted from the
       bias of the synaptic layer that feeds the neuron op (directly, through pooling, or as the
       first layer into an add; a neuron op fed otherwise keeps its error).
    2. Potential correction (``potentials``): then each neuron's remaining excess e (in thresholds
       per step) is taken out of its initial membrane: v_init − T·e, the charge it would gain too
       much over the run.

    The spiking network then matches the ANN's mean activity per channel and per neuron at the T it
    runs with, which removes the systematic part of the error that uneven spike arrival leaves at
    small T (not the part that varies from image to image)."""

    s = scales if scales is not None else {n: params.scale_firing_rates for n in model.lams}
    T = params.timesteps

    def top(name: str, like: torch.Tensor) -> torch.Tensor:
        """Each neuron's amplitude λ_c/s, shaped like one sample of the op's output."""
        amp = model.lams[name] / s[name]
        theta = model.channel.get(name)
        per = amp * (theta if theta is not None else torch.ones(like.shape[0]))
        return per.to(like).reshape([-1] + [1] * (like.dim() - 1)).expand_as(like)

    ann: dict[str, torch.Tensor] = {}

    def on_op(op, args, out):
        if op.kind == Kind.NEURON:
            ann[op.name] = torch.minimum(out.clamp_min(0), top(op.name, out[0]).unsqueeze(0)).double().mean(0)

    with torch.no_grad():
        model.graph.run(x, on_op)

    def excess(name: str) -> torch.Tensor:
        """Spikes per step minus the ANN's activity in thresholds per step, per neuron."""
        sim = Simulator(model.convert(params, scales), synapse=params.synapse, dt=params.dt,
                        time_chunk=params.time_chunk, batch_chunk=params.batch_chunk, memory_mb=params.memory_mb)
        counts = sim.spike_counts(x, T, name).cpu()
        return counts / (T * x.shape[0]) - ann[name] / top(name, ann[name]).double()

    model.shifts, model.potentials = {}, {}
    for op in model.graph.neurons:
        target = _bias_target(model.graph, op)
        if target is None or weight_of(target.layer).shape[0] != ann[op.name].shape[0]:
            continue
        e = excess(op.name)
        amp = top(op.name, ann[op.name]).double()
        per_channel = (e * amp).reshape(e.shape[0], -1).mean(1).float()  # in the ANN's units
        model.shifts[target.name] = model.shifts.get(target.name, torch.zeros_like(per_channel)) - per_channel
    if potentials:
        for op in model.graph.neurons:
            model.potentials[op.name] = (-T * excess(op.name)).float()


def _bias_target(graph: Graph, op: Op) -> Op | None:
    """The synaptic layer whose bias moves ``op``'s input by a constant per channel: the one feeding
    it directly (through pooling, flatten-free unary ops), or the first such input of an add."""
    cur = graph[op.inputs[0]]
    while cur.kind in (Kind.MAXPOOL, Kind.AVGPOOL, Kind.IDENTITY):
        cur = graph[cur.inputs[0]]
    if cur.kind == Kind.SYNAPSE:
        return cur
    if cur.kind == Kind.ADD:
        for i in cur.inputs:
            if graph[i].kind == Kind.SYNAPSE:
                return graph[i]
    return None


class RateEvaluable(Evaluable):
    """A converted network simulated for ``timesteps`` steps (predictions after every step)."""

    keep_per_neuron = True

    def __init__(self, model: RateModel, params: RateParams, scales: dict[str, float] | None = None,
                 label: str = "rate", events: bool = False):
        self.model, self.params, self.label = model, params, label
        self.takes_frames = self.input_spikes = events  # event data: a frame per step drives the first layers
        self.net = net = model.convert(params, scales)
        self.graph = net.graph
        self.batch_size = params.batch_chunk
        self.limit = params.eval_samples or None
        self.timesteps = params.timesteps
        self.max_spikes_per_neuron = float(params.timesteps)
        self.dt = params.dt
        self.sim = Simulator(net, synapse=params.synapse, dt=params.dt, decode=params.decode,
                             time_chunk=params.time_chunk, batch_chunk=params.batch_chunk,
                             memory_mb=params.memory_mb)

    def to(self, device):
        for layer in self.net.layers.values():
            layer.to(device)
        return self

    def run_batch(self, x, meters):
        preds = self.sim.run(x, self.timesteps, meters)
        return Outputs(predictions=preds[-1], step_predictions=preds)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The converted (scaled) layers' tensors, keyed ``<op name>.<weight|bias>``, and the gains
        where spike trains of different scales meet, keyed ``gain/<op>/<input index>``."""
        out = {f"{name}.{k}": v.detach().cpu() for name, layer in self.net.layers.items()
               for k, v in layer.state_dict().items()}
        out.update({f"gain/{op}/{k}": torch.tensor(g) for (op, k), g in self.net.gains.items()})
        return out

    def single_step(self) -> SingleStep:
        """The chain of scaled layers and IF/LIF nodes; what NIR cannot say is refused or noted."""
        label, p = self.label, self.params
        if p.synapse:
            raise NirUnsupported(f"{label}: the synaptic filter (synapse={p.synapse}) is not exported; convert with "
                                 "synapse unset")
        if self.sim.out_neuron is not None:
            raise NirUnsupported(f"{label}: a spiking readout (decode={p.decode}) is not exported")
        if self.net.channel:
            raise NirUnsupported(f"{label}: per-channel thresholds (normalization={p.normalization}) are not exported; NIR's "
                                 "IF has per-neuron thresholds but its spikes carry no amplitude")
        if self.net.gated:
            raise NirUnsupported(f"{label}: a gated max pool (maxpool=gate) has no NIR equivalent")
        inner = {k: g for k, g in self.net.gains.items() if k[0] != self.graph.output.name}
        if inner:
            raise NirUnsupported(f"{label}: gains between layers ({sorted(inner)}) have no place in a chain")
        from ..export import chain_sequential

        form = chain_sequential(self.graph, label, lambda op: self.net.layers[op.name],
                                lambda op: self.net.neurons[op.name].single_step_node())
        form.notes.append("reset by subtraction in the harness; NIR's IF/LIF reset to v_reset = 0")
        if p.v_init:
            form.notes.append(f"membranes start at 0 in NIR (the harness starts them at v_init = {p.v_init})")
        if self.model.potentials:
            form.notes.append("the per-neuron initial membranes of light calibration are not exported (its bias "
                              "corrections are, in the layers)")
        form.notes.append("input: the image as a constant current every step; output: the readout current per step "
                          "(sum over steps, argmax: the harness's membrane decode)")
        return form


def model_metrics(model: RateModel) -> dict[str, float]:
    """λ per neuron op; with per-channel thresholds their spread (smallest/largest channel); with
    light calibration the mean absolute bias correction per corrected layer."""
    out = {f"layer/{n}/lambda": lam for n, lam in model.lams.items()}
    out.update({f"layer/{n}/lambda_channel_min": lam * float(model.channel[n].min())
                for n, lam in model.lams.items() if n in model.channel})
    out.update({f"layer/{n}/bias_shift": float(t.abs().mean()) for n, t in model.shifts.items()})
    out.update({f"layer/{n}/potential_shift": float(t.abs().mean()) for n, t in model.potentials.items()})
    return out


LAYER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("layer/{layer}/lambda", "activation scale λ of a neuron op (calibrated; per channel: the largest)",
               "activation units", None, 0.0),
    MetricSpec("layer/{layer}/lambda_channel_min", "the smallest channel's λ (normalization=channel or ltb)",
               "activation units", None, 0.0),
    MetricSpec("layer/{layer}/bias_shift", "mean absolute bias correction of a synaptic layer (calibration)",
               "activation units", None, 0.0),
    MetricSpec("layer/{layer}/potential_shift", "mean absolute initial-membrane correction of a neuron op "
               "(calibration=light)", "thresholds", None, 0.0),
)


class Rate(Method):
    name = "rate"
    default_model = "cnn7"
    smoke_sets = {"timesteps": "16"}
    Params = RateParams
    metrics = LAYER_METRICS

    @classmethod
    def search_space(cls, trial):
        synapse = trial.suggest_float("synapse", 1e-4, 0.05, log=True)
        return RateParams(
            timesteps=trial.suggest_categorical("timesteps", [16, 32, 64, 128]),
            scale_firing_rates=trial.suggest_float("scale_firing_rates", 0.5, 100, log=True),
            synapse=synapse if trial.suggest_categorical("use_synapse", [False, True]) else None,
            percentile=trial.suggest_float("percentile", 99.0, 100.0),
            v_init=trial.suggest_categorical("v_init", [0.0, 0.5]),
        )

    event_keys = ("timesteps",)

    @classmethod
    def for_data(cls, params, given, dataset):
        """Event data: the converted network steps once per frame, so T is the frames per sample (the
        ANN, calibration included, sees their mean: the mean input current over the T steps)."""
        if not dataset.is_events:
            return params
        bins = dataset.time_bins
        if "timesteps" in given and params.timesteps != bins:
            raise ConfigError(f"{cls.name}: on event data the network steps once per frame, so T is the {bins} "
                              f"frames of {dataset.name}; --set timesteps={params.timesteps} differs: bin the events "
                              f"into that many frames instead (--time-bins {params.timesteps})")
        return params.replace(timesteps=bins)

    @classmethod
    def graph_problems(cls, graph):
        folded = graph.folded()
        problems = rate_problems(folded)
        if not problems:
            try:
                plan_scales(folded, {n.name: 1.0 for n in folded.neurons}, {n.name: 1.0 for n in folded.neurons})
            except ConfigError as exc:
                problems.append((folded.output, str(exc)))
        return [(graph.ops.get(op.name, op), why) for op, why in problems]

    def prepare(self, ctx, ann, params) -> Preparation:
        from ..graph import trace

        graph = trace(ann.to(ctx.device).eval(), ctx.dataset.input_shape).folded()
        x, _ = ctx.dataset.subset("train", params.calibration_samples)
        model = calibrated_model(graph, torch.from_numpy(x).to(ctx.device), params, seed=ctx.seed)
        return Preparation(RateEvaluable(model, params, label=self.name, events=ctx.dataset.is_events),
                           metrics=model_metrics(model))

    def analyse(self, ctx, prep, evaluation, params) -> Extras:
        from ..firing import firing_rate_artifacts

        assert evaluation.meters is not None
        return Extras(artifacts=firing_rate_artifacts(evaluation.meters.firing_rates()))
