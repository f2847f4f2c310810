"""surrogate — direct training of a multistep LIF network with surrogate gradients (escudero-*).

The model's architecture (any feed-forward Linear/Conv2d + ReLU network with pooling, e.g.
``cnn7``) is rebuilt with SpikingJelly 2.x multistep ``LIFNode`` neurons in place of its ReLUs and
trained from scratch through Lightning, following Ledinauskas et al. (2020):

* **surrogate derivative** of the spike w.r.t. the membrane potential u:
  ∂S/∂u ≈ β · φ((u − θ)/γ) with φ(0) = 1 — width γ and height β are independent knobs (the seed's
  point: tuning them keeps gradients from vanishing or exploding through deep SNNs). φ is the
  triangle max(0, 1 − |z|), the fast sigmoid 1/(1 + |z|)², arctan's 1/(1 + z²) or the logistic
  derivative 4σ(4z)(1 − σ(4z)). SpikingJelly's own surrogates have a single ``alpha`` that ties
  width and height together (unit area), hence :class:`WidthHeightSurrogate` below, a subclass of
  SpikingJelly's ``SurrogateFunctionBase`` used by its LIF kernels unchanged.
* **batch norm for SNNs**: ``BatchNorm`` after every synaptic layer, with statistics over time and
  batch together (the ``[T, B, ...]`` tensor is folded to ``[T·B, ...]``, SpikingJelly's
  ``SeqToANNContainer``).
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
from torch import nn

from ..api import Evaluation, Method
from ..config import ConfigError, Params, param
from ..meters import Meters
from ..netparse import parse_blocks
from ..simulate import event_counts, fold

POOLS = (nn.AvgPool2d, nn.MaxPool2d)
FAMILIES = ("triangle", "fast-sigmoid", "arctan", "sigmoid")


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
    raise ValueError(f"unknown surrogate family {family!r}")


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
    encoding: Literal["direct", "poisson"] = param("direct", "input: constant current or Poisson spikes")
    readout: Literal["mean", "membrane", "spikes"] = param("mean", "what the loss sees (module docstring)")
    epochs: int = param(10, "training epochs", low=1)
    lr: float = param(1e-3, "Adam learning rate", low=0, low_open=True)


class SpikingNet(nn.Module):
    """The LIF twin of a parsed ReLU network; input ``[B, ...]``, output logits ``[B, classes]``.

    Set ``meters`` (and ``keep_steps``) to meter an inference; the state is reset on every call.
    """

    def __init__(self, ann: nn.Module, p: SurrogateParams):
        super().__init__()
        from spikingjelly.activation_based import encoding, layer, neuron

        blocks = parse_blocks(ann, "surrogate", POOLS)
        self.p = p
        self.names = [b.name for b in blocks]
        self.neuron_names = [b.neuron for b in blocks]
        self.pre = nn.ModuleList(nn.Sequential(*[m for _, m in b.pre]) for b in blocks)
        self.pre_ops = [b.pre for b in blocks]
        self.layers = nn.ModuleList(b.layer for b in blocks)
        self.norms = nn.ModuleList()
        self.neurons = nn.ModuleList()
        for b in blocks:
            if p.batch_norm and b.neuron is not None:
                n_out = b.layer.out_channels if isinstance(b.layer, nn.Conv2d) else b.layer.out_features
                bn = nn.BatchNorm2d(n_out) if isinstance(b.layer, nn.Conv2d) else nn.BatchNorm1d(n_out)
                self.norms.append(layer.SeqToANNContainer(bn))
            else:
                self.norms.append(nn.Identity())
            if b.neuron is not None or p.readout == "spikes":
                self.neurons.append(neuron.LIFNode(
                    tau=p.tau, decay_input=True, v_threshold=p.threshold,
                    v_reset=0.0 if p.reset == "hard" else None,
                    surrogate_function=WidthHeightSurrogate(p.surrogate, p.width, p.height),
                    detach_reset=p.detach_reset, step_mode="m"))
            elif p.readout == "membrane":
                self.neurons.append(neuron.NonSpikingLIFNode(tau=p.tau))
            else:
                self.neurons.append(nn.Identity())
        self.encoder = encoding.PoissonEncoder(step_mode="m") if p.encoding == "poisson" else None
        self.meters: Meters | None = None
        self.step_outputs: torch.Tensor | None = None  # [T, B, classes], kept for accuracy vs t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        T, meters = self.p.timesteps, self.meters
        last = len(self.layers) - 1
        h = None
        for i, (pre, layer, norm, neuron) in enumerate(zip(self.pre, self.layers, self.norms, self.neurons)):
            if i == 0 and self.encoder is None:
                static = pre(x)  # constant input current: the first layer runs once
                if meters is not None:
                    meters.record_synapse(self.names[0], layer, static, spikes=False)
                cur0 = layer(static)
                cur = cur0.unsqueeze(0).expand(T, *cur0.shape)
            else:
                if i == 0:
                    h = self.encoder(x.unsqueeze(0).repeat(T, *([1] * x.dim())))
                z = fold(h, pre)  # what the synaptic layer receives at each step
                if meters is not None:
                    # average pooling scales spikes down; count every pre-pool spike as an event
                    ops = self.pre_ops[i]
                    counts = (event_counts(h.sum(0), ops) if any(isinstance(m, nn.AvgPool2d) for _, m in ops)
                              else z.sum(0))
                    meters.record_synapse(self.names[i], layer, counts, spikes=True, rows=T * h.shape[1])
                cur = fold(z, layer)
            cur = norm(cur)
            if i == last:
                return self._readout(neuron, cur)
            h = neuron(cur.contiguous())
            if meters is not None:
                meters.record_neurons(self.neuron_names[i], h, kind="LIFNode")
        raise AssertionError("unreachable: the last block is the readout")

    def _readout(self, neuron: nn.Module, cur: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based.neuron import NonSpikingLIFNode

        steps = torch.arange(1, cur.shape[0] + 1, device=cur.device, dtype=cur.dtype).view(-1, 1, 1)
        if isinstance(neuron, NonSpikingLIFNode):
            v = torch.stack(neuron(cur), 0)
            self.step_outputs = v.detach().cummax(0).values if self.meters is not None else None
            return v.max(0).values
        out = neuron(cur.contiguous())
        if self.meters is not None:
            if self.p.readout == "spikes":
                self.meters.record_neurons("readout", out, kind="LIFNode")
            self.step_outputs = out.detach().cumsum(0) / steps
        return out.mean(0)


def _spike_rate_loss(rates: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(rates, nn.functional.one_hot(y, rates.shape[-1]).to(rates))


class Surrogate(Method):
    name = "surrogate"
    needs_trained_ann = False
    default_model = "cnn7"
    smoke_sets = {"epochs": "3", "timesteps": "2", "lr": "3e-3"}
    Params = SurrogateParams

    @classmethod
    def search_space(cls, trial):
        return cls.Params(
            timesteps=trial.suggest_int("timesteps", 1, 8),
            surrogate=trial.suggest_categorical("surrogate", list(FAMILIES)),
            width=trial.suggest_float("width", 0.1, 4.0, log=True),
            height=trial.suggest_float("height", 0.1, 4.0, log=True),
            tau=trial.suggest_float("tau", 1.5, 10.0),
        )

    def _architecture(self, ctx) -> nn.Module:
        from ..models import build_model

        ds = ctx.dataset
        return build_model(ctx.model_name, ds.input_shape, ds.num_classes)

    def check(self, ctx, params):
        torch.manual_seed(ctx.seed)
        try:
            SpikingNet(self._architecture(ctx), params)
        except ConfigError as e:
            raise ConfigError(f"{e} (model {ctx.model_name!r})") from None

    def prepare(self, ctx, ann, params):
        from ..training import Classifier, fit

        torch.manual_seed(ctx.seed)
        net = SpikingNet(self._architecture(ctx), params)
        loss_fn = _spike_rate_loss if params.readout == "spikes" else None
        module = Classifier(net, lr=params.lr, loss_fn=loss_fn)
        grads = GradientNorms(net)
        fit(ctx, module, params.epochs, callbacks=[grads.callback()])
        ctx.step_metrics.update({f"surrogate/{k}": v for k, v in module.history.items()})
        ctx.step_metrics.update({f"surrogate/grad_norm/{k}": v for k, v in grads.per_epoch.items()})
        ratio = grads.first_over_last()
        if ratio is not None:
            ctx.metrics["surrogate/grad_norm_ratio"] = ratio
        return net.eval()

    @torch.no_grad()
    def evaluate(self, ctx, model, params, split="test"):
        from tqdm.auto import tqdm

        device = ctx.device
        model = model.to(device).eval()
        T = params.timesteps
        meters = Meters(timesteps=T, keep_per_neuron=False)
        model.meters = meters
        correct_at_t = torch.zeros(T, dtype=torch.float64)
        try:
            for x, y in tqdm(ctx.loader(split), desc="evaluate surrogate SNN", disable=not ctx.progress, leave=False):
                x, y = x.to(device), y.to(device)
                meters.record_batch(model(x), y)
                correct_at_t += (model.step_outputs.argmax(-1) == y).sum(1).double().cpu()
        finally:
            model.meters = None
        metrics, layers = meters.summary()
        curve = (correct_at_t / max(meters.samples, 1)).tolist()
        return Evaluation(metrics, layers, step_metrics={"test/accuracy_at_t": curve})


class GradientNorms:
    """Mean L2 norm of each synaptic layer's weight gradient per epoch (a Lightning callback)."""

    def __init__(self, net: SpikingNet):
        self.layers = list(zip(net.names, net.layers))  # the model's own layer names
        self.per_epoch: dict[str, list[float]] = {}
        self._sums: dict[str, list[float]] = {}

    def callback(self):
        import pytorch_lightning as pl

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
