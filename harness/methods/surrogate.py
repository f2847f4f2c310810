"""surrogate — direct training of a multistep LIF network with surrogate gradients (escudero-*).

The traced network (any architecture the graph IR accepts: Conv/Linear, ReLU, pooling, residual
adds, concatenations, BatchNorm) is rebuilt with SpikingJelly 2.x multistep ``LIFNode`` neurons in
place of its ReLUs and trained from scratch through Lightning, following Ledinauskas et al. (2020).
Time is folded into the batch: every tensor of the rebuilt network is ``[T·B, ...]``, so pooling,
convolutions, adds and the network's own BatchNorm run unchanged, and each LIF op unfolds its input
to ``[T, B, ...]`` to step through time.

* **surrogate derivative** of the spike w.r.t. the membrane potential u:
  ∂S/∂u ≈ β · φ((u − θ)/γ) with φ(0) = 1 — width γ and height β are independent knobs (the seed's
  point: tuning them keeps gradients from vanishing or exploding through deep SNNs). φ is the
  triangle max(0, 1 − |z|), the fast sigmoid 1/(1 + |z|)², arctan's 1/(1 + z²) or the logistic
  derivative 4σ(4z)(1 − σ(4z)). SpikingJelly's own surrogates have a single ``alpha`` that ties
  width and height together (unit area), hence :class:`WidthHeightSurrogate` below, a subclass of
  SpikingJelly's ``SurrogateFunctionBase`` used by its LIF kernels unchanged.
* **batch norm for SNNs**: ``BatchNorm`` after every synaptic layer that the network does not
  already follow with one (the readout excepted), with statistics over time and batch together
  (the folded ``[T·B, ...]`` tensor, as SpikingJelly's ``SeqToANNContainer``).
* **input encoding**: ``direct`` (the analog image is a constant input current; the first layer is
  computed once and its MACs counted once) or ``poisson`` (SpikingJelly's ``PoissonEncoder``: a
  spike with probability = pixel value at each step; the first layer then counts SynOps).
* **readout**: ``mean`` (cross-entropy on the readout layer's output averaged over T),
  ``membrane`` (cross-entropy on the maximum over time of a non-spiking LIF readout's membrane,
  SpikingJelly's ``NonSpikingLIFNode``) or ``spikes`` (LIF readout neurons; MSE between their
  firing rates and the one-hot label, as in SpikingJelly's tutorials).

Per-epoch loss/accuracy and the mean gradient norm of every synaptic layer are logged as step
metrics (``surrogate/...``); ``surrogate/grad_norm_ratio`` is the first layer's mean gradient norm
over the last layer's (≪ 1: vanishing towards the input, ≫ 1: exploding). Evaluation decodes every
time step, so one run also yields accuracy vs latency (``test/accuracy_at_t``). A non-finite loss
stops training with a clear message (an Optuna study prunes the trial).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.fx as fx
from torch import nn

from ..api import Method, Outputs, Preparation
from ..config import Params, param
from ..errors import ConfigError, UnknownNameError
from ..evaluation import GraphSNN
from ..graph import (
    Graph,
    Kind,
    Op,
    build,
    free_target,
    insert_after,
    insert_after_edge,
    register_module_kind,
    set_module,
    spike_paths,
    symbolic_trace,
    unsupported_ops,
)
from ..metrics import MetricSpec

FAMILIES = ("triangle", "fast-sigmoid", "arctan", "sigmoid")
# what may lie between the readout layer and the output (a readout pooled over space, flattened)
READOUT_PASS = (Kind.FLATTEN, Kind.IDENTITY, Kind.AVGPOOL, Kind.ADAPTIVE_AVGPOOL)


def surrogate_shape(family: str, z: torch.Tensor) -> torch.Tensor:
    """φ(z): the surrogate derivative's shape, peak 1 at z = 0, unit width."""
    if family == "triangle":
        return (1.0 - z.abs()).clamp_min(0.0)
    if family == "fast-sigmoid":
        return 1.0 / (1.0 + z.abs()) ** 2
    if family == "arctan":
        return 1.0 / (1.0 + z * z)
    if family == "sigmoid":
        s = torch.sigmoid(4.0 * z)
        return 4.0 * s * (1.0 - s)
    raise UnknownNameError("surrogate family", family, FAMILIES)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, family, width, height):
        ctx.save_for_backward(x)
        ctx.family, ctx.width, ctx.height = family, width, height
        return (x >= 0).to(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.height * surrogate_shape(ctx.family, x / ctx.width), None, None, None


def _primitive(family: str, z: torch.Tensor) -> torch.Tensor:
    """An antiderivative of φ mapped to [0, 1] (the smooth function the surrogate differentiates);
    only used when SpikingJelly switches the surrogate to non-spiking mode."""
    if family == "triangle":
        return (0.5 + z - z * z.abs() / 2).clamp(0, 1).where(z.abs() < 1, (z > 0).to(z))
    if family == "fast-sigmoid":
        return 0.5 + 0.5 * z / (1 + z.abs())
    if family == "arctan":
        return 0.5 + torch.atan(z) / torch.pi
    return torch.sigmoid(4.0 * z)


try:
    from spikingjelly.activation_based.surrogate import SurrogateFunctionBase as _SJBase
except ImportError:  # pragma: no cover - spikingjelly is a dependency
    _SJBase = nn.Module


class WidthHeightSurrogate(_SJBase):
    """Heaviside forward, β·φ(x/γ) backward (see the module docstring)."""

    def __init__(self, family: str = "triangle", width: float = 1.0, height: float = 1.0, spiking: bool = True):
        super().__init__(spiking=spiking, family=family, width=width, height=height)

    @staticmethod
    def spiking_function(x, family="triangle", width=1.0, height=1.0):
        return _Spike.apply(x, family, width, height)

    @staticmethod
    def primitive_function(x, family="triangle", width=1.0, height=1.0):
        return height * width * _primitive(family, x / width)


@dataclass(frozen=True)
class SurrogateParams(Params):
    timesteps: int = param(4, "T: time steps per sample, in training and inference", low=1, high=1000)
    tau: float = param(2.0, "LIF membrane time constant τ in steps", low=1, low_open=True)
    threshold: float = param(1.0, "firing threshold θ", low=0, low_open=True)
    reset: Literal["hard", "soft"] = param("hard", "hard: v ← 0 after a spike; soft: v ← v − θ")
    detach_reset: bool = param(True, "no gradient through the reset")
    surrogate: Literal["triangle", "fast-sigmoid", "arctan", "sigmoid"] = param(
        "triangle", "shape φ of the surrogate derivative")
    width: float = param(1.0, "γ: width of the surrogate derivative (in units of membrane potential)", low=0,
                         low_open=True)
    height: float = param(1.0, "β: height of the surrogate derivative at threshold", low=0, low_open=True)
    batch_norm: bool = param(True, "batch norm over time and batch after every synaptic layer")
    encoding: Literal["direct", "poisson", "events"] = param(
        "direct", "input: constant current, Poisson spikes, or event data's frames (one per step; the default on "
                  "event data)")
    readout: Literal["mean", "membrane", "spikes"] = param("mean", "what the loss sees (module docstring)")
    epochs: int = param(10, "training epochs", low=1)
    lr: float = param(1e-3, "Adam learning rate", low=0, low_open=True)


class TimeLIF(nn.Module):
    """SpikingJelly's multistep ``LIFNode`` on time-folded tensors: ``[T·B, ...]`` in and out."""

    def __init__(self, timesteps: int, node: nn.Module):
        super().__init__()
        self.timesteps, self.node = timesteps, node

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.node)  # one call holds all T steps of a fresh inference
        T = self.timesteps
        out = self.node(x.reshape(T, x.shape[0] // T, *x.shape[1:]).contiguous())
        return out.reshape(x.shape)


class ExpandTime(nn.Module):
    """Broadcast a static ``[B, ...]`` tensor (it depends on the input alone) over ``T`` steps."""

    def __init__(self, timesteps: int):
        super().__init__()
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.timesteps, *x.shape).reshape(self.timesteps * x.shape[0], *x.shape[1:])


class PoissonInput(nn.Module):
    """SpikingJelly's ``PoissonEncoder`` over ``T`` steps: ``[B, ...]`` images in, ``[T·B, ...]`` spikes out."""

    def __init__(self, timesteps: int):
        super().__init__()
        from spikingjelly.activation_based import encoding

        self.timesteps = timesteps
        self.encoder = encoding.PoissonEncoder(step_mode="m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.encoder(x.unsqueeze(0).repeat(self.timesteps, *([1] * x.dim())))
        return seq.reshape(self.timesteps * x.shape[0], *x.shape[1:])


class EventFrames(nn.Module):
    """Event data's frames ``[B, T, ...]`` (event counts) in, one frame per step out: ``[T·B, ...]``.
    An input-event source: the harness counts the events it passes (``input_events``)."""

    input_events = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


register_module_kind(TimeLIF, Kind.NEURON)
register_module_kind(ExpandTime, Kind.EXPAND)
register_module_kind(PoissonInput, Kind.ENCODER)
register_module_kind(EventFrames, Kind.ENCODER)


def surrogate_problems(graph: Graph) -> list[tuple[Op, str]]:
    """Ops a multistep LIF network cannot be rebuilt from (empty: it can)."""
    problems = unsupported_ops(graph, {Kind.ACTIVATION: "a non-linearity other than ReLU"},
                               "an op without a spiking equivalent")
    if problems:
        return problems
    problems = spike_paths(graph, _static_before_norm(graph))[1]
    if graph.feed(graph.output.name, READOUT_PASS).kind != Kind.SYNAPSE:
        problems.append((graph.output, "the network must end in a linear readout layer"))
    return problems


def _static_before_norm(graph: Graph) -> set[str]:
    """Ops computed once per inference (input-only), stopping at BatchNorm: BN normalises over time
    and batch together, so it runs on the time-expanded tensor."""
    static: set[str] = set()
    for op in graph:
        if op.kind == Kind.INPUT:
            static.add(op.name)
        elif op.kind in (Kind.NEURON, Kind.NORM, Kind.ENCODER, Kind.EXPAND):
            continue
        elif op.inputs and all(i in static for i in op.inputs):
            static.add(op.name)
    return static


def rebuild(arch: nn.Module, input_shape: tuple[int, ...], p: SurrogateParams) -> fx.GraphModule:
    """The traced ``arch`` with LIF neurons for its ReLUs, SNN batch norm, time expansion and the
    input encoding; its output is the readout layer's current (``[T·B, classes]``), or the spikes of
    LIF readout neurons (``readout=spikes``, op ``readout``)."""
    from spikingjelly.activation_based import neuron

    gm = symbolic_trace(arch, "the network")
    g = build(gm, input_shape)
    problems = surrogate_problems(g)
    if problems:
        g.check("surrogate", problems)
    T = p.timesteps

    def lif() -> nn.Module:
        return TimeLIF(T, neuron.LIFNode(
            tau=p.tau, decay_input=True, v_threshold=p.threshold, v_reset=0.0 if p.reset == "hard" else None,
            surrogate_function=WidthHeightSurrogate(p.surrogate, p.width, p.height), detach_reset=p.detach_reset,
            step_mode="m"))

    readout = g.feed(g.output.name, READOUT_PASS)
    static = _static_before_norm(g) if p.encoding == "direct" else set()
    # a static value meets time where it enters a time-varying op (or the output)
    expanded: dict[str, list[fx.Node]] = {}
    for op in list(g):
        if op.name not in static:
            continue
        for user in list(op.node.users):
            u = g.by_node.get(user)
            if u is None or u.kind == Kind.SHAPE or (u.name in static and u.kind != Kind.OUTPUT):
                continue
            new = insert_after_edge(gm, op.node, user, f"{op.name}_expand_time", ExpandTime(T))
            expanded.setdefault(op.name, []).append(new)
    # SNN batch norm after every synaptic layer (but the readout) not already followed by one,
    # on the time-expanded current
    if p.batch_norm:
        for op in g.synapses:
            if op is readout or any(u.kind == Kind.NORM for u in g.consumers(op.name)):
                continue
            anchor = op.node
            if len(expanded.get(op.name, ())) == 1 and len(op.node.users) == 1:
                anchor = expanded[op.name][0]
            bn = nn.BatchNorm2d(op.shape[0]) if isinstance(op.module, nn.Conv2d) else nn.BatchNorm1d(op.shape[0])
            insert_after(gm, anchor, free_target(gm, f"{op.name}_snn_bn"), bn)
    for op in g.neurons:
        set_module(gm, op.node, op.name, lif())
    if p.encoding == "poisson":
        insert_after(gm, g.input.node, "poisson_input", PoissonInput(T))
    elif p.encoding == "events":
        insert_after(gm, g.input.node, "event_frames", EventFrames())
    if p.readout == "spikes":
        insert_after(gm, g.output.node.args[0], "readout", lif())  # type: ignore[arg-type]
    gm.graph.lint()
    gm.recompile()
    return gm


class SpikingNet(nn.Module):
    """The rebuilt network plus its readout decoding: input ``[B, ...]``, logits ``[B, classes]``.
    ``steps(x)`` also returns the decision after every step (``[T, B, classes]``)."""

    def __init__(self, arch: nn.Module, input_shape: tuple[int, ...], p: SurrogateParams):
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.p = p
        self.net = rebuild(arch, input_shape, p)
        # event frames come in as [B, T, ...]
        self.input_shape = (p.timesteps, *input_shape) if p.encoding == "events" else tuple(input_shape)
        self.membrane = neuron.NonSpikingLIFNode(tau=p.tau) if p.readout == "membrane" else None

    def decode(self, out: torch.Tensor, T: int, B: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits ``[B, C]``, decision after each step ``[T, B, C]``) from the output ``[T·B, C]``."""
        from spikingjelly.activation_based import functional

        cur = out.reshape(T, B, *out.shape[1:])
        steps = torch.arange(1, T + 1, device=cur.device, dtype=cur.dtype).view(-1, 1, 1)
        if self.membrane is not None:
            functional.reset_net(self.membrane)
            v = torch.stack(self.membrane(cur), 0)
            return v.max(0).values, v.detach().cummax(0).values
        return cur.mean(0), cur.detach().cumsum(0) / steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.net(x), self.p.timesteps, x.shape[0])[0]

    def evaluable(self) -> GraphSNN:
        graph = build(self.net, self.input_shape)

        def readout(out, T, B):
            logits, steps = self.decode(out, T, B)
            return Outputs(logits=logits, step_predictions=steps.argmax(-1))

        ev = GraphSNN(graph, self.p.timesteps, readout)
        ev.input_spikes = False
        ev.takes_frames = self.p.encoding == "events"
        ev.label = "surrogate"
        return ev


def _spike_rate_loss(rates: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(rates, nn.functional.one_hot(y, rates.shape[-1]).to(rates))


class Surrogate(Method):
    name = "surrogate"
    needs_trained_ann = False
    trains = True
    default_model = "cnn7"
    smoke_sets = {"epochs": "3", "timesteps": "2", "lr": "3e-3"}
    Params = SurrogateParams
    metrics = (
        MetricSpec("surrogate/grad_norm_ratio", "mean weight-gradient norm of the first layer over the last's",
                   "ratio", None, 0),
        MetricSpec("surrogate/train/loss", "training loss per epoch", "loss", "min", curve=True),
        MetricSpec("surrogate/train/accuracy", "training accuracy per epoch", "fraction", "max", 0, 1, curve=True),
        MetricSpec("surrogate/val/loss", "validation loss per epoch", "loss", "min", curve=True),
        MetricSpec("surrogate/val/accuracy", "validation accuracy per epoch", "fraction", "max", 0, 1, curve=True),
        MetricSpec("surrogate/grad_norm/{layer}", "mean weight-gradient norm of a layer per epoch", "norm", None, 0,
                   curve=True),
    )

    @classmethod
    def search_space(cls, trial):
        return cls.Params(
            timesteps=trial.suggest_int("timesteps", 1, 8),
            surrogate=trial.suggest_categorical("surrogate", list(FAMILIES)),
            width=trial.suggest_float("width", 0.1, 4.0, log=True),
            height=trial.suggest_float("height", 0.1, 4.0, log=True),
            tau=trial.suggest_float("tau", 1.5, 10.0),
        )

    event_keys = ("timesteps", "encoding")

    @classmethod
    def for_data(cls, params, given, dataset):
        """Event data: the frames are the per-step input (``encoding=events``) and T their number."""
        if not dataset.is_events:
            if params.encoding == "events":
                from ..datasets import EVENT_SETS

                raise ConfigError(f"surrogate: encoding=events needs event data ({', '.join(EVENT_SETS)}); "
                                  f"{dataset.name} holds static images (valid here: direct, poisson)")
            return params
        bins = dataset.time_bins
        if "encoding" in given and params.encoding != "events":
            raise ConfigError(f"surrogate: {dataset.name} is event data, which enters as its frames "
                              f"(encoding=events); encoding={params.encoding} applies to static images")
        if "timesteps" in given and params.timesteps != bins:
            raise ConfigError(f"surrogate: on event data T is the {bins} frames per sample of {dataset.name}; "
                              f"--set timesteps={params.timesteps} differs: bin the events into that many "
                              f"frames instead (--time-bins {params.timesteps})")
        return params.replace(encoding="events", timesteps=bins)

    @classmethod
    def graph_problems(cls, graph):
        return surrogate_problems(graph)

    def prepare(self, ctx, ann, params):
        from ..training import Classifier, fit

        torch.manual_seed(ctx.seed)
        net = SpikingNet(ctx.architecture(), ctx.dataset.input_shape, params)
        loss_fn = _spike_rate_loss if params.readout == "spikes" else None
        module = Classifier(net, lr=params.lr, loss_fn=loss_fn)
        grads = GradientNorms(net)
        fit(ctx, module, params.epochs, callbacks=[grads.callback()], stage="surrogate",
            frames=params.encoding == "events")
        steps = {f"surrogate/{k}": v for k, v in module.history.items()}
        steps.update({f"surrogate/grad_norm/{k}": v for k, v in grads.per_epoch.items()})
        metrics = {}
        ratio = grads.first_over_last()
        if ratio is not None:
            metrics["surrogate/grad_norm_ratio"] = ratio
        return Preparation(net.eval().evaluable(), metrics=metrics, step_metrics=steps)


class GradientNorms:
    """Mean L2 norm of each synaptic layer's weight gradient per epoch (a Lightning callback)."""

    def __init__(self, net: SpikingNet):
        graph = build(net.net, net.input_shape)
        self.layers = [(op.name, op.module) for op in graph.synapses]  # the network's own layer names
        self.per_epoch: dict[str, list[float]] = {}
        self._sums: dict[str, list[float]] = {}

    def callback(self):
        import lightning.pytorch as pl

        outer = self

        class _Callback(pl.Callback):
            def on_after_backward(self, trainer, pl_module):
                for name, m in outer.layers:
                    if m.weight.grad is not None:
                        s = outer._sums.setdefault(name, [0.0, 0])
                        s[0] += float(m.weight.grad.norm())
                        s[1] += 1

            def on_train_epoch_end(self, trainer, pl_module):
                for name, (total, n) in outer._sums.items():
                    outer.per_epoch.setdefault(name, []).append(total / max(n, 1))
                outer._sums.clear()

        return _Callback()

    def first_over_last(self) -> float | None:
        if len(self.layers) < 2:
            return None
        first, last = self.per_epoch.get(self.layers[0][0]), self.per_epoch.get(self.layers[-1][0])
        if not first or not last or sum(last) == 0:
            return None
        return sum(first) / sum(last)
