"""The metric schema: every key a run writes, with its description, unit, better direction and
valid range. One table feeds the meters (keys checked on every run), the ANN baseline, the study's
objective check, the leaderboard and report (directions and labels), and the README's metric
table (``harness ls metrics`` prints it; a test keeps the README equal to it).

A method's own metrics are declared beside the method (``Method.metrics``), under its own prefix
(``ttfs/...``, ``prune/...``) or as extra per-layer quantities (``layer/{layer}/u_th``).
Keys may hold placeholders: ``{layer}`` (an op name of the traced network, may contain dots and
colons) and ``{model}`` (an energy model).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INF = math.inf


@dataclass(frozen=True)
class MetricSpec:
    key: str
    description: str
    unit: str
    better: str | None = None  # "max", "min" or None (neither: a setting or a count)
    low: float = -INF
    high: float = INF
    allow_inf: bool = False  # +inf is a meaningful value (e.g. "no break-even")
    curve: bool = False  # a step metric (one value per step/epoch), not a single number
    _rx: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.escape(self.key).replace(r"\{layer\}", r"(?P<layer>.+)").replace(r"\{model\}", r"(?P<model>[^/]+)")
        pattern = pattern.replace(r"\{name\}", r"(?P<name>[^/]+)")
        object.__setattr__(self, "_rx", re.compile(f"^{pattern}$"))

    def matches(self, key: str) -> bool:
        return bool(self._rx.match(key))

    def check(self, key: str, value: float) -> str | None:
        """A problem with ``value`` for ``key``, or None."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{key} = {value!r} is not a number"
        v = float(value)
        if math.isnan(v):
            return f"{key} is NaN"
        if math.isinf(v) and not (self.allow_inf and v > 0):
            return f"{key} = {v} is not finite"
        if not (self.low <= v <= self.high):
            return f"{key} = {v:g} lies outside its valid range {self.range_text}"
        return None

    @property
    def range_text(self) -> str:
        lo = "(-inf" if self.low == -INF else f"[{self.low:g}"
        hi = (("inf]" if self.allow_inf else "inf)") if self.high == INF else f"{self.high:g}]")
        return f"{lo}, {hi}"


def _s(key, description, unit, better=None, low=-INF, high=INF, **kw) -> MetricSpec:
    return MetricSpec(key, description, unit, better, low, high, **kw)


FRACTION = dict(low=0.0, high=1.0)
COUNT = dict(low=0.0)

