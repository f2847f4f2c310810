"""rate — rate-coded conversion: ReLU → integrate-and-fire (soft reset; LIF selectable).

Per spiking layer l the activation scale λ_l is calibrated on training data (``max`` or a
``percentile`` of the ANN's positive activations, as SpikingJelly's rate-coding recipe does) and
the network is normalised so every neuron has threshold 1: W_l ← W_l · λ_{l−1}/λ_l,
b_l ← b_l / λ_l (Diehl et al. 2015). NengoDL's two knobs, with NengoDL's meaning:

* ``scale_firing_rates`` s: input to each neuron × s, output amplitude × 1/s, so rates rise s-fold
  at the same expected output (until a neuron saturates at one spike per step). Both factors are
  folded into the weights, so the synaptic layers still receive binary spikes.
* ``synapse`` τ: an exponential low-pass on every spiking layer's output (None = no filter). SynOps
  count the spikes, since the filter is linear and lives on the receiving side.

The input is injected as a constant current into the first layer (its MACs are counted once per
inference). Pooling: average pooling is exact (linear); max pooling passes the maximum of the
(filtered) spike signals in each window — a spike if any input in the window spiked this step — an
approximation that over-counts activity. Output decoding: ``membrane`` (a non-leaky integrator of
the readout current: argmax of the time-averaged logits), ``spikes`` (spike counts of IF readout
neurons) or ``filtered`` (the low-passed readout current at each step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..api import Evaluation, Method
from ..config import ConfigError, Params, param
from ..meters import Meters
from ..netparse import Block, parse_blocks
from ..simulate import NeuronPool, Simulator, SpikingLayer

POOLS = (nn.AvgPool2d, nn.MaxPool2d)


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
    normalization: Literal["max", "percentile"] = param("percentile", "how λ_l is calibrated")
    percentile: float = param(99.99, "percentile of positive activations for λ_l", low=0, low_open=True,
                              high=100)
    calibration_samples: int = param(1000, "training images used for calibration", low=1)
    decode: Literal["membrane", "spikes", "filtered"] = param("membrane", "output decoding")
    eval_samples: int = param(0, "evaluate on the first N test images (0 = all)", low=0)
    time_chunk: int = param(64, "at most this many time steps per chunk", low=1)
    batch_chunk: int = param(500, "images simulated together", low=1)
    memory_mb: float = param(0.0, "memory for one chunk's spikes, bounds the chunk length (0 = by device)",
                             low=0)
    neuron_backend: Literal["inplace", "spikingjelly"] = param(
        "inplace", "neuron kernel: in-place loop (fast) or SpikingJelly's IFNode/LIFNode (same spikes)")

    def validate(self) -> None:
        if self.synapse is not None and self.synapse == 0:
            raise ConfigError("synapse=0 is out of range; valid range is (0, inf] or none")


def calibrate_scales(blocks: list[Block], x: torch.Tensor, mode: str, percentile: float,
                     max_values: int = 2_000_000, seed: int = 0) -> list[float]:
    """λ_l of every spiking block from the ANN's positive activations on ``x``."""
    gen = torch.Generator().manual_seed(seed)
    lams = []
    h = x
    with torch.no_grad():
        for b in blocks[:-1]:
            for _, m in b.pre:
                h = m(h)
            h = torch.relu(b.layer(h))
            pos = h[h > 0].flatten().cpu()
            if pos.numel() == 0:
                lams.append(1.0)  # a silent layer: any scale gives the same (empty) output
                continue
            if mode == "max":
                lams.append(float(pos.max()))
            else:
                if pos.numel() > max_values:
                    pos = pos[torch.randint(pos.numel(), (max_values,), generator=gen)]
                lams.append(float(torch.quantile(pos.double(), percentile / 100.0)))
    return lams


def convert(blocks: list[Block], lams: list[float], scales: list[float], params: RateParams) -> list[SpikingLayer]:
    """Spiking layers with unit thresholds from the ANN's ``blocks``; ``scales`` are per-layer
    firing-rate scales s_l."""
    layers = []
    lam_prev, s_prev = 1.0, 1.0
    for i, b in enumerate(blocks):
        lin = _copy(b.layer)
        spiking = b.neuron is not None
        lam, s = (lams[i], scales[i]) if spiking else (1.0, 1.0)
        with torch.no_grad():
            # previous amplitude λ_{l−1}/s_{l−1}; this layer's input gain s_l/λ_l
            lin.weight.mul_((lam_prev / s_prev) * (s / lam))
            if lin.bias is not None:
                lin.bias.mul_(s / lam)
        node = None
        if spiking:
            node = NeuronPool(None if params.neuron == "if" else params.lif_tau, params.neuron_backend)
        layers.append(SpikingLayer(b.name, lin, pre=list(b.pre), neuron_name=b.neuron, neuron=node))
        lam_prev, s_prev = lam, s
    return layers


