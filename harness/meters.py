"""The shared meters (DESIGN §4): one definition of every metric, used by every method.

Two kinds of layers are metered:

* **synaptic layers** (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``): every input element ``x_i``
  reaches ``fanout_i`` non-zero weights (border effects of padding and stride included). The
  fan-out map is computed once per layer and input shape as the gradient of
  ``sum(layer(x; 1[W != 0]))`` with respect to ``x`` — exact for any linear layer. Then, summed
  over every input row the layer sees (time steps × samples):

  - dense MACs      = rows × outputs × weights per output         (what a dense engine executes)
  - effective ops   = Σ_rows Σ_i 1[x_i != 0] · fanout_i          (zero inputs and zero weights skipped)
  - for spike inputs (binary), effective ops *are* the synaptic operations: every spike triggers
    one accumulate per non-zero outgoing weight. Spike counts summed over time give the same
    number, so ``record_synapse`` also accepts per-sample spike counts.

* **neuron layers** (ReLU in an ANN, spiking neurons in an SNN): spikes (or non-zero
  activations), zeros and entries over every time step and sample.

Totals are divided by the number of samples, so every figure is *per inference*. NeuroBench's
definitions are followed for activation and connection sparsity. Dense MACs count every kernel tap
of every output, zero-padding taps included, as SpikingJelly's ``op_counter`` counts them;
NeuroBench's ``SynapticOperations`` leaves padding taps out of its ``Dense`` count, which is
``macs_dense_nopad`` here. SpikingJelly counts SynOps against all weights (zeros included), the
harness against non-zero weights only; ``tests/test_meters.py`` and ``tests/test_neurobench.py``
cross-check both libraries on the networks the harness converts.

The meters only accumulate what the evaluator records; which spikes reach which synaptic layer
(through pooling, adds and concatenations) is the graph's business (``harness.graph.event_counts``),
and the harness checks the totals against the traced network's bounds after every evaluation
(``harness.evaluation``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .graph import SYNAPTIC_TYPES, weight_of


def _in_dims(layer: nn.Module) -> int:
    """How many trailing dimensions of the input form one sample for this layer."""
    if isinstance(layer, nn.Linear):
        return 1
    if isinstance(layer, nn.Conv1d):
        return 2
    if isinstance(layer, nn.Conv2d):
        return 3
    raise TypeError(f"not a synaptic layer: {type(layer).__name__}")


def _apply_linear_op(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer``'s linear map with a substitute weight and no bias."""
    if isinstance(layer, nn.Linear):
        return nn.functional.linear(x, weight)
    if isinstance(layer, nn.Conv1d):
        return nn.functional.conv1d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    if isinstance(layer, nn.Conv2d):
        return nn.functional.conv2d(x, weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    raise TypeError(f"not a synaptic layer: {type(layer).__name__}")


@torch.no_grad()
def _effective_weight(layer: nn.Module) -> torch.Tensor:
    return weight_of(layer).detach()


def fanout_map(layer: nn.Module, in_shape: tuple[int, ...], *, nonzero: bool = True) -> torch.Tensor:
    """Per input element: how many (non-zero, if ``nonzero``) weights it reaches in one pass."""
    return _fanout_and_outputs(layer, in_shape, nonzero)[0]


def dense_macs_per_pass(layer: nn.Module, in_shape: tuple[int, ...]) -> int:
    """MACs of one dense pass: output elements × weights per output (zero-padding taps included,
    as SpikingJelly's ``op_counter`` counts them; see ``macs_dense_nopad`` for NeuroBench's)."""
    w = _effective_weight(layer)
    return _fanout_and_outputs(layer, in_shape, False)[1] * int(w[0].numel())


def _fanout_and_outputs(layer: nn.Module, in_shape: tuple[int, ...], nonzero: bool) -> tuple[torch.Tensor, int]:
    w = _effective_weight(layer)
    mask = (w != 0).to(torch.float64) if nonzero else torch.ones_like(w, dtype=torch.float64)
    x = torch.zeros((1, *in_shape), dtype=torch.float64, device=w.device, requires_grad=True)
    with torch.enable_grad():
        y = _apply_linear_op(layer, x, mask)
        (grad,) = torch.autograd.grad(y.sum(), x)
    return grad[0], int(y[0].numel())


def connection_sparsity(model: nn.Module) -> float:
    """NeuroBench: zero weights ÷ all weights of the Linear/Conv layers."""
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, SYNAPTIC_TYPES):
            w = _effective_weight(m)
            zeros += int((w == 0).sum())
            total += w.numel()
    return zeros / total if total else 0.0


