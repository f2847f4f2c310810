"""sharpen — Whetstone (sandia-*): bounded activations sharpened into step functions while training,
so inference is a binary network that runs in one time step.

Every hidden ReLU of the model is replaced by a sharpenable activation with sharpness s ∈ [0, 1]
(Whetstone's layers, reimplemented in PyTorch because Whetstone is Keras-only):

* ``brelu`` (``Spiking_BRelu``): y = clip((x − 0.5)/(w + 0.001) + 0.5, 0, 1), w = 1 − s; at s = 1 the
  step [x ≥ 0.5];
* ``sigmoid`` (``Spiking_Sigmoid``): y = σ(k·x), k = 4·ln(2 + √3)/(w + 0.001); at s = 1 the step [x ≥ 0].

The readout layer is widened to ``n_hot`` outputs per class, followed by the same activation, and
decoded by a fixed key with a softmax (Whetstone's ``Softmax_Decode``: logits = (2y − 1)·(2K − 1)ᵀ;
class c owns outputs c·n_hot … (c + 1)·n_hot − 1), so the loss is cross-entropy as usual.

Sharpening schedules (a Lightning callback; sharpness advances every batch):

* ``fixed``: the network's sharpness rises by ``rate`` per epoch from ``start_epoch``;
* ``scheduled`` (Whetstone's ``ScheduledSharpener``): 0 at ``start_epoch``, 1 after ``duration`` epochs;
* ``adaptive`` (Whetstone's ``AdaptiveSharpener``): after ``start_epoch`` warm-up epochs, sharpening
  starts when the training loss has not improved by ``sig_change`` for more than ``patience`` epochs and
  pauses when it worsens by ``sig_change``; ``rate`` per epoch, ``cz_rate`` once a layer passes
  ``critical``.

With ``bottom_up`` the network's sharpness is spent layer by layer from the input (Whetstone's
``set_model_sharpness``), otherwise all layers sharpen together. Training stops once every layer is
a step function.

While sharpening, the learning rate follows the network's sharpness S (the mean of the layers'):
``sharpen_lr · (f + (1 − f) · (1 + cos πS) / 2)``, from ``sharpen_lr`` when sharpening starts down to
``f = lr_floor`` (default 1 %) of it when every layer is a step function (``lr_floor=1``: a constant
rate); ``sharpen_lr`` defaults to ``lr · min(1, 64 / b)``, b the batches per epoch. Two measured
reasons (stpu-dnn and stpu-cnn, validation accuracy):

* a layer of width w turns a weight change into an output change 1/w times larger, so a constant
  rate that trains the bounded network well destroys the last steps: on mnist-5k, stpu-cnn's
  readout going from sharpness 0.8 to 1 at a constant 1e-3 took it from 0.89 to 0.75, the decaying
  rate kept 0.90;
* Adam's steps do not shrink with the gradient, so the drift over a sharpening phase grows with the
  number of steps it takes: on fashion-mnist (844 batches per epoch) a constant 1e-3 took stpu-dnn
  from 0.82 to 0.33, the decay from 1e-3 alone to 0.71; starting from 7.6e-5 (the 64 / b scaling)
  ended at 0.79 (0.82 with the tie-break below). On mnist-5k (57 batches) a low start left too few
  steps to adapt (0.78 at 1e-4 against 0.84 at 1e-3), hence the scaling with b.

The scaling rule and the 1 % floor are fitted to these measurements, not derived; ``sharpen_lr``
overrides the start. The network just before sharpening starts (bounded activations, encoded input:
Whetstone's "original") is kept and its test accuracy reported beside the sharpened one's.

A fully sharpened readout votes with whole neurons: class c gets the number of its N-hot outputs
that fire, and two classes often get the same count. Whetstone (Keras's ``argmax``) then picks the
lowest class index; here ``tie_break=potential`` picks, among the tied classes only, the one whose
output neurons' membrane potentials (their input current in the one step) sum highest, and
``tie_break=first`` keeps Whetstone's rule. The fraction of test samples that tie and the accuracy
under Whetstone's rule are reported either way. Inputs are encoded as ``binary`` (pixel ≥ 0.5), ``contours`` (Sobel edge magnitude
≥ ``contour_threshold``, binary) or ``current`` (analog values injected into the first layer).

The network is the traced architecture (any graph of Conv/Linear, ReLU, max pooling, flatten,
dropout, concatenation, BatchNorm, and adds of currents before a neuron) with every ReLU op made
sharpenable; average pooling and adds of spike trains are refused, as their outputs are not binary.
Inference replaces every sharpened activation by a SpikingJelly ``IFNode`` with threshold 0.5 (brelu)
or 0 (sigmoid) run for one time step — exactly the step function — and is metered as an SNN: one
time step, binary spikes between layers (SynOps), MACs only for ``current`` input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.fx as fx
from torch import nn

from ..api import Extras, Method, Preparation
from ..config import ConfigError, Params, param
from ..evaluation import GraphSNN, Outputs
from ..graph import (
    Graph,
    Kind,
    Op,
    build,
    insert_after,
    register_module_kind,
    set_module,
    spike_paths,
    symbolic_trace,
    unsupported_ops,
)
from ..metrics import MetricSpec

SIGMOID_K = 4.0 * math.log(2.0 + math.sqrt(3.0))
EPSILON = 0.001


class SharpenableActivation(nn.Module):
    """Whetstone's ``Spiking_BRelu`` / ``Spiking_Sigmoid``; ``sharpness`` is a buffer in [0, 1]."""

    sharpness: torch.Tensor

    def __init__(self, kind: str = "brelu"):
        super().__init__()
        self.kind = kind
        self.register_buffer("sharpness", torch.tensor(0.0))

    @property
    def threshold(self) -> float:
        return 0.5 if self.kind == "brelu" else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = float(self.sharpness)
        if s >= 1.0:
            return (x >= self.threshold).to(x)
        width = 1.0 - s + EPSILON
        if self.kind == "brelu":
            return ((x - 0.5) / width + 0.5).clamp(0.0, 1.0)
        return torch.sigmoid(x * (SIGMOID_K / width))

    def extra_repr(self) -> str:
        return f"kind={self.kind}, sharpness={float(self.sharpness):.3f}"


