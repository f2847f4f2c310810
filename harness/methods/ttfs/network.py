"""The converted TTFS network and its closed-form, event-driven evaluator (see
:mod:`harness.methods.ttfs`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ...api import Evaluable, Outputs, SingleStep
from ...errors import NirUnsupported
from ...graph import PASS, Graph, Kind, Op, apply_op, unsupported_ops, weight_of
from ...meters import Meters
from .coding import Scale, bias_offset, encode, fire_codes, linear_op, ref_scale

REASONS = {
    Kind.ADD: "add of two spike trains: a sum of spike times is not one spike",
    Kind.AVGPOOL: "average pooling: a mean of spike times is not one spike",
    Kind.ADAPTIVE_AVGPOOL: "adaptive average pooling: a mean of spike times is not one spike",
    Kind.NORM: "a BatchNorm that does not directly follow a Conv/Linear layer (nothing to fold it into)",
    Kind.ACTIVATION: "a non-linearity other than ReLU",
    Kind.SCALE: "scaling by a constant",
}


def ttfs_problems(graph: Graph) -> list[tuple[Op, str]]:
    """Ops of the folded graph without a single-spike meaning (empty: convertible)."""
    problems = unsupported_ops(graph, REASONS, "an op without a single-spike equivalent")
    if problems:
        return problems
    for op in graph.neurons:
        src = graph[op.inputs[0]]
        if src.kind != Kind.SYNAPSE:
            hint = " (put the ReLU first: pooling and ReLU commute)" if src.kind == Kind.MAXPOOL else ""
            problems.append((op, f"a neuron fed by {src.describe()} rather than directly by a Conv/Linear layer{hint}"))
    for op in graph.synapses:
        users = graph.consumers(op.name)
        if (len(users) == 1 and users[0].kind == Kind.NEURON) or _reaches_output(graph, op.name):
            continue
        problems.append((op, "a layer whose output is not the input of exactly one ReLU (nor the readout)"))
    if graph.feed(graph.output.name, PASS).kind != Kind.SYNAPSE:
        problems.append((graph.output, "the network must end in a linear readout layer (no ReLU or pooling "
                                       "after it)"))
    return problems


def _reaches_output(graph: Graph, name: str) -> bool:
    """Whether ``name``'s value goes to the output alone, through one chain of pass ops."""
    users = graph.consumers(name)
    if len(users) != 1:
        return False
    u = users[0]
    return u.kind == Kind.OUTPUT or (u.kind in PASS and _reaches_output(graph, u.name))


def op_scales(graph: Graph, x_max: float, u_th: dict[str, float], t_max: int) -> dict[str, Scale]:
    """λ of every op's output codes: the input's is ``x_max``; a neuron op's λ_l = u_th·λ_in/t_max
    with λ_in its layer's reference scale; a synaptic op's potential is in units of t_max/λ_ref;
    max pooling, flatten, identity and cat move codes and scales alike."""
    scale: dict[str, Scale] = {graph.input.name: x_max}
    for op in graph:
        if op.kind in (Kind.INPUT, Kind.OUTPUT, Kind.SHAPE):
            continue
        if op.kind == Kind.SYNAPSE:
            scale[op.name] = ref_scale(scale[op.inputs[0]])
        elif op.kind == Kind.NEURON:
            scale[op.name] = u_th[op.name] * scale[op.inputs[0]] / t_max  # type: ignore[operator]
        else:
            scale[op.name] = _move_scale(graph, op, [scale[i] for i in op.inputs])
    return scale