@dataclass
class SynapseStats:
    name: str
    kind: str  # "Linear" / "Conv2d" ...
    weights: int = 0
    zero_weights: int = 0
    spike_input: bool | None = None  # None until first seen
    rows: float = 0.0  # input rows seen (time steps × samples, or samples for count inputs)
    dense_ops: float = 0.0
    effective_ops: float = 0.0
    input_spikes: float = 0.0
    capacity: float = 0.0  # Σ_i fanout_i: synops of one pass in which every input spikes once
    dense_nopad_ops: float = 0.0  # dense MACs without zero-padding taps (NeuroBench's Dense)
    max_fanout: float = 0.0  # the largest number of non-zero weights one input element reaches
    reads_input: bool | None = None  # fed by the network's input (None: the first layer recorded)
    geometry: dict[str, Any] = field(default_factory=dict)  # see ``layer_geometry`` (memory-aware energy)


def layer_geometry(layer: nn.Module, in_shape: tuple[int, ...], dense_per_pass: float) -> dict[str, Any]:
    """What a memory-aware energy model (``harness.energy.LemaireModel``) needs of one synaptic layer:
    per pass ``in``/``out`` elements and dense weight uses; the weights (``params``, ``nonzero``) and
    ``bias`` elements; and, per input event, the accumulates (``event_fanout``: Lemaire et al.'s
    ``out_channels · Π ceil(k / s)`` for a convolution) and the weights read (``memory_fanout``:
    ``out_channels · Π k``); ``out_features`` for a linear layer."""
    w = _effective_weight(layer)
    bias = getattr(layer, "bias", None)
    b = int(bias.numel()) if isinstance(bias, torch.Tensor) else 0
    in_numel = math.prod(in_shape)
    if isinstance(layer, nn.Linear):
        out_numel, event, memory, conv = layer.out_features, layer.out_features, layer.out_features, None
    else:
        per_group = layer.out_channels // layer.groups  # type: ignore[operator]
        k, st = tuple(layer.kernel_size), tuple(layer.stride)  # type: ignore[arg-type]
        out_numel = round(dense_per_pass / max(w[0].numel(), 1))
        event = per_group * math.prod(math.ceil(a / b_) for a, b_ in zip(k, st))
        memory = per_group * math.prod(k)
        conv = layer.out_channels * math.prod(k)  # type: ignore[operator]
    return dict(in_numel=in_numel, out_numel=out_numel, dense_per_pass=dense_per_pass, bias=b,
                params=int(w.numel()), nonzero=int((w != 0).sum()), event_fanout=event,
                memory_fanout=memory, conv_taps=conv)


@dataclass
class NeuronStats:
    name: str
    kind: str
    entries: float = 0.0
    zeros: float = 0.0
    spikes: float = 0.0  # spikes, or non-zero activations for ANN layers
    per_neuron: torch.Tensor | None = None  # spike counts per neuron, when kept