class NHotDecode(nn.Module):
    """Whetstone's ``Softmax_Decode`` with a non-overlapping key: logits = (2y − 1)(2K − 1)ᵀ."""

    key: torch.Tensor

    def __init__(self, num_classes: int, n_hot: int):
        super().__init__()
        key = torch.zeros(num_classes, num_classes * n_hot)
        for c in range(num_classes):
            key[c, c * n_hot:(c + 1) * n_hot] = 1.0
        self.register_buffer("key", 2.0 * key - 1.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (2.0 * y - 1.0) @ self.key.t()

    def decide(self, votes: torch.Tensor, potential: torch.Tensor, rule: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions from the decoded ``votes`` [B, C] and the readout neurons' ``potential``
        [B, C·n_hot] (see the module docstring), and which samples tie at the top."""
        top = votes.max(-1, keepdim=True).values
        tied = votes == top
        ties = tied.sum(-1) > 1
        if rule == "first":
            return votes.argmax(-1), ties  # torch's argmax returns the first maximum, as Keras's
        owned = potential.reshape(potential.shape[0], -1) @ ((self.key.t() + 1.0) / 2.0)  # [B, C]
        return torch.where(tied, owned, torch.full_like(owned, -math.inf)).argmax(-1), ties


class InputEncoding(nn.Module):
    """``binary`` / ``contours`` / ``current`` (see the module docstring); images in [0, 1]."""

    sobel: torch.Tensor

    def __init__(self, kind: str, binary_threshold: float = 0.5, contour_threshold: float = 1.0):
        super().__init__()
        self.kind, self.binary_threshold, self.contour_threshold = kind, binary_threshold, contour_threshold
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.register_buffer("sobel", torch.stack([sobel, sobel.t()]).unsqueeze(1))  # [2, 1, 3, 3]

    @property
    def spiking(self) -> bool:
        return self.kind != "current"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "current":
            return x
        if self.kind == "binary":
            return (x >= self.binary_threshold).to(x)
        c = x.shape[1]
        g = nn.functional.conv2d(x.reshape(-1, 1, *x.shape[2:]), self.sobel, padding=1)
        mag = g.pow(2).sum(1, keepdim=True).sqrt().reshape(x.shape[0], c, *x.shape[2:])
        return (mag >= self.contour_threshold).to(x)


def layer_sharpness(value: float, n: int, bottom_up: bool) -> list[float]:
    """Whetstone's ``set_model_sharpness``: the network's sharpness as per-layer values."""
    value = min(max(value, 0.0), 1.0)
    if not bottom_up:
        return [value] * n
    if value >= 1.0:
        return [1.0] * n
    done, rest = divmod(value * n, 1.0)
    done = int(done)
    return [1.0] * done + [rest] + [0.0] * (n - done - 1)


@dataclass(frozen=True)
class SharpenParams(Params):
    activation: Literal["brelu", "sigmoid"] = param("brelu", "sharpenable activation (Whetstone)")
    schedule: Literal["fixed", "scheduled", "adaptive"] = param("scheduled", "how sharpness rises")
    bottom_up: bool = param(True, "sharpen layer by layer from the input (else all together)")
    start_epoch: int = param(5, "epochs trained before sharpening (adaptive: minimum warm-up)", low=0)
    duration: int = param(10, "scheduled: epochs from sharpness 0 to 1", low=1)
    rate: float = param(0.25, "fixed: network sharpness per epoch; adaptive: a layer's sharpness per epoch",
                        low=0, low_open=True, high=1)
    cz_rate: float = param(0.126, "adaptive: rate once a layer's sharpness ≥ critical", low=0, low_open=True,
                           high=1)
    critical: float = param(0.75, "adaptive: start of the critical zone", low=0, high=1)
    patience: int = param(1, "adaptive: epochs without significant improvement before sharpening", low=0)
    sig_change: float = param(0.15, "adaptive: relative loss change counted as significant", low=0,
                              low_open=True)
    epochs: int = param(30, "maximum training epochs (training stops once fully sharpened)", low=1)
    lr: float = param(1e-3, "learning rate", low=0, low_open=True)
    optimizer: Literal["adam", "rmsprop"] = param("adam", "optimizer (the seed found RMSprop most stable)")
    n_hot: int = param(10, "output neurons per class (N-hot code decoded by softmax)", low=1, high=1000)
    encoding: Literal["binary", "contours", "current"] = param("binary", "input encoding")
    sharpen_lr: float = param(0.0, "learning rate when sharpening starts, decaying to 1 % of it as the network "
                              "sharpens (0: lr * min(1, 64 / batches per epoch))", low=0)
    lr_floor: float = param(0.01, "fraction of sharpen_lr left when every layer is a step function (1: constant "
                            "rate, as Whetstone)", low=0, high=1)
    tie_break: Literal["potential", "first"] = param(
        "potential", "equal N-hot votes: the tied class with the highest summed output potential, or the "
        "lowest class index (Whetstone)")
    binary_threshold: float = param(0.5, "binary: pixel threshold", low=0, high=1)
    contour_threshold: float = param(1.0, "contours: Sobel magnitude threshold", low=0, low_open=True)

    def validate(self) -> None:
        if self.schedule == "scheduled" and self.start_epoch + self.duration > self.epochs:
            raise ConfigError(
                f"sharpen: the schedule ends at epoch {self.start_epoch + self.duration} but training has "
                f"{self.epochs} epochs; valid: start_epoch + duration <= epochs")
        if self.schedule == "fixed" and self.start_epoch + math.ceil(1.0 / self.rate - 1e-9) > self.epochs:
            raise ConfigError(
                f"sharpen: at rate {self.rate}/epoch from epoch {self.start_epoch} sharpening needs "
                f"{self.start_epoch + math.ceil(1.0 / self.rate - 1e-9)} epochs but training has {self.epochs}; "
                "valid: start_epoch + ceil(1/rate) <= epochs")
        if self.schedule == "adaptive" and self.start_epoch >= self.epochs:
            raise ConfigError(f"sharpen: start_epoch {self.start_epoch} leaves no epoch to sharpen in; "
                              f"valid: start_epoch < epochs ({self.epochs})")


register_module_kind(SharpenableActivation, Kind.NEURON)
register_module_kind(InputEncoding, Kind.ENCODER)
register_module_kind(NHotDecode, Kind.DECODE)


def sharpen_problems(graph: Graph) -> list[tuple[Op, str]]:
    """Ops a one-step binary network cannot carry (empty: the architecture can be sharpened)."""
    not_binary = "average pooling makes binary activations non-binary"
    problems = unsupported_ops(graph, {
        Kind.AVGPOOL: not_binary, Kind.ADAPTIVE_AVGPOOL: not_binary,
        Kind.ACTIVATION: "a non-linearity other than ReLU", Kind.SCALE: "an op without a binary equivalent"},
        "an op without a binary equivalent")
    if problems:
        return problems
    paths, problems = spike_paths(graph, graph.static_ops())
    for path in paths.values():
        joins = [graph[n] for n in path.ops if graph[n].kind == Kind.ADD]
        if joins:
            problems.append((joins[0], "a sum of spike trains is not binary"))
    readout = _readout(graph)
    if readout is None:
        problems.append((graph.output, "the network must end in a linear readout layer"))
    elif not isinstance(readout.module, nn.Linear):
        problems.append((readout, f"the readout `{readout.name}` must be a Linear layer"))
    return problems


def _readout(graph: Graph) -> Op | None:
    feed = graph[graph.output.inputs[0]]
    while feed.kind in (Kind.FLATTEN, Kind.IDENTITY):
        feed = graph[feed.inputs[0]]
    return feed if feed.kind == Kind.SYNAPSE else None


@dataclass
class Sharpenable:
    """The rebuilt network and its sharpenable activations in forward order."""

    gm: fx.GraphModule
    input_shape: tuple[int, ...]
    activations: list[tuple[str, SharpenableActivation]]


def build_sharpenable(arch: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                      p: SharpenParams) -> Sharpenable:
    """The traced architecture with sharpenable activations, an N-hot spiking readout and a decoder."""
    gm = symbolic_trace(arch, "the network")
    g = build(gm, input_shape)
    problems = sharpen_problems(g)
    if problems:
        g.check("sharpen", problems)
    readout = _readout(g)
    assert readout is not None
    set_module(gm, readout.node, readout.name,
               nn.Linear(cast(nn.Linear, readout.layer).in_features, num_classes * p.n_hot))
    acts: list[tuple[str, SharpenableActivation]] = []
    for op in g.neurons:
        act = SharpenableActivation(p.activation)
        set_module(gm, op.node, op.name, act)
        acts.append((op.name, act))
    out_node = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    spike_out = SharpenableActivation(p.activation)
    decode_in = insert_after(gm, out_node, "spike_out", spike_out)  # type: ignore[arg-type]
    acts.append(("spike_out", spike_out))
    insert_after(gm, decode_in, "decode", NHotDecode(num_classes, p.n_hot))
    if p.encoding != "current":  # analog current needs no encoder: the first layer reads the image
        placeholder = next(n for n in gm.graph.nodes if n.op == "placeholder")
        insert_after(gm, placeholder, "encode", InputEncoding(p.encoding, p.binary_threshold, p.contour_threshold))
    gm.graph.lint()
    gm.recompile()
    return Sharpenable(gm, tuple(input_shape), acts)


def set_sharpness(acts: list[tuple[str, SharpenableActivation]], values: list[float]) -> None:
    for (_, m), v in zip(acts, values):
        m.sharpness.fill_(v)


class Sharpener:
    """The schedules of the module docstring, advanced per batch (Whetstone's sharpener callbacks,
    reimplemented for Lightning). ``history`` holds each layer's sharpness at every epoch's end."""

    def __init__(self, acts: list[tuple[str, SharpenableActivation]], p: SharpenParams):
        self.acts, self.p = acts, p
        self.names = [n for n, _ in acts]
        self.values = [0.0] * len(self.names)
        self.history: dict[str, list[float]] = {n: [] for n in self.names}
        self.global_value = 0.0
        # adaptive state (Whetstone's AdaptiveSharpener)
        self.sharpening = False
        self.reference_loss = math.inf
        self.no_improvement = 0
        self.wait = False
        self.started = False  # set when the first sharpness leaves 0 (see ``on_start``)

    def on_start(self) -> None:
        """Called once, just before the first sharpness above 0 is applied."""

    @property
    def done(self) -> bool:
        return all(v >= 1.0 for v in self.values)

    def _apply(self) -> None:
        set_sharpness(self.acts, self.values)

    def on_batch(self, epoch: int, batch: int, batches: int) -> None:
        p = self.p
        if p.schedule == "scheduled":
            progress = (epoch + (batch + 1) / batches - p.start_epoch) / p.duration
            self.values = layer_sharpness(progress, len(self.values), p.bottom_up)
        elif p.schedule == "fixed":
            if epoch >= p.start_epoch:
                self.global_value = min(1.0, self.global_value + p.rate / batches)
                if 1.0 - self.global_value < 1e-6:
                    self.global_value = 1.0
            self.values = layer_sharpness(self.global_value, len(self.values), p.bottom_up)
        elif self.sharpening:
            self._adaptive_step(batches)
        if not self.started and any(v > 0.0 for v in self.values):
            self.started = True
            self.on_start()
        self._apply()

    def _adaptive_step(self, batches: int) -> None:
        p = self.p
        todo = [i for i, v in enumerate(self.values) if v < 1.0]
        if not todo:
            self.sharpening = False
            return
        idx = todo if not p.bottom_up else [todo[0]]
        if p.bottom_up and self.wait:
            return
        for i in idx:
            amount = (p.cz_rate if self.values[i] >= p.critical else p.rate) / batches
            self.values[i] = min(1.0, self.values[i] + amount)
            if 1.0 - self.values[i] < 1e-3:
                self.values[i] = 1.0
                self.wait = p.bottom_up  # the next layer starts after this epoch (overshoot guard)

    def on_epoch_end(self, epoch: int, train_loss: float | None) -> None:
        for n, v in zip(self.names, self.values):
            self.history[n].append(v)
        if self.p.schedule != "adaptive" or train_loss is None:
            return
        p = self.p
        self.wait = False
        change = (train_loss - self.reference_loss) / self.reference_loss if math.isfinite(self.reference_loss) else -1.0
        improved, degraded = change <= -p.sig_change, change >= p.sig_change
        if epoch < p.start_epoch - 1:
            self.reference_loss = train_loss
            return
        if improved:
            self.reference_loss, self.no_improvement = train_loss, 0
        else:
            self.no_improvement += 1
        if self.sharpening and degraded:
            self.reference_loss, self.no_improvement, self.sharpening = train_loss, 0, False
        elif not self.sharpening and self.no_improvement > p.patience:
            self.reference_loss, self.no_improvement, self.sharpening = train_loss, 0, True

    def callback(self, module: nn.Module | None = None, lr: float | None = None, val=None, floor: float = 0.01):
        """A Lightning callback that runs the schedule; when sharpening starts it copies ``module``'s
        weights to ``self.before``, and from then on sets the optimisers' learning rate from ``lr``
        (``None``/0: the default) and the network's sharpness (module docstring). With a ``val``
        loader it appends, at every epoch's end, the accuracy the network would have if every layer
        were a step function now to ``self.sharpened_val`` (Whetstone's ``WhetstoneLogger`` reports
        the same)."""
        import copy

        import lightning.pytorch as pl

        outer = self
        self.sharpened_val: list[float] = []
        self.before: dict[str, torch.Tensor] | None = None
        self.lr_used: float | None = None

        class _Callback(pl.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                batches = max(int(trainer.num_training_batches), 1)

                def start() -> None:
                    if module is not None:
                        outer.before = copy.deepcopy(module.state_dict())
                    outer.lr_used = lr if lr is not None and lr > 0 else _auto_lr(trainer, batches)

                outer.on_start = start  # type: ignore[method-assign]
                outer.on_batch(trainer.current_epoch, batch_idx, batches)
                if outer.started and outer.lr_used is not None:
                    rate = decayed_lr(outer.lr_used, sum(outer.values) / max(len(outer.values), 1), floor)
                    for opt in trainer.optimizers:
                        for group in opt.param_groups:
                            group["lr"] = rate
                if outer.done:  # every layer a step function: no gradient is left to train on
                    trainer.should_stop = True

            def on_train_epoch_end(self, trainer, pl_module):
                if val is not None:
                    outer.sharpened_val.append(_accuracy_sharpened(outer.acts, pl_module, val))
                loss = pl_module.history.get("train/loss")
                outer.on_epoch_end(trainer.current_epoch, loss[-1] if loss else None)
                if outer.done:
                    trainer.should_stop = True

        return _Callback()


def _accuracy_sharpened(acts: list[tuple[str, SharpenableActivation]], model: nn.Module, loader) -> float:
    """Accuracy on ``loader`` with every activation a step function (restored afterwards). It runs in
    a forked RNG: iterating a loader draws a seed from torch's generator, which would otherwise move
    the training's shuffling and dropout."""
    saved = [float(a.sharpness) for _, a in acts]
    was_training = model.training
    set_sharpness(acts, [1.0] * len(acts))
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            return _accuracy(model, loader, model.device)
    finally:
        set_sharpness(acts, saved)
        model.train(was_training)


def _accuracy(model: nn.Module, loader, device) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x.to(device)).argmax(-1).cpu() == y).sum())
            total += len(y)
    return correct / max(total, 1)


