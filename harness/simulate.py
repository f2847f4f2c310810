"""Multistep simulation of rate-coded converted networks, with streaming meters.

The converted network is an explicit list of :class:`SpikingLayer` blocks (pre-ops, synaptic
layer, integrate-and-fire neurons with soft reset), so the simulator can

* fold time into the batch for every stateless op (``[T·B, ...]`` through one conv call),
* compute the first layer once: the input is a constant current (direct-current input),
* run in chunks over time and batch so memory stays bounded at large T (neuron and filter state
  carry across time chunks; the chunk length adapts to ``memory_mb``),
* meter as it goes: SynOps from spike counts summed over the chunk *before* pooling and filtering
  (a spike is a synaptic event whatever the receiving side does with it), spikes per neuron and
  per-neuron counts for firing-rate distributions — no T×N spike tensor is kept,
* decode every time step, so one simulation yields the accuracy-vs-latency curve.

Neurons. The dynamics are SpikingJelly's ``IFNode`` / ``LIFNode`` (``decay_input=False``) with soft
reset (``v_reset=None``); :class:`NeuronPool` runs them either through SpikingJelly itself
(``backend="spikingjelly"``) or through an in-place, allocation-free loop (``backend="inplace"``,
the default). The in-place loop exists because SpikingJelly's CPU operator allocates every step
and was measured 4× slower on the same tensors for inference; ``tests/test_rate.py`` checks that
both backends give identical spikes.

SpikingJelly's ``ann2snn`` converter is not used to build the structure because NengoDL's
semantics need the per-layer input gain and output amplitude folded into the weights and a
synaptic filter between layers, and the meters must see spikes before pooling.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .meters import Meters

logging.getLogger("torch._library.triton").setLevel(logging.ERROR)


class NeuronPool:
    """IF (``tau=None``) or LIF (membrane time constant ``tau`` in steps) neurons, threshold 1, soft
    reset: v ← v·(1 − 1/τ) + x;  s = [v ≥ 1];  v ← v − s."""

    def __init__(self, tau: float | None = None, backend: str = "inplace"):
        self.tau, self.backend = tau, backend
        self.v: torch.Tensor | None = None
        self._sj = None
        if backend == "spikingjelly":
            from spikingjelly.activation_based import neuron

            self._sj = (neuron.IFNode(v_threshold=1.0, v_reset=None, step_mode="m") if tau is None else
                        neuron.LIFNode(tau=tau, decay_input=False, v_threshold=1.0, v_reset=None, step_mode="m"))

    @property
    def kind(self) -> str:
        return "IFNode" if self.tau is None else "LIFNode"

    def reset(self) -> None:
        self.v = None
        if self._sj is not None:
            from spikingjelly.activation_based import functional

            functional.reset_net(self._sj)

    def __call__(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """``x``: ``[T, B, ...]`` currents, or ``[B, ...]`` constant over ``steps`` steps."""
        constant = steps is not None
        T = steps if constant else x.shape[0]
        if self._sj is not None:
            seq = x.unsqueeze(0).expand(T, *x.shape).contiguous() if constant else x.contiguous()
            return self._sj(seq)
        shape = x.shape if constant else x.shape[1:]
        if self.v is None:
            self.v = torch.zeros(shape, dtype=x.dtype, device=x.device)
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


@dataclass
class SpikingLayer:
    """``pre`` ops (pooling, flatten) → ``layer`` → neurons (absent for the readout)."""

    name: str
    layer: nn.Module  # weights and bias already scaled for unit thresholds
    pre: list[tuple[str, nn.Module]] = field(default_factory=list)
    neuron_name: str | None = None
    neuron: NeuronPool | None = None


def fold(x: torch.Tensor, fn) -> torch.Tensor:
    """Apply a stateless op to ``[T, B, ...]`` by folding time into the batch."""
    T, B = x.shape[:2]
    y = fn(x.reshape(T * B, *x.shape[2:]))
    return y.reshape(T, B, *y.shape[1:])


def _apply(x: torch.Tensor, pre: list[tuple[str, nn.Module]]) -> torch.Tensor:
    for _, m in pre:
        x = m(x)
    return x


def event_counts(counts: torch.Tensor, pre: list[tuple[str, nn.Module]]) -> torch.Tensor:
    """Spike counts as the synaptic layer sees them: average pooling becomes sum pooling, so every
    pre-pool spike is counted once (each reaches the same weights through the pooling)."""
    for _, m in pre:
        if isinstance(m, nn.AvgPool2d):
            k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size, m.kernel_size)
            counts = m(counts) * (k[0] * k[1])
        else:
            counts = m(counts)
    return counts


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


class Simulator:
    """Run a list of :class:`SpikingLayer` for ``T`` steps on static inputs (direct current)."""

    def __init__(self, layers: list[SpikingLayer], *, synapse: float | None = None, dt: float = 1e-3,
                 decode: str = "membrane", time_chunk: int = 64, batch_chunk: int = 1000,
                 memory_mb: float = 0.0):
        self.layers = layers
        self.filter = Lowpass(synapse, dt)
        self.dt, self.decode = dt, decode
        self.time_chunk, self.batch_chunk, self.memory_mb = time_chunk, batch_chunk, memory_mb
        backend = next((sl.neuron.backend for sl in layers if sl.neuron is not None), "inplace")
        self.out_neuron = NeuronPool(None, backend) if decode == "spikes" else None
        self.readout_name = layers[-1].name

    def reset(self) -> None:
        for sl in self.layers:
            if sl.neuron is not None:
                sl.neuron.reset()
        if self.out_neuron is not None:
            self.out_neuron.reset()
        self.filter.reset()

    def _chunk(self, x: torch.Tensor, T: int) -> int:
        """Time steps per chunk: the widest layer's spikes for one chunk fit in ``memory_mb``.

        ``memory_mb=0`` picks by device: folding many steps into one batch pays off on a GPU,
        while on a CPU the extra memory traffic costs more than it saves (measured: cnn7, 256
        images, T = 64 took 1.76 s with 13-step chunks and 0.99 s with 1-step chunks).
        """
        budget = self.memory_mb or (2048.0 if x.device.type == "cuda" else 32.0)
        widest = 0
        with torch.no_grad():
            h = x[:1]
            for sl in self.layers:
                h = sl.layer(_apply(h, sl.pre))
                widest = max(widest, h[0].numel())
        per_step = widest * x.shape[0] * x.element_size() * 3  # spikes, next currents, temporaries
        return max(1, min(self.time_chunk, T, int(budget * 2**20 // max(per_step, 1))))

    @torch.no_grad()
    def run(self, x: torch.Tensor, T: int, meters: Meters | None = None) -> torch.Tensor:
        """Predictions at every step, ``[T, B]`` (int64). Meters (if given) accumulate counts."""
        preds = []
        for b0 in range(0, x.shape[0], self.batch_chunk):
            preds.append(self._run_batch(x[b0:b0 + self.batch_chunk], T, meters))
        return torch.cat(preds, dim=1)

    def _run_batch(self, x: torch.Tensor, T: int, meters: Meters | None) -> torch.Tensor:
        self.reset()
        first = self.layers[0]
        static = _apply(x, first.pre)
        current0 = first.layer(static)  # constant input current: the first layer runs once
        if meters is not None:
            meters.record_synapse(first.name, first.layer, static, spikes=False)
        chunk = self._chunk(x, T)
        acc = None  # decoded output accumulated over time
        out_preds = []
        for t0 in range(0, T, chunk):
            tc = min(chunk, T - t0)
            h = None
            for i, sl in enumerate(self.layers):
                if i > 0:
                    if meters is not None:
                        counts = event_counts(h.sum(0), sl.pre)
                        meters.record_synapse(sl.name, sl.layer, counts, spikes=True, rows=tc * h.shape[1])
                    h = fold(self.filter(sl.name, h), lambda z, sl=sl: sl.layer(_apply(z, sl.pre)))
                if sl.neuron is None:
                    break
                h = sl.neuron(current0, steps=tc) if i == 0 else sl.neuron(h)
                if meters is not None:
                    self._record_neurons(meters, sl, h)
            if i == 0:  # a readout-only network: its current is the constant first-layer output
                h = current0.unsqueeze(0).expand(tc, *current0.shape)
            steps = self._decode(h).cumsum(0)
            if acc is not None:
                steps += acc
            acc = steps[-1]
            out_preds.append(steps.argmax(-1))
        return torch.cat(out_preds, dim=0)

    @staticmethod
    def _record_neurons(meters: Meters, sl: SpikingLayer, spikes: torch.Tensor) -> None:
        per_neuron = spikes.sum((0, 1))
        total = float(per_neuron.sum())
        entries = float(spikes.numel())
        meters.record_neuron_counts(sl.neuron_name, spikes=total, entries=entries, zeros=entries - total,
                                    kind=sl.neuron.kind, per_neuron=per_neuron)

    def _decode(self, current: torch.Tensor) -> torch.Tensor:
        if self.out_neuron is not None:
            return self.out_neuron(current)
        if self.decode == "filtered":
            return self.filter(self.readout_name + "/out", current)
        return current  # "membrane": a non-leaky integrator of the readout current


@torch.no_grad()
def reference_loop(layers: list[SpikingLayer], x: torch.Tensor, T: int, *, synapse: float | None = None,
                   dt: float = 1e-3, decode: str = "membrane") -> torch.Tensor:
    """The plain step-by-step loop — one time step through the whole network at a time, every
    layer recomputed each step — for testing the simulator: predictions ``[T, B]``."""
    sim = Simulator(layers, synapse=synapse, dt=dt, decode=decode, time_chunk=1, batch_chunk=x.shape[0])
    sim.reset()
    acc = None
    preds = []
    for _ in range(T):
        h = None
        for i, sl in enumerate(layers):
            if i == 0:
                h = sl.layer(_apply(x, sl.pre))
            else:
                h = sl.layer(_apply(sim.filter(sl.name, h.unsqueeze(0))[0], sl.pre))
            if sl.neuron is None:
                break
            h = sl.neuron(h.unsqueeze(0))[0]
        out = sim._decode(h.unsqueeze(0))[0]
        acc = out if acc is None else acc + out
        preds.append(acc.argmax(-1))
    return torch.stack(preds)