@dataclass
class Meters:
    """Streaming accumulators for one evaluation. ``timesteps`` = T of the simulation (1 for ANNs)."""

    timesteps: int = 1
    dt: float = 1e-3
    keep_per_neuron: bool = False
    samples: int = 0
    correct: int = 0
    synapses: "OrderedDict[str, SynapseStats]" = field(default_factory=OrderedDict)
    neurons: "OrderedDict[str, NeuronStats]" = field(default_factory=OrderedDict)
    counters: dict[str, float] = field(default_factory=dict)  # an evaluable's own sums (see ``count``)
    _fanouts: dict = field(default_factory=dict, repr=False)

    def count(self, key: str, value: float) -> None:
        """Add to one of the evaluable's own counters (e.g. ``sharpen/ties``): a sum over samples,
        kept with the meters so that a sharded evaluation sums it over the ranks as well."""
        self.counters[key] = self.counters.get(key, 0.0) + float(value)

    def portable(self) -> "Meters":
        """These meters without the fan-out cache (what one rank sends the others)."""
        return replace(self, _fanouts={})

    # ---- recording ---------------------------------------------------------------------------
    def record_batch(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.record_predictions(logits.argmax(-1), labels)

    def record_predictions(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:
        self.samples += int(labels.shape[0])
        self.correct += int((predictions == labels).sum())

    def fanouts(self, name: str, layer: nn.Module, in_shape: tuple[int, ...]):
        key = (name, in_shape)
        if key not in self._fanouts:
            self._fanouts[key] = (fanout_map(layer, in_shape, nonzero=True).float(),
                                  float(dense_macs_per_pass(layer, in_shape)),
                                  float(fanout_map(layer, in_shape, nonzero=False).sum()))
        return self._fanouts[key]

    @torch.no_grad()
    def record_synapse(self, name: str, layer: nn.Module, x: torch.Tensor, *, spikes: bool,
                       rows: float | None = None, reads_input: bool | None = None) -> None:
        """Count one call of ``layer`` on input ``x`` (any leading dims: T, B, or T·B).

        With ``spikes=True`` the input is binary spikes, or spike *counts* summed over time; in the
        latter case pass ``rows`` (the number of time-step passes it stands for).
        """
        d = _in_dims(layer)
        in_shape = tuple(x.shape[-d:])
        flat = x.detach().reshape(-1, *in_shape)
        fan_nz, dense_per_row, nopad_per_row = self.fanouts(name, layer, in_shape)
        st = self.synapses.get(name)
        if st is None:
            w = _effective_weight(layer)
            st = self.synapses[name] = SynapseStats(name, type(layer).__name__, w.numel(), int((w == 0).sum()))
            st.capacity = float(fan_nz.sum())
            st.max_fanout = float(fan_nz.max()) if fan_nz.numel() else 0.0
            st.reads_input = reads_input
            st.geometry = layer_geometry(layer, in_shape, dense_per_row)
        st.spike_input = spikes
        n_rows = float(flat.shape[0]) if rows is None else float(rows)
        st.rows += n_rows
        st.dense_ops += n_rows * dense_per_row
        st.dense_nopad_ops += n_rows * nopad_per_row
        fan = fan_nz.to(flat.device)
        if spikes:
            counts = flat.float().sum(0)
            st.input_spikes += float(counts.sum(dtype=torch.float64))
            st.effective_ops += float((counts.double() * fan.double()).sum())
        else:
            nz = (flat != 0).float().sum(0)
            st.effective_ops += float((nz.double() * fan.double()).sum())

    @torch.no_grad()
    def record_neurons(self, name: str, out: torch.Tensor, *, shape: tuple[int, ...], kind: str = "",
                       spiking: bool = True) -> None:
        """Count one output of a neuron layer whose neurons have the per-sample ``shape`` (any
        leading dims: samples, time steps). For ANN layers (``spiking=False``) non-zero activations
        are counted in place of spikes."""
        out = out.detach()
        nst = self.neurons.get(name)
        if nst is None:
            nst = self.neurons[name] = NeuronStats(name, kind)
        nst.entries += out.numel()
        nonzero = out != 0
        nst.zeros += float(out.numel() - int(nonzero.sum()))
        events = out.float() if spiking else nonzero.float()
        nst.spikes += float(events.sum(dtype=torch.float64))
        if self.keep_per_neuron:
            per = events.reshape(-1, *shape).sum(0).cpu()
            nst.per_neuron = per if nst.per_neuron is None else nst.per_neuron + per

    def record_neuron_counts(self, name: str, *, spikes: float, entries: float, zeros: float,
                             kind: str = "", per_neuron: torch.Tensor | None = None) -> None:
        """Add pre-aggregated counts (event-driven evaluators that never materialise spikes)."""
        st = self.neurons.get(name)
        if st is None:
            st = self.neurons[name] = NeuronStats(name, kind)
        st.entries += entries
        st.zeros += zeros
        st.spikes += spikes
        if self.keep_per_neuron and per_neuron is not None:
            st.per_neuron = per_neuron.cpu() if st.per_neuron is None else st.per_neuron + per_neuron.cpu()

    # ---- results -----------------------------------------------------------------------------
    def summary(self) -> tuple[dict[str, float], list[dict]]:
        """(flat metrics, per-layer rows). Every count is per inference (÷ samples)."""
        n = max(self.samples, 1)
        T = self.timesteps
        metrics: dict[str, float] = {}
        rows: list[dict] = []
        macs = macs_dense_all = macs_eff = synops = macs_nopad = 0.0
        capacity_spiking = hidden_ops = input_layer_macs = input_synops = 0.0
        for i, st in enumerate(self.synapses.values()):
            dense, eff = st.dense_ops / n, st.effective_ops / n
            row: dict[str, Any] = dict(layer=st.name, type=st.kind, weights=st.weights,
                       connection_sparsity=st.zero_weights / st.weights if st.weights else 0.0,
                       input="spikes" if st.spike_input else "analog",
                       dense_macs=dense, synops=eff if st.spike_input else 0.0,
                       macs=0.0 if st.spike_input else dense,
                       macs_effective=0.0 if st.spike_input else eff,
                       macs_dense_nopad=0.0 if st.spike_input else st.dense_nopad_ops / n)
            rows.append(row)
            macs_dense_all += dense
            reads_input = st.reads_input if st.reads_input is not None else i == 0
            if reads_input:  # the layer(s) reading the network's input
                input_layer_macs += dense
                input_synops += eff if st.spike_input else 0.0
            else:
                hidden_ops += eff
            if st.spike_input:
                synops += eff
                capacity_spiking += st.capacity
            else:
                macs += dense
                macs_eff += eff
                macs_nopad += row["macs_dense_nopad"]
            p = f"layer/{st.name}/"
            metrics[p + "synops"] = row["synops"]
            metrics[p + "macs"] = row["macs"]
            metrics[p + "macs_effective"] = row["macs_effective"]
            metrics[p + "connection_sparsity"] = row["connection_sparsity"]
        spikes = entries = zeros = neurons_total = 0.0
        for nst in self.neurons.values():
            neurons = nst.entries / (n * T)
            spn = nst.spikes / (n * neurons) if neurons else 0.0
            nrow: dict[str, Any] = dict(
                layer=nst.name, type=nst.kind, neurons=neurons, spikes=nst.spikes / n, spikes_per_neuron=spn,
                activation_sparsity=nst.zeros / nst.entries if nst.entries else 0.0,
                firing_rate_hz=spn / (T * self.dt), neuron_updates=neurons * T)
            rows.append(nrow)
            spikes += nst.spikes / n
            entries += nst.entries
            zeros += nst.zeros
            neurons_total += neurons
            p = f"layer/{nst.name}/"
            for k in ("spikes_per_neuron", "activation_sparsity", "firing_rate_hz", "neurons"):
                metrics[p + k] = nrow[k]
        weights = sum(s.weights for s in self.synapses.values())
        zero_w = sum(s.zero_weights for s in self.synapses.values())
        metrics.update({
            "test/accuracy": self.correct / n,
            "samples": float(self.samples),
            "timesteps": float(T),
            "macs": macs,
            "macs_dense_equivalent": macs_dense_all,
            "macs_effective": macs_eff,
            "macs_dense_nopad": macs_nopad,
            "synops": synops,
            "spikes": spikes,
            "neurons": neurons_total,
            "spikes_per_neuron": spikes / neurons_total if neurons_total else 0.0,
            "activation_sparsity": zeros / entries if entries else 0.0,
            "connection_sparsity": zero_w / weights if weights else 0.0,
            "neuron_updates": neurons_total * T,
            "synop_capacity": capacity_spiking,
            "synops_if_spiking": hidden_ops,
            "input_layer_macs": input_layer_macs,
        })
        if "input_events" in self.counters:  # event data: what the sensor sent, and the SynOps it drove
            metrics["input_events"] = self.counters["input_events"] / n
            metrics["input_synops"] = input_synops
        return metrics, rows

    def firing_rates(self) -> dict[str, torch.Tensor]:
        """Per layer: each neuron's firing rate in Hz (needs ``keep_per_neuron=True``)."""
        n = max(self.samples, 1)
        return {name: st.per_neuron.flatten() / (n * self.timesteps * self.dt)
                for name, st in self.neurons.items() if st.per_neuron is not None}


SUMMED_SYNAPSE = ("rows", "dense_ops", "effective_ops", "input_spikes", "dense_nopad_ops")
SUMMED_NEURON = ("entries", "zeros", "spikes")


def merge_meters(parts: list[Meters]) -> Meters:
    """The meters of several slices of one split as one (a sharded evaluation, in rank order):
    every count summed; what describes a layer (weights, fan-outs, geometry) taken from the first
    slice that saw it. Every ratio is then computed from the sums (``summary``)."""
    first = parts[0]
    out = Meters(timesteps=first.timesteps, dt=first.dt, keep_per_neuron=first.keep_per_neuron)
    for part in parts:
        out.samples += part.samples
        out.correct += part.correct
        for key, value in part.counters.items():
            out.count(key, value)
        for name, st in part.synapses.items():
            have = out.synapses.get(name)
            if have is None:
                out.synapses[name] = replace(st, geometry=dict(st.geometry))
                continue
            for f in SUMMED_SYNAPSE:
                setattr(have, f, getattr(have, f) + getattr(st, f))
        for name, nst in part.neurons.items():
            mine = out.neurons.get(name)
            if mine is None:
                out.neurons[name] = replace(nst, per_neuron=None if nst.per_neuron is None else nst.per_neuron.clone())
                continue
            for f in SUMMED_NEURON:
                setattr(mine, f, getattr(mine, f) + getattr(nst, f))
            if nst.per_neuron is not None:
                mine.per_neuron = nst.per_neuron.clone() if mine.per_neuron is None else mine.per_neuron + nst.per_neuron
    return out