AUTO_LR_BATCHES = 64  # batches per epoch up to which the sharpening learning rate equals lr


def sharpening_lr(lr: float, batches: int) -> float:
    """The default learning rate while sharpening: ``lr · min(1, 64 / batches)`` (module docstring)."""
    return lr * min(1.0, AUTO_LR_BATCHES / max(batches, 1))


def decayed_lr(start: float, sharpness: float, floor: float = 0.01) -> float:
    """The learning rate at network sharpness ``sharpness`` ∈ [0, 1]: cosine from ``start`` down to
    ``floor · start`` (module docstring)."""
    return start * (floor + (1.0 - floor) * (1.0 + math.cos(math.pi * min(max(sharpness, 0.0), 1.0))) / 2.0)


def _auto_lr(trainer, batches: int) -> float | None:
    groups = [g for opt in trainer.optimizers for g in opt.param_groups]
    return sharpening_lr(float(groups[0]["lr"]), batches) if groups else None


def to_spiking(net: Sharpenable) -> fx.GraphModule:
    """A copy of the fully sharpened network with each step activation as a one-step SpikingJelly IF
    neuron (threshold 0.5 for brelu, 0 for sigmoid; exactly the step function)."""
    import copy

    from spikingjelly.activation_based import neuron

    register_module_kind(neuron.IFNode, Kind.NEURON)
    snn = copy.deepcopy(net.gm)
    for name, act in net.activations:
        parent, _, attr = name.rpartition(".")
        owner = snn.get_submodule(parent) if parent else snn
        setattr(owner, attr, neuron.IFNode(v_threshold=act.threshold, v_reset=0.0, step_mode="s"))
    return snn