def _copy(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer).eval()


@dataclass
class RateModel:
    """What ``prepare`` returns: the ANN, its blocks and calibrated scales (conversion per scale
    vector is cheap, so layer-scaling re-converts for each configuration)."""

    ann: nn.Module
    blocks: list[Block]
    lams: list[float]

    def convert(self, params: RateParams, scales: list[float] | None = None) -> list[SpikingLayer]:
        s = scales if scales is not None else [params.scale_firing_rates] * len(self.lams)
        return convert(self.blocks, self.lams, s, params)


def simulate(ctx, layers: list[SpikingLayer], params: RateParams, split: str = "test",
             keep_per_neuron: bool = False, desc: str = "simulate") -> tuple[Meters, torch.Tensor]:
    """Run the test split through the simulator; returns the meters and correct counts per step."""
    from tqdm.auto import tqdm

    sim = Simulator(layers, synapse=params.synapse, dt=params.dt, decode=params.decode,
                    time_chunk=params.time_chunk, batch_chunk=params.batch_chunk, memory_mb=params.memory_mb)
    meters = Meters(timesteps=params.timesteps, dt=params.dt, keep_per_neuron=keep_per_neuron)
    correct = torch.zeros(params.timesteps, dtype=torch.long)
    limit = params.eval_samples or None
    for x, y in tqdm(ctx.loader(split, batch_size=params.batch_chunk, limit=limit), desc=desc,
                     disable=not ctx.progress, leave=False):
        preds = sim.run(x.to(ctx.device), params.timesteps, meters).cpu()
        correct += (preds == y.unsqueeze(0)).sum(1)
        meters.record_predictions(preds[-1], y)
    return meters, correct


class Rate(Method):
    name = "rate"
    default_model = "cnn7"
    smoke_sets = {"timesteps": "16"}
    Params = RateParams

    @classmethod
    def search_space(cls, trial):
        synapse = trial.suggest_float("synapse", 1e-4, 0.05, log=True)
        return RateParams(
            timesteps=trial.suggest_categorical("timesteps", [16, 32, 64, 128]),
            scale_firing_rates=trial.suggest_float("scale_firing_rates", 0.5, 100, log=True),
            synapse=synapse if trial.suggest_categorical("use_synapse", [False, True]) else None,
            percentile=trial.suggest_float("percentile", 99.0, 100.0),
        )

    def check(self, ctx, params):
        from ..models import build_model

        ds = ctx.dataset
        parse_blocks(build_model(ctx.model_name, ds.input_shape, ds.num_classes), "rate", POOLS)

    def prepare(self, ctx, ann, params) -> RateModel:
        ann = ann.to(ctx.device).eval()
        blocks = parse_blocks(ann, "rate", POOLS)
        x, _ = ctx.dataset.subset("train", params.calibration_samples)
        lams = calibrate_scales(blocks, torch.from_numpy(x).to(ctx.device), params.normalization, params.percentile,
                                seed=ctx.seed)
        return RateModel(ann, blocks, lams)

    def evaluate(self, ctx, model: RateModel, params, split="test"):
        layers = model.convert(params)
        meters, correct = simulate(ctx, layers, params, split, keep_per_neuron=True, desc="simulate rate")
        ev = rate_evaluation(ctx, meters, correct, params)
        ev.metrics.update({f"layer/{b.neuron}/lambda": lam for b, lam in zip(model.blocks, model.lams)})
        return ev


def rate_evaluation(ctx, meters: Meters, correct: torch.Tensor, params: RateParams) -> Evaluation:
    """Metrics, the accuracy-at-every-step curve and the firing-rate statistics artifacts."""
    from ..firing import firing_rate_artifacts

    metrics, layers = meters.summary()
    n = max(meters.samples, 1)
    curve = (correct.double() / n).tolist()  # its last entry is the meters' test/accuracy
    ev = Evaluation(metrics, layers, step_metrics={"test/accuracy_at_t": curve})
    ev.artifacts += firing_rate_artifacts(ctx, meters.firing_rates())
    return ev