CORE: tuple[MetricSpec, ...] = (
    _s("test/accuracy", "top-1 accuracy of the method's network on the test split", "fraction", "max", **FRACTION),
    _s("ann/test/accuracy", "top-1 accuracy of the trained ANN (the baseline), on the test images the method was "
       "evaluated on", "fraction", "max", **FRACTION),
    _s("test/accuracy_drop", "ANN accuracy minus the method's accuracy, on the same test images", "fraction", "min",
       low=-1.0, high=1.0),
    _s("test/accuracy_at_t", "test accuracy after each time step (accuracy vs latency)", "fraction", "max",
       curve=True, **FRACTION),
    _s("samples", "test samples evaluated", "count", **COUNT),
    _s("timesteps", "latency of one inference: T (rate, surrogate), t_max × (neuron layers + 1) (ttfs), 1 "
       "(sharpen, ANN)",
       "steps", "min", low=1.0),
    _s("spikes", "spikes of all spiking neurons in one inference (ANN: non-zero activations)", "count", "min",
       **COUNT),
    _s("neurons", "spiking neurons (ANN: units of the hidden non-linearities)", "count", **COUNT),
    _s("spikes_per_neuron", "spikes ÷ neurons, mean over test samples", "spikes/neuron", "min", **COUNT),
    _s("activation_sparsity", "zeros ÷ entries of every neuron layer's output, over steps and samples "
       "(NeuroBench)", "fraction", "max", **FRACTION),
    _s("connection_sparsity", "zero weights ÷ all weights of the synaptic layers (NeuroBench)", "fraction",
       "max", **FRACTION),
    _s("synops", "for every spike into a synaptic layer, the non-zero weights it reaches", "count", "min",
       **COUNT),
    _s("synop_capacity", "SynOps of one step in which every input of every spike-fed layer spikes once", "count",
       **COUNT),
    _s("macs", "dense multiply-accumulates of synaptic layers fed real values (padding taps included)",
       "count", "min", **COUNT),
    _s("macs_effective", "the same, skipping zero inputs and zero weights", "count", "min", **COUNT),
    _s("macs_dense_nopad", "dense MACs of layers fed real values without zero-padding taps (NeuroBench's "
       "Dense convention)", "count", "min", **COUNT),
    _s("macs_dense_equivalent", "dense MACs of every synaptic layer for every step, as if all were fed real "
       "values", "count", **COUNT),
    _s("synops_if_spiking", "effective operations of every layer but the input layer (for the ANN: what it "
       "would cost as a one-step SNN)", "count", **COUNT),
    _s("input_layer_macs", "dense MACs of the layer that reads the input", "count", **COUNT),
    _s("input_events", "event data: input events (binned event counts) per sample fed to the network", "count",
       **COUNT),
    _s("input_synops", "event data: SynOps of the layers the input events drive (ACs per event x fan-out)",
       "count", "min", **COUNT),
    _s("neuron_updates", "membrane updates: neurons x time steps (time-stepped) or neurons (event-driven)",
       "count", "min", **COUNT),
    _s("ann/macs", "dense MACs of the ANN", "count", "min", **COUNT),
    _s("ann/macs_effective", "MACs of the ANN skipping zero inputs and weights", "count", "min", **COUNT),
    _s("ann/macs_dense_nopad", "dense MACs of the ANN without zero-padding taps", "count", "min", **COUNT),
    _s("ann/activation_sparsity", "zeros ÷ entries of the ANN's hidden activations", "fraction", "max",
       **FRACTION),
    _s("ann/activation_density", "1 − ann/activation_sparsity", "fraction", "min", **FRACTION),
    _s("ann/connection_sparsity", "zero weights ÷ all weights of the ANN", "fraction", "max", **FRACTION),
    _s("ann/neurons", "units of the ANN's hidden non-linearities", "count", **COUNT),
    _s("ann/spikes_per_neuron", "non-zero activations ÷ units of the ANN", "spikes/neuron", "min", **COUNT),
    _s("ann/train/loss", "the ANN's training loss per epoch", "loss", "min", curve=True),
    _s("ann/train/accuracy", "the ANN's training accuracy per epoch", "fraction", "max", curve=True, **FRACTION),
    _s("ann/val/loss", "the ANN's validation loss per epoch", "loss", "min", curve=True),
    _s("ann/val/accuracy", "the ANN's validation accuracy per epoch", "fraction", "max", curve=True, **FRACTION),
    _s("energy_nJ/{model}", "estimated energy of one inference of the method's network", "nJ", "min",
       **COUNT),
    _s("ann/energy_nJ/{model}", "estimated energy of one inference of the ANN", "nJ", "min", **COUNT),
    _s("energy_ratio/{model}", "method's energy ÷ ANN's energy", "ratio", "min", **COUNT),
    _s("break_even_spikes_per_neuron/{model}", "spikes per neuron at which the network costs as much "
       "as the ANN (inf: never)", "spikes/neuron", "max", allow_inf=True, **COUNT),
    _s("energy_parts_nJ/{model}/compute", "memory-aware models: arithmetic (adds, multiply-adds) of one inference",
       "nJ", "min", **COUNT),
    _s("energy_parts_nJ/{model}/addressing", "memory-aware models: the adds and multiply-adds that address weights and "
       "outputs", "nJ", "min", **COUNT),
    _s("energy_parts_nJ/{model}/memory", "memory-aware models: all memory reads and writes of one inference", "nJ",
       "min", **COUNT),
    _s("energy_parts_nJ/{model}/memory_params", "memory-aware models: weight and bias reads", "nJ", "min", **COUNT),
    _s("energy_parts_nJ/{model}/memory_potential", "memory-aware models: membrane-potential reads and writes", "nJ",
       "min", **COUNT),
    _s("energy_parts_nJ/{model}/memory_inout", "memory-aware models: input reads and spike/activation writes", "nJ",
       "min", **COUNT),
    _s("ann/energy_parts_nJ/{model}/compute", "memory-aware models: the ANN's arithmetic and addressing", "nJ", "min",
       **COUNT),
    _s("ann/energy_parts_nJ/{model}/memory", "memory-aware models: the ANN's memory reads and writes", "nJ", "min",
       **COUNT),
    _s("layer/{layer}/synops", "SynOps of one synaptic layer", "count", "min", **COUNT),
    _s("layer/{layer}/macs", "dense MACs of one synaptic layer fed real values", "count", "min", **COUNT),
    _s("layer/{layer}/macs_effective", "effective MACs of one synaptic layer", "count", "min", **COUNT),
    _s("layer/{layer}/connection_sparsity", "zero weights ÷ weights of one synaptic layer", "fraction",
       "max", **FRACTION),
    _s("layer/{layer}/spikes_per_neuron", "spikes per neuron of one neuron layer", "spikes/neuron", "min",
       **COUNT),
    _s("layer/{layer}/activation_sparsity", "zeros ÷ entries of one neuron layer's output", "fraction", "max",
       **FRACTION),
    _s("layer/{layer}/firing_rate_hz", "spikes ÷ (T · dt) of one neuron layer", "Hz", **COUNT),
    _s("layer/{layer}/neurons", "neurons of one neuron layer", "count", **COUNT),
)