class _Potential:
    """Keeps the input of one module (the readout neurons' potential in their one step)."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._keep)

    def _keep(self, _m, inputs, _out) -> None:
        self.value = inputs[0]


def _decoder(gm: fx.GraphModule) -> NHotDecode:
    return next(m for m in gm.modules() if isinstance(m, NHotDecode))


class SharpenedSNN(GraphSNN):
    """The one-step IF network, decoded with ``tie_break`` (module docstring); counts ties, the
    accuracy under Whetstone's lowest-index rule, and how often it decides as the sharpened network."""

    def __init__(self, net: Sharpenable, tie_break: str):
        snn = to_spiking(net)
        decode, potential = _decoder(snn), _Potential(snn.get_submodule("spike_out"))
        self.first_predictions: list[torch.Tensor] = []  # under Whetstone's rule, in test order

        def readout(out, T, B):
            assert potential.value is not None
            pred, ties = decode.decide(out, potential.value, tie_break)
            self._batch = (out.argmax(-1), ties)
            return Outputs(logits=out, predictions=pred)

        super().__init__(build(snn, net.input_shape), 1, readout)
        self.sharpened, self.tie_break = net.gm, tie_break
        self._sharpened_potential = _Potential(net.gm.get_submodule("spike_out"))
        self._sharpened_decode = _decoder(net.gm)
        self.agree = self.total = self.ties = 0

    def to(self, device):
        self.sharpened.to(device)
        return super().to(device)

    def run_batch(self, x, meters):
        out = super().run_batch(x, meters)
        first, ties = self._batch
        self.ties += int(ties.sum())
        votes = self.sharpened(x)
        assert self._sharpened_potential.value is not None
        ref, _ = self._sharpened_decode.decide(votes, self._sharpened_potential.value, self.tie_break)
        self.agree += int((out.final() == ref).sum())
        self.total += x.shape[0]
        self.first_predictions.append(first.cpu())
        return out