def _move_scale(graph: Graph, op: Op, scales: list[Scale]) -> Scale:
    if all(not isinstance(s, torch.Tensor) for s in scales) and len(set(scales)) == 1:
        return scales[0]
    maps = [s if isinstance(s, torch.Tensor) else torch.full((1, *graph[i].shape), float(s), dtype=torch.float64)
            for s, i in zip(scales, op.inputs)]
    return apply_op(op, maps)


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
        self._weights: dict[tuple, torch.Tensor] = {}  # effective weights of layers fed by a cat
        self._reads_input = graph.static_ops()

    @property
    def n_hidden(self) -> int:
        return len(self.neuron_names)

    @property
    def latency(self) -> int:
        return self.t_max * (self.graph.depth() + 1)

    def scales(self) -> dict[str, Scale]:
        """λ of every op's output codes (the input's is x_max), from the current thresholds."""
        return op_scales(self.graph, self.x_max, self.u_th, self.t_max)

    def _effective_weight(self, op: Op, lam_in: Scale) -> torch.Tensor | None:
        """Weights with per-input scales folded in (inputs of different λ after a cat), else None;
        cached per layer and scales (thresholds set after a pass change the scales)."""
        if not isinstance(lam_in, torch.Tensor):
            return None
        w = weight_of(op.layer).detach()
        rel = (lam_in[0] / lam_in.max()).to(w.dtype)
        if isinstance(op.module, nn.Linear):
            factor = rel.reshape(1, -1)
        else:  # per input channel (constant over space: scales are per layer or per channel)
            factor = rel.reshape(rel.shape[0], -1)[:, 0].reshape(1, -1, *([1] * (w.dim() - 2)))
        key = (op.name, tuple(factor.flatten().tolist()))
        if key not in self._weights:
            self._weights[key] = w * factor
        return self._weights[key]

    def _potential(self, op: Op, k: torch.Tensor, lam_in: Scale) -> torch.Tensor:
        """The silent stage at t_max: Σ_j W_ij k_j + t_max·b_i/λ_in (eq. 3)."""
        u = linear_op(op.layer, k, self._effective_weight(op, lam_in))
        return u + bias_offset(op.layer, self.t_max, ref_scale(lam_in), k.dtype, u.dim())

    def _run(self, x: torch.Tensor, on_potential: Callable[[Op, torch.Tensor], None] | None = None,
             meters: Meters | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One closed-form pass: logits and every neuron op's codes (topological order).
        ``on_potential(neuron op, potential)`` sees a neuron op's potential before it fires (and may
        set its threshold: calibration); ``meters`` record spikes and SynOps."""
        T, g = self.t_max, self.graph
        scale: dict[str, Scale] = {g.input.name: self.x_max}
        value = {g.input.name: encode(x.to(self.dtype), T, self.x_max, self.out_of_range)}
        codes: list[torch.Tensor] = []
        for op in self.plan:
            if op.kind == Kind.SYNAPSE:
                k, lam_in = value[op.inputs[0]], scale[op.inputs[0]]
                if meters is not None:
                    meters.record_synapse(op.name, op.layer, (k > 0).float(), spikes=True,
                                          reads_input=op.inputs[0] in self._reads_input)
                value[op.name], scale[op.name] = self._potential(op, k, lam_in), ref_scale(lam_in)
            elif op.kind == Kind.NEURON:
                u = value[op.inputs[0]]
                if on_potential is not None:
                    on_potential(op, u)
                k = fire_codes(u, torch.tensor(self.u_th[op.name], dtype=u.dtype, device=u.device), T)
                if meters is not None:
                    spikes = float((k > 0).sum())
                    meters.record_neuron_counts(op.name, spikes=spikes, entries=float(k.numel()),
                                                zeros=float(k.numel()) - spikes, kind="TTFS two-stage")
                value[op.name] = k
                scale[op.name] = self.u_th[op.name] * scale[op.inputs[0]] / T  # type: ignore[operator]
                codes.append(k)
            else:  # max pooling, flatten, identity, cat: codes and scales move alike
                value[op.name] = apply_op(op, [value[i] for i in op.inputs])
                scale[op.name] = _move_scale(g, op, [scale[i] for i in op.inputs])
        feed = g.output.inputs[0]
        return value[feed] * (ref_scale(scale[feed]) / T), codes

    @torch.no_grad()
    def closed_form(self, x: torch.Tensor, meters: Meters | None = None, keep_codes: bool = False):
        """Logits (and, with ``keep_codes``, every neuron op's output codes in topological order)."""
        logits, codes = self._run(x, meters=meters)
        return (logits, codes) if keep_codes else logits

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, percentile: float, scales: dict[str, float] | None = None,
                  explicit: dict[str, float] | None = None, seed: int = 0) -> None:
        """Set u_th neuron by neuron (in topological order) from the positive silent-stage potentials
        of ``x`` (their ``percentile``, times ``scales[name]``), or to ``explicit`` values; a layer
        that never reaches a positive potential gets t_max (any threshold gives it no spike)."""
        from ...calibration import positive_quantile

        gen = torch.Generator().manual_seed(seed)

        def threshold(op: Op, u: torch.Tensor) -> None:
            if explicit:
                self.u_th[op.name] = explicit[op.name]
                return
            th = positive_quantile(u, percentile, generator=gen, empty=float(self.t_max))
            self.u_th[op.name] = th * (scales or {}).get(op.name, 1.0)

        self._run(x, on_potential=threshold)


class TTFSEvaluable(Evaluable):
    """The closed-form evaluator: event-driven (one update per neuron), at most one spike each."""

    event_driven = True
    input_spikes = True
    max_spikes_per_neuron = 1.0

    def __init__(self, net: TTFSNetwork):
        self.net, self.graph = net, net.graph
        self.latency = net.latency

    def run_batch(self, x, meters):
        return Outputs(logits=self.net.closed_form(x, meters))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The folded layers' tensors and a threshold ``u_th.<neuron op>`` per neuron op."""
        return {**super().tensors(), **{f"u_th.{n}": torch.tensor(u) for n, u in self.net.u_th.items()}}

    def single_step(self) -> SingleStep:
        raise NirUnsupported("ttfs: its two-stage neuron (silent integration, then a ramp to a single spike) "
                             "has no NIR primitive")
