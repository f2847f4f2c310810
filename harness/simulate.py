"""Multistep simulation of rate-coded converted networks on the traced graph, with streaming meters.

The converted network (:class:`RateNetwork`) is the folded ANN graph plus, per synaptic op, a copy
of its layer with the normalisation folded into the weights, per neuron op a pool of
integrate-and-fire neurons, and constant gains where spike trains of different scales meet. The
simulator (:class:`Simulator`)

* computes every op that depends on the input alone once per inference (the input is a constant
  current: the first layers count their MACs once),
* folds time into the batch for every other stateless or synaptic op (``[T·B, ...]`` through one
  conv call) and steps only the neurons,
* runs in chunks over time and batch so memory stays bounded at large T (neuron and filter state
  carry across time chunks; the chunk length adapts to ``memory_mb``),
* meters as it goes: spikes per neuron and per-neuron counts, and the SynOps of every spike-fed
  layer from the spikes that reach it (:func:`harness.graph.event_counts`: summed over the chunk
  when the path is linear, step by step through max pooling) — no T×N spike tensor is kept,
* decodes every time step, so one simulation yields the accuracy-vs-latency curve.

Neurons. The dynamics are SpikingJelly's ``IFNode`` / ``LIFNode`` (``decay_input=False``) with soft
reset (``v_reset=None``); :class:`NeuronPool` runs them either through SpikingJelly itself
(``backend="spikingjelly"``: its multistep operator, which dispatches to SpikingJelly's CUDA/Triton
kernels on a GPU) or through an in-place, allocation-free loop (``backend="inplace"``); ``"auto"``
(the default) takes SpikingJelly on CUDA and the in-place loop on CPU. The in-place loop exists
because SpikingJelly's CPU operator allocates every step and was measured 4× slower on the same
tensors for inference; ``tests/test_rate.py`` checks that both backends give identical spikes,
membranes exactly at threshold included.

SpikingJelly's ``ann2snn`` converter builds the same kind of network (IF neurons between voltage
scalers) but its multistep network recomputes every layer at every step and cannot meter spikes
before pooling; ``benchmarks/bench_simulate.py`` runs both side by side on the same weights.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .graph import Graph, Kind, Op, apply_op, event_counts, event_path
from .meters import Meters

logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


class NeuronPool(nn.Module):
    """IF (``tau=None``) or LIF (membrane time constant ``tau`` in steps) neurons, threshold 1, soft
    reset: v ← v·(1 − 1/τ) + x;  s = [v ≥ 1];  v ← v − s. The membrane starts at ``v_init``: one
    number, or one per neuron (a tensor of one sample's shape)."""

    def __init__(self, tau: float | None = None, backend: str = "auto", v_init: float | torch.Tensor = 0.0):
        super().__init__()
        self.tau, self.backend = tau, backend
        self.v_init: float | torch.Tensor = v_init if isinstance(v_init, torch.Tensor) else float(v_init)
        self.v: torch.Tensor | None = None
        self._sj = None
        if backend == "spikingjelly":
            self._make_sj()

    def _make_sj(self) -> None:
        from spikingjelly.activation_based import neuron

        tau = self.tau
        self._sj = (neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m") if tau is None else
                    neuron.LIFNode(tau=tau, decay_input=False, v_threshold=1.0, v_reset=None, step_mode="m"))
        self.reset()

    @property
    def kind(self) -> str:
        return "IFNode" if self.tau is None else "LIFNode"

    def single_step_node(self) -> nn.Module:
        """The same dynamics as a single-step SpikingJelly node for export, reset to 0 (NIR cannot
        say "reset by subtraction" nor an initial membrane: see :mod:`harness.export`)."""
        from spikingjelly.activation_based import neuron

        if self.tau is None:
            return neuron.IFNode(v_threshold=1.0, v_reset=0.0, step_mode="s")
        return neuron.LIFNode(tau=self.tau, decay_input=False, v_threshold=1.0, v_reset=0.0, step_mode="s")

    def reset(self) -> None:
        self.v = None
        if self._sj is not None:
            from spikingjelly.activation_based import functional

            functional.reset_net(self._sj)
            # a float SpikingJelly broadcasts to the input's shape; a per-neuron tensor is expanded
            # to the batch on the first chunk (forward)
            self._sj.v = self.v_init if not isinstance(self.v_init, torch.Tensor) else 0.0

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``x``: ``[T, B, ...]`` currents, or ``[B, ...]`` constant over ``steps`` steps."""
        constant = steps is not None
        T = int(steps) if steps is not None else x.shape[0]
        if self._sj is None and self.backend == "auto" and x.is_cuda:
            self._make_sj()  # SpikingJelly's CUDA/Triton kernels on a GPU
        if self._sj is not None:
            seq = x.unsqueeze(0).expand(T, *x.shape).contiguous() if constant else x.contiguous()
            if isinstance(self.v_init, torch.Tensor) and not isinstance(self._sj.v, torch.Tensor):
                self._sj.v = self.v_init.to(seq).expand(seq.shape[1:]).clone()  # per neuron, on the first chunk
            return self._sj(seq)
        shape = x.shape if constant else x.shape[1:]
        if self.v is None:
            self.v = (self.v_init.to(x).expand(shape).clone() if isinstance(self.v_init, torch.Tensor) else
                      torch.full(shape, self.v_init, dtype=x.dtype, device=x.device))
        v = self.v
        out = torch.empty((T, *shape), dtype=x.dtype, device=x.device)
        decay = None if self.tau is None else 1.0 - 1.0 / self.tau
        for t in range(T):
            if decay is not None:
                v.mul_(decay)
            v.add_(x if constant else x[t])
            s = out[t]
            torch.ge(v, 1.0, out=s)
            v.sub_(s)
        return out


class Lowpass:
    """Exponential synapse y_t = a·y_{t−1} + (1 − a)·x_t, a = exp(−dt/τ) (unit DC gain, as
    NengoDL's ``Lowpass``); τ = None passes spikes through."""

    def __init__(self, tau: float | None, dt: float):
        self.a = None if not tau else math.exp(-dt / tau)
        self.state: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.state.clear()

    def __call__(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if self.a is None:
            return x
        y = self.state.get(key)
        if y is None:
            y = torch.zeros_like(x[0])
        out = torch.empty_like(x)
        for t in range(x.shape[0]):
            y = self.a * y + (1 - self.a) * x[t]
            out[t] = y
        self.state[key] = y
        return out


@dataclass
class RateNetwork:
    """A converted network on the folded graph ``graph``: scaled synaptic layers, neuron pools and
    input gains ``gains[(op, k)]`` (a constant on the k-th input of ``op``)."""

    graph: Graph
    layers: dict[str, nn.Module]
    neurons: dict[str, NeuronPool]
    gains: dict[tuple[str, int], float] = field(default_factory=dict)
    # per-channel thresholds θ_c (relative to the layer's threshold 1), shaped to broadcast over a
    # neuron op's [N, C, ...] currents: the pool sees x/θ and its spikes carry θ (SpikingJelly's
    # ChannelVoltageScaler pair around an IF node); meters count the binary spikes
    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    gated: frozenset[str] = frozenset()  # max-pool ops that pass the spikes of the busiest input


class Simulator:
    """Run a :class:`RateNetwork` for ``T`` steps on static inputs (direct current), or on event
    frames ``[B, T, ...]``, one frame per step: the input is then a spike source whose event counts
    drive the first layers (SynOps, not MACs)."""

    def __init__(self, net: RateNetwork, *, synapse: float | None = None, dt: float = 1e-3,
                 decode: str = "membrane", time_chunk: int = 64, batch_chunk: int = 1000,
                 memory_mb: float = 0.0):
        self.net, self.g = net, net.graph
        self.filter = Lowpass(synapse, dt)
        self.dt, self.decode = dt, decode
        self.time_chunk, self.batch_chunk, self.memory_mb = time_chunk, batch_chunk, memory_mb
        backend = next((n.backend for n in net.neurons.values()), "inplace")
        self.out_neuron = NeuronPool(None, backend) if decode == "spikes" else None
        self._modes = {events: self._plan(events) for events in (False, True)}
        self._mode(False)
        self.gate_counts: dict[str, torch.Tensor] = {}
        self.readout = self.g.output.inputs[0]
        self.widest = max((op.size for op in self.g.synapses), default=1)

    def _plan(self, events: bool) -> tuple:
        """What runs once and what steps: with ``events`` the input is a frame per step (event counts,
        a spike source), so nothing is static."""
        g, gated = self.g, self.net.gated
        static = set() if events else g.static_ops()
        work = [op for op in g if op.kind not in (Kind.INPUT, Kind.OUTPUT, Kind.SHAPE)]
        dynamic = [op for op in work if op.name not in static]
        return (static, [op for op in work if op.name in static], dynamic,
                {op.name: (pool_geometry(op), event_path(g, op.name, events, stops=gated))
                 for op in dynamic if op.name in gated},
                {op.name: event_path(g, op.name, events, stops=gated) for op in dynamic if op.kind == Kind.SYNAPSE})

    def _mode(self, events: bool) -> None:
        self.events = events
        self.static, self.static_plan, self.dynamic_plan, self.gated, self.paths = self._modes[events]

    def reset(self) -> None:
        for n in self.net.neurons.values():
            n.reset()
        if self.out_neuron is not None:
            self.out_neuron.reset()
        self.filter.reset()
        self.gate_counts.clear()

    def _chunk(self, x: torch.Tensor, T: int) -> int:
        """Time steps per chunk: the widest layer's spikes for one chunk fit in ``memory_mb``.

        ``memory_mb=0`` picks by device: folding many steps into one batch pays off on a GPU,
        while on a CPU the extra memory traffic costs more than it saves (measured: cnn7, 256
        images, T = 64 took 1.76 s with 13-step chunks and 0.99 s with 1-step chunks).
        """
        budget = self.memory_mb or (2048.0 if x.device.type == "cuda" else 32.0)
        per_step = self.widest * x.shape[0] * x.element_size() * 3  # spikes, next currents, temporaries
        return max(1, min(self.time_chunk, T, int(budget * 2**20 // max(per_step, 1))))

    @torch.no_grad()
    def run(self, x: torch.Tensor, T: int, meters: Meters | None = None) -> torch.Tensor:
        """Predictions at every step, ``[T, B]`` (int64). Meters (if given) accumulate counts."""
        preds = []
        for b0 in range(0, x.shape[0], self.batch_chunk):
            preds.append(self._run_batch(x[b0:b0 + self.batch_chunk], T, meters))
        return torch.cat(preds, dim=1)

    @torch.no_grad()
    def spike_counts(self, x: torch.Tensor, T: int, name: str) -> torch.Tensor:
        """Spikes of neuron op ``name``, per neuron, summed over the images ``x`` and ``T`` steps —
        simulating only the ops up to it (light calibration measures one layer at a time)."""
        total = torch.zeros(self.g[name].shape, dtype=torch.float64, device=x.device)
        for b0 in range(0, x.shape[0], self.batch_chunk):
            total += self._run_batch(x[b0:b0 + self.batch_chunk], T, None, until=name)
        return total

    def _inputs(self, op: Op, env: dict[str, torch.Tensor], tc: int, B: int, expand: bool) -> list[torch.Tensor]:
        """The op's input values (gains applied); static values are broadcast over the chunk's
        steps when ``expand`` (the op mixes them with time-varying ones)."""
        out = []
        for k, name in enumerate(op.inputs):
            v = env[name]
            if expand and name in self.static:
                v = v.unsqueeze(0).expand(tc, *v.shape).reshape(tc * B, *v.shape[1:])
            gain = self.net.gains.get((op.name, k))
            out.append(v if gain is None else v * gain)
        return out

    def _run_batch(self, x: torch.Tensor, T: int, meters: Meters | None, until: str | None = None) -> torch.Tensor:
        """Predictions ``[T, B]``; with ``until``, that neuron op's spike counts per neuron (summed
        over the batch and the steps) from a simulation that stops there."""
        self.reset()
        until_counts = None
        B = x.shape[0]
        frames, static_env = self._once(x, T, meters)
        chunk = self._chunk(x, T)
        acc = None  # decoded output accumulated over time
        out_preds = []
        # metering: spike counts per neuron and sample, summed over the batch's steps; events
        # through max pooling (step by step) summed likewise. Recorded once per batch, so metering
        # adds one accumulation per neuron op and step to the simulation.
        spike_counts: dict[str, torch.Tensor] = {}
        step_events: dict[str, torch.Tensor] = {}
        for t0 in range(0, T, chunk):
            tc = min(chunk, T - t0)
            env = dict(static_env)
            raw: dict[str, torch.Tensor] = {}  # this chunk's spikes, [tc·B, ...]
            if frames is not None:
                name = self.g.input.name
                per = frames[t0:t0 + tc]
                env[name] = raw[name] = per.reshape(tc * B, *x.shape[2:])
                if meters is not None:
                    _accumulate(spike_counts, name, per[0] if tc == 1 else per.sum(0))
            reached = False
            for op in self.dynamic_plan:
                if reached:
                    break  # nothing after ``until`` is needed
                if op.kind == Kind.NEURON:
                    s = self._neuron_step(op, env, raw, tc, B)
                    if meters is not None:
                        _accumulate(spike_counts, op.name, s[0] if tc == 1 else s.sum(0))
                    if op.name == until:
                        until_counts = (until_counts or []) + [s.sum((0, 1), dtype=torch.float64)]
                        reached = True
                    continue
                if op.name in self.gated:
                    (inp,) = self._inputs(op, env, tc, B, expand=False)
                    gpath = self.gated[op.name][1]  # the spikes that reach the pool's input
                    arriving = event_counts(self.g, gpath, {s: raw[s] for s in gpath.sources})
                    spikes, env[op.name] = self._gate(op.name, arriving, inp, tc, B)
                    raw[op.name] = spikes
                    if meters is not None:
                        per = spikes.reshape(tc, B, *spikes.shape[1:])
                        _accumulate(spike_counts, op.name, per[0] if tc == 1 else per.sum(0))
                    continue
                args = self._inputs(op, env, tc, B, expand=True)
                if op.kind == Kind.SYNAPSE:
                    path = self.paths[op.name]
                    if meters is not None and path.per_step:
                        ev = event_counts(self.g, path, {s: raw[s] for s in path.sources})
                        _accumulate(step_events, op.name, ev if tc == 1 else ev.reshape(tc, B, *ev.shape[1:]).sum(0))
                    env[op.name] = self.net.layers[op.name](args[0])
                else:
                    env[op.name] = apply_op(op, args)
            if until is not None:
                continue
            steps = self._decode(self._readout(env, tc, B)).cumsum(0)
            if acc is not None:
                steps += acc
            acc = steps[-1]
            out_preds.append(steps.argmax(-1))
        if until is not None:
            if until_counts is None:
                raise ValueError(f"{until} is not a simulated neuron op")
            return torch.stack(until_counts).sum(0)
        if meters is not None:
            self._record(meters, spike_counts, step_events, T, B)
        return torch.cat(out_preds, dim=0)

    def _once(self, x: torch.Tensor, T: int, meters: Meters | None) -> tuple[torch.Tensor | None, dict]:
        """The values computed once per inference (from a static input), and event frames as
        ``[T, B, ...]`` when ``x`` holds them (``[B, T, ...]``: a frame per step, nothing static)."""
        B = x.shape[0]
        self._mode(x.dim() == len(self.g.input.shape) + 2)
        frames = None
        if self.events:
            if x.shape[1] != T:
                raise ValueError(f"{x.shape[1]} frames per sample for a simulation of {T} steps")
            frames = x.transpose(0, 1)
            if meters is not None:
                meters.count("input_events", float(x.sum(dtype=torch.float64)))
        env: dict[str, torch.Tensor] = {} if self.events else {self.g.input.name: x}
        for op in self.static_plan:  # the input is constant: these run once
            args = self._inputs(op, env, 1, B, expand=False)
            if op.kind == Kind.SYNAPSE:
                layer = self.net.layers[op.name]
                if meters is not None:
                    meters.record_synapse(op.name, layer, args[0], spikes=False, reads_input=True)
                env[op.name] = layer(args[0])
            else:
                env[op.name] = apply_op(op, args)
        return frames, env

    def _record(self, meters: Meters, spike_counts: dict, step_events: dict, T: int, B: int) -> None:
        """Record one batch: neurons in op order, each synaptic layer before the neurons it feeds."""
        for op in self.dynamic_plan:
            if op.kind == Kind.SYNAPSE:
                path = self.paths[op.name]
                counts = (step_events[op.name] if path.per_step else
                          event_counts(self.g, path, {s: spike_counts[s] for s in path.sources}))
                meters.record_synapse(op.name, self.net.layers[op.name], counts, spikes=True, rows=T * B,
                                      reads_input=all(self.g[s].kind == Kind.INPUT for s in path.sources))
            elif op.kind == Kind.NEURON:
                counts = spike_counts[op.name]
                per_neuron = counts.sum(0)
                total = float(per_neuron.sum(dtype=torch.float64))
                entries = float(T * counts.numel())
                meters.record_neuron_counts(op.name, spikes=total, entries=entries, zeros=entries - total,
                                            kind=self.net.neurons[op.name].kind, per_neuron=per_neuron)

    def _neuron_step(self, op: Op, env: dict[str, torch.Tensor], raw: dict[str, torch.Tensor], tc: int,
                     B: int) -> torch.Tensor:
        """Step neuron op ``op`` through the chunk: its binary spikes ``[tc, B, ...]``; ``raw`` gets
        them and ``env`` the signal it passes on (filtered, times θ_c with per-channel thresholds)."""
        (inp,) = self._inputs(op, env, tc, B, expand=False)
        pool = self.net.neurons[op.name]
        theta = self.net.channel.get(op.name)
        if theta is not None:
            inp = inp / theta.to(inp.device)
        s = pool(inp, steps=tc) if op.inputs[0] in self.static else pool(inp.reshape(tc, B, *inp.shape[1:]))
        raw[op.name] = s.reshape(tc * B, *s.shape[2:])
        signal = self.filter(op.name, s)
        if theta is not None:
            signal = signal * theta.to(signal.device)
        env[op.name] = signal.reshape(tc * B, *s.shape[2:])
        return s

    def _readout(self, env: dict[str, torch.Tensor], tc: int, B: int) -> torch.Tensor:
        """The readout current of the chunk, ``[tc, B, classes]`` (its gain applied)."""
        h = env[self.readout]
        if self.readout in self.static:  # a readout-only network: a constant current
            h = h.unsqueeze(0).expand(tc, *h.shape)
        else:
            h = h.reshape(tc, B, *h.shape[1:])
        gain = self.net.gains.get((self.g.output.name, 0))
        return h if gain is None else h * gain

    def _gate(self, name: str, spikes: torch.Tensor, signal: torch.Tensor, tc: int, B: int):
        """A gated max pool (Rueckauer et al. 2017): in each window, the input with the most spikes
        so far (this step's included; the first in raster order on a tie) passes its spikes —
        and its (filtered, scaled) signal; the others are blocked. ``spikes`` (the spike events
        arriving at each input: 0/1 from one neuron op, more through a sum) and ``signal``:
        ``[tc·B, C, H, W]``; returns the passed events and signal."""
        kernel, stride, padding, dilation, ceil_mode = self.gated[name][0]
        steps = spikes.reshape(tc, B, *spikes.shape[1:])
        counts = steps.cumsum(0)
        prev = self.gate_counts.get(name)
        if prev is not None:
            counts += prev
        self.gate_counts[name] = counts[-1].clone()
        # max_pool2d keeps the first maximum of a window (strict >): the tie rule above
        _, idx = torch.nn.functional.max_pool2d(counts.reshape(spikes.shape), kernel, stride, padding, dilation,
                                                ceil_mode, return_indices=True)
        flat = idx.flatten(2)
        passed = spikes.flatten(2).gather(2, flat).view_as(idx)
        carried = signal.flatten(2).gather(2, flat).view_as(idx)
        return passed, carried

    def _decode(self, current: torch.Tensor) -> torch.Tensor:
        if self.out_neuron is not None:
            return self.out_neuron(current)
        if self.decode == "filtered":
            return self.filter(self.readout + "/out", current)
        return current  # "membrane": a non-leaky integrator of the readout current


def pool_geometry(op: Op) -> tuple:
    """(kernel, stride, padding, dilation, ceil_mode) of a 2-d max pool op, module or functional
    (``F.max_pool2d``'s defaults filled in); refuses any other max pool."""
    m = op.module
    if m is not None:
        if not isinstance(m, nn.MaxPool2d):
            from .errors import ConfigError

            raise ConfigError(f"{op.describe()} is not a 2-d max pool; use --set maxpool=max")
        return m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
    names = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    a, kw = op.node.args, op.node.kwargs
    got = {k: (a[i + 1] if len(a) > i + 1 else kw.get(k)) for i, k in enumerate(names)}
    kernel = got["kernel_size"]
    return (kernel, got["stride"] or kernel, got["padding"] or 0, got["dilation"] or 1, bool(got["ceil_mode"]))


def _accumulate(into: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    if key in into:
        into[key].add_(value)
    else:
        into[key] = value.clone()