class Sharpen(Method):
    name = "sharpen"
    needs_trained_ann = False
    trains = True
    default_model = "stpu-dnn"
    smoke_sets = {"epochs": "6", "start_epoch": "2", "duration": "3", "lr": "3e-3"}
    Params = SharpenParams
    metrics = (
        MetricSpec("sharpen/sharpness_reached", "the least sharpness of any layer when training ended", "fraction",
                   "max", 0, 1),
        MetricSpec("sharpen/epochs_trained", "training epochs run", "epochs", None, 0),
        MetricSpec("sharpen/snn_agreement", "fraction of test samples the IF network decides as the sharpened "
                   "network does (1 by construction)", "fraction", "max", 0, 1),
        MetricSpec("sharpen/brelu/test/accuracy", "test accuracy of the network just before sharpening started "
                   "(bounded activations, encoded input: Whetstone's original)", "fraction", "max", 0, 1),
        MetricSpec("sharpen/ties", "fraction of test samples whose N-hot vote ties between classes", "fraction",
                   "min", 0, 1),
        MetricSpec("sharpen/test/accuracy_lowest_index", "test accuracy when ties go to the lowest class index "
                   "(Whetstone's rule)", "fraction", "max", 0, 1),
        MetricSpec("sharpen/lr", "learning rate when sharpening started (it decays to 1 % as the network sharpens)",
                   "learning rate", None, 0),
        MetricSpec("sharpen/val/accuracy_sharpened", "validation accuracy per epoch with every layer a step "
                   "function (the network if sharpening ended there)", "fraction", "max", 0, 1, curve=True),
        MetricSpec("sharpen/train/loss", "training loss per epoch", "loss", "min", curve=True),
        MetricSpec("sharpen/train/accuracy", "training accuracy per epoch", "fraction", "max", 0, 1, curve=True),
        MetricSpec("sharpen/val/loss", "validation loss per epoch", "loss", "min", curve=True),
        MetricSpec("sharpen/val/accuracy", "validation accuracy per epoch", "fraction", "max", 0, 1, curve=True),
        MetricSpec("sharpen/sharpness/{layer}", "sharpness of a layer at each epoch's end", "fraction", None, 0, 1,
                   curve=True),
    )

    @classmethod
    def search_space(cls, trial):
        return cls.Params(
            activation=trial.suggest_categorical("activation", ["brelu", "sigmoid"]),
            bottom_up=trial.suggest_categorical("bottom_up", [True, False]),
            n_hot=trial.suggest_categorical("n_hot", [1, 4, 10]),
            optimizer=trial.suggest_categorical("optimizer", ["adam", "rmsprop"]),
        )

    @classmethod
    def graph_problems(cls, graph):
        return sharpen_problems(graph)

    def check(self, ctx, params):
        try:
            super().check(ctx, params)
        except ConfigError as e:
            raise ConfigError(f"{e} (model {ctx.model_name!r}; Whetstone needs binary activations between layers: "
                              "max-pooling models such as stpu-dnn, stpu-cnn, cnn-restricted, cnn-unrestricted, "
                              "ttfs-cnn)") from None

    def prepare(self, ctx, ann, params):
        from ..training import Classifier, fit

        torch.manual_seed(ctx.seed)
        ds = ctx.dataset
        net = build_sharpenable(ctx.architecture(), ds.input_shape, ds.num_classes, params)
        sharpener = Sharpener(net.activations, params)
        module = Classifier(net.gm, lr=params.lr, optimizer=params.optimizer)
        fit(ctx, module, params.epochs,
            callbacks=[sharpener.callback(net.gm, params.sharpen_lr, ctx.loader("val"), params.lr_floor)],
            stage="sharpen")
        reached = min(sharpener.values) if sharpener.values else 1.0
        info = {}
        if reached < 1.0:
            info["sharpen_warning"] = (f"training ended at sharpness {reached:.3f} < 1; the network was "
                                       "set to step functions for inference (raise epochs)")
        steps = {f"sharpen/{k}": v for k, v in module.history.items()}
        steps.update({f"sharpen/sharpness/{n}": v for n, v in sharpener.history.items()})
        steps["sharpen/val/accuracy_sharpened"] = sharpener.sharpened_val
        metrics = {"sharpen/sharpness_reached": reached,
                   "sharpen/epochs_trained": float(len(module.history.get("train/loss", [])))}
        if sharpener.lr_used is not None:
            metrics["sharpen/lr"] = sharpener.lr_used
        if sharpener.before is not None:  # Whetstone's "original": the same network before sharpening
            import copy

            before = copy.deepcopy(net.gm)
            before.load_state_dict(sharpener.before)
            metrics["sharpen/brelu/test/accuracy"] = _accuracy(before.to(ctx.device).eval(), ctx.loader("test"),
                                                               ctx.device)
        net.gm.eval()
        set_sharpness(net.activations, [1.0] * len(net.activations))
        return Preparation(SharpenedSNN(net, params.tie_break), metrics=metrics,
                           step_metrics=steps, info=info)

    def analyse(self, ctx, prep, evaluation, params) -> Extras:
        ev = prep.model
        metrics = {"sharpen/snn_agreement": ev.agree / max(ev.total, 1),  # 1: the IF network is the step network
                   "sharpen/ties": ev.ties / max(ev.total, 1)}
        if ev.first_predictions:
            first = torch.cat(ev.first_predictions)
            labels = torch.cat([y for _, y in ctx.loader("test")])[:len(first)]
            metrics["sharpen/test/accuracy_lowest_index"] = float((first == labels).double().mean())
        return Extras(metrics=metrics)