class Schema:
    """The core specs plus any number of declared extra specs (a method's own metrics)."""

    def __init__(self, specs: Iterable[MetricSpec] = CORE):
        self.specs: list[MetricSpec] = list(specs)

    def extended(self, extra: Iterable[MetricSpec]) -> "Schema":
        return Schema([*self.specs, *extra])

    def spec(self, key: str) -> MetricSpec | None:
        exact = [s for s in self.specs if s.key == key]
        if exact:
            return exact[0]
        for s in self.specs:
            if s.matches(key):
                return s
        return None

    def problems(self, metrics: Mapping[str, Any], *, curves: bool = False) -> list[str]:
        """Every key without a spec and every value outside its spec's range."""
        out = []
        for key, value in metrics.items():
            s = self.spec(key)
            if s is None:
                out.append(f"{key}: no metric schema entry describes it")
                continue
            values = list(value) if curves else [value]
            for v in values:
                p = s.check(key, v)
                if p:
                    out.append(p)
                    break
        return out

    def better(self, key: str) -> str | None:
        s = self.spec(key)
        return s.better if s else None

    def keys(self) -> list[str]:
        return [s.key for s in self.specs]


SCHEMA = Schema()


def method_schema(classes: Iterable[type]) -> Schema:
    """The core schema extended by the metrics the given method classes declare."""
    extra: list[MetricSpec] = []
    for cls in classes:
        extra += list(getattr(cls, "metrics", ()))
    return SCHEMA.extended(extra)


def markdown_table(specs: Iterable[MetricSpec] = CORE) -> str:
    """The README's metric table."""
    lines = ["| key | meaning | unit | better | valid range |", "|---|---|---|---|---|"]
    for s in specs:
        if s.curve:
            continue
        better = {"max": "higher", "min": "lower"}.get(s.better or "", "—")
        lines.append(f"| `{s.key}` | {s.description} | {s.unit} | {better} | {s.range_text} |")
    return "\n".join(lines) + "\n"


def fine_tuning_curves(stage: str) -> tuple[MetricSpec, ...]:
    """The per-epoch curves of a method that fine-tunes the ANN (``<stage>/train/loss`` …)."""
    return (MetricSpec(f"{stage}/train/loss", "fine-tuning loss per epoch", "nats", "min", 0, curve=True),
            MetricSpec(f"{stage}/train/accuracy", "fine-tuning accuracy per epoch", "fraction", "max", 0, 1, curve=True),
            MetricSpec(f"{stage}/val/loss", "validation loss per epoch", "nats", "min", 0, curve=True),
            MetricSpec(f"{stage}/val/accuracy", "validation accuracy per epoch", "fraction", "max", 0, 1, curve=True))
