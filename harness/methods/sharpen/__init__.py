"""sharpen — Whetstone (sandia-*): bounded activations sharpened into step functions while training,
so inference is a binary network that runs in one time step.

Every hidden ReLU of the model is replaced by a sharpenable activation with sharpness s ∈ [0, 1]
(Whetstone's layers, reimplemented in PyTorch because Whetstone is Keras-only):

* ``brelu`` (``Spiking_BRelu``): y = clip((x − 0.5)/(w + 0.001) + 0.5, 0, 1), w = 1 − s; at s = 1 the
  step [x ≥ 0.5];
* ``sigmoid`` (``Spiking_Sigmoid``): y = σ(k·x), k = 4·ln(2 + √3)/(w + 0.001); at s = 1 the step [x ≥ 0].

The readout layer is widened to ``n_hot`` outputs per class, followed by the same activation, and
decoded by a fixed key with a softmax (Whetstone's ``Softmax_Decode``: logits = (2y − 1)·(2K − 1)ᵀ;
class c owns outputs c·n_hot … (c + 1)·n_hot − 1), so the loss is cross-entropy as usual. The
default is 4 outputs per class, the key width of Whetstone's convolutional example
(``key_generator(10, 40)``; its dense example uses 10): measured on mnist-5k against the same network
just before sharpening, 10-hot lost 3.3 (stpu-cnn) and 5.0 points (cnn-restricted), 4-hot 0.9 and
1.0, and every one of the four seed networks was at least as accurate sharpened with 4 as with 10.

Sharpening schedules (a Lightning callback; sharpness advances every batch):

* ``fixed``: the network's sharpness rises by ``rate`` per epoch from ``start_epoch``;
* ``scheduled`` (Whetstone's ``ScheduledSharpener``): 0 at ``start_epoch``, 1 after ``duration`` epochs;
  with ``intermission`` (and ``bottom_up``) each layer gets ``duration / layers`` epochs and then holds
  as a step function for ``intermission`` epochs before the next starts, as in Whetstone's scheduled
  example (4 epochs a layer, 2 between layers);
* ``adaptive`` (Whetstone's ``AdaptiveSharpener``): after ``start_epoch`` warm-up epochs, sharpening
  starts when the training loss has not improved by ``sig_change`` for more than ``patience`` epochs and
  pauses when it worsens by ``sig_change``; ``rate`` per epoch, ``cz_rate`` once a layer passes
  ``critical``.

With ``bottom_up`` the network's sharpness is spent layer by layer from the input (Whetstone's
``set_model_sharpness``), otherwise all layers sharpen together. Training stops once every layer is
a step function (``finetune_epochs`` later with the fine-tuning below).

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

Not in Whetstone: ``finetune_epochs`` trains the fully sharpened network on for that many epochs with
a straight-through estimator — every activation stays a step function forward, and backward passes
the gradient of the same activation at sharpness 0 (the bounded ReLU's 1/(1 + ε) where it is not
clipped) — with the learning rate from ``sharpen_lr`` down to ``lr_floor`` of it (cosine). Whetstone
stops once every layer is a step function (no gradient is left); the straight-through estimator is
how binary networks are trained directly. ``sharpen/test/accuracy_before_finetune`` scores the
network as sharpening left it.

A fully sharpened readout votes with whole neurons: class c gets the number of its N-hot outputs
that fire, and two classes often get the same count. Whetstone (Keras's ``argmax``) then picks the
lowest class index; here ``tie_break=potential`` picks, among the tied classes only, the one whose
output neurons' membrane potentials (their input current in the one step) sum highest, and
``tie_break=first`` keeps Whetstone's rule. The fraction of test samples that tie and the accuracy
under Whetstone's rule are reported either way. Inputs are encoded as ``binary`` (pixel ≥ 0.5), ``contours`` (Sobel edge magnitude
≥ ``contour_threshold``, binary) or ``current`` (analog values injected into the first layer).

With ``batchnorm`` (Whetstone's convolutional example, ``adaptive_mnist.py``) a BatchNorm is put on
the input of every sharpenable activation that has none and of the readout's spiking layer while the
network trains; once training ends each is folded into the Conv/Linear before it (Whetstone's
``copy_remove_batchnorm``), so the spiking network reads the layers' own currents. A BatchNorm that
cannot be folded (something other than a Conv/Linear feeds it) stays as a per-channel affine map of
the current, which a one-step IF neuron computes as well.

The network is the traced architecture (any graph of Conv/Linear, ReLU, max pooling, flatten,
dropout, concatenation, BatchNorm, and adds of currents before a neuron) with every ReLU op made
sharpenable; average pooling and adds of spike trains are refused, as their outputs are not binary.
Inference replaces every sharpened activation by a SpikingJelly ``IFNode`` with threshold 0.5 (brelu)
or 0 (sigmoid) run for one time step — exactly the step function — and is metered as an SNN: one
time step, binary spikes between layers (SynOps), MACs only for ``current`` input.

The package: :mod:`.layers` (activations, decoder, encodings), :mod:`.schedule` (the schedules and
the learning rate), :mod:`.callback` (the Lightning callback that runs them), :mod:`.snn` (the
sharpenable network and its one-step IF form).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch

from ...api import Extras, Method, Preparation
from ...config import ConfigError, Params, param, scaled_schedule
from ...metrics import MetricSpec
from .layers import InputEncoding, NHotDecode, SharpenableActivation, layer_sharpness, set_sharpness
from .schedule import Sharpener, decayed_lr, schedule_end, sharpening_lr, staged_sharpness
from .snn import SharpenedSNN, build_sharpenable, fold_batchnorm, sharpen_problems

__all__ = ["InputEncoding", "NHotDecode", "Sharpen", "SharpenParams", "SharpenableActivation", "SharpenedSNN",
           "Sharpener", "build_sharpenable", "decayed_lr", "fold_batchnorm", "layer_sharpness", "set_sharpness", "sharpen_problems",
           "sharpening_lr", "staged_sharpness"]


@dataclass(frozen=True)
class SharpenParams(Params):
    activation: Literal["brelu", "sigmoid"] = param("brelu", "sharpenable activation (Whetstone)")
    schedule: Literal["fixed", "scheduled", "adaptive"] = param("scheduled", "how sharpness rises")
    bottom_up: bool = param(True, "sharpen layer by layer from the input (else all together)")
    start_epoch: int = param(5, "epochs trained before sharpening (adaptive: minimum warm-up)", low=0)
    duration: int = param(10, "scheduled: epochs from sharpness 0 to 1", low=1)
    intermission: int = param(0, "scheduled, bottom_up: epochs each layer holds as a step function before the next "
                              "starts sharpening (Whetstone's scheduled example: 2); the duration is shared evenly "
                              "among the layers", low=0)
    rate: float = param(0.25, "fixed: network sharpness per epoch; adaptive: a layer's sharpness per epoch",
                        low=0, low_open=True, high=1)
    cz_rate: float = param(0.126, "adaptive: rate once a layer's sharpness ≥ critical", low=0, low_open=True,
                           high=1)
    critical: float = param(0.75, "adaptive: start of the critical zone", low=0, high=1)
    patience: int = param(1, "adaptive: epochs without significant improvement before sharpening", low=0)
    sig_change: float = param(0.15, "adaptive: relative loss change counted as significant", low=0,
                              low_open=True)
    epochs: int = param(30, "maximum training epochs (training stops once fully sharpened and fine-tuned)", low=1)
    lr: float = param(1e-3, "learning rate", low=0, low_open=True)
    finetune_epochs: int = param(0, "epochs of straight-through fine-tuning once every layer is a step function "
                                 "(not in Whetstone: step functions forward, the unsharpened activation's gradient "
                                 "backward)", low=0)
    optimizer: Literal["adam", "rmsprop"] = param("adam", "optimizer (the seed found RMSprop most stable)")
    n_hot: int = param(4, "output neurons per class (N-hot code decoded by softmax; 4: Whetstone's convolutional "
                          "example)", low=1, high=1000)
    encoding: Literal["binary", "contours", "current"] = param("binary", "input encoding")
    batchnorm: bool = param(False, "Whetstone's convolutional recipe: a BatchNorm before every sharpenable "
                            "activation and the readout while training, folded into the layer before it for "
                            "inference")
    sharpen_lr: float = param(0.0, "learning rate when sharpening starts, decaying to 1 % of it as the network "
                              "sharpens (0: lr * min(1, 64 / batches per epoch))", low=0)
    lr_floor: float = param(0.01, "fraction of sharpen_lr left when every layer is a step function (1: constant "
                            "rate, as Whetstone)", low=0, high=1)
    tie_break: Literal["potential", "first"] = param(
        "potential", "equal N-hot votes: the tied class with the highest summed output potential, or the "
        "lowest class index (Whetstone)")
    binary_threshold: float = param(0.5, "binary: pixel threshold", low=0, high=1)
    contour_threshold: float = param(1.0, "contours: Sobel magnitude threshold", low=0, low_open=True)

    @classmethod
    def completed(cls, given):
        """``epochs`` set alone: the schedule follows it — ``scheduled``'s start and duration scaled
        from the defaults; ``fixed``'s start scaled and, unless ``rate`` is set, the rate raised to
        end within the epochs; ``adaptive``'s warm-up scaled."""
        schedule = given.get("schedule", cls.schedule)
        if schedule == "scheduled":
            return scaled_schedule(given, cls, epochs="epochs", start="start_epoch", length="duration")
        if "epochs" not in given or "start_epoch" in given:
            return given
        e = int(given["epochs"])
        start = min(round(cls.start_epoch * e / cls.epochs), e - 1)
        out = {**given, "start_epoch": max(0, start)}
        if schedule == "fixed" and "rate" not in given and out["start_epoch"] + math.ceil(1 / cls.rate - 1e-9) > e:
            out["rate"] = min(1.0, 1.0 / max(1, e - out["start_epoch"]))
        return out

    @property
    def _and_finetune(self) -> str:
        return f" (+ {self.finetune_epochs} of fine-tuning)" if self.finetune_epochs else ""

    def validate(self) -> None:
        if self.intermission and not (self.schedule == "scheduled" and self.bottom_up):
            raise ConfigError(f"sharpen: intermission={self.intermission} pauses between layers sharpened one after "
                              "another; valid only with schedule=scheduled and bottom_up=true")
        if self.schedule == "scheduled" and self.start_epoch + self.duration + self.finetune_epochs > self.epochs:
            raise ConfigError(
                f"sharpen: the schedule ends at epoch {self.start_epoch + self.duration}{self._and_finetune} but "
                f"training has {self.epochs} epochs; valid: start_epoch + duration + finetune_epochs <= epochs")
        fixed_end = self.start_epoch + math.ceil(1.0 / self.rate - 1e-9)
        if self.schedule == "fixed" and fixed_end + self.finetune_epochs > self.epochs:
            raise ConfigError(
                f"sharpen: at rate {self.rate}/epoch from epoch {self.start_epoch} sharpening needs "
                f"{fixed_end} epochs{self._and_finetune} but training has {self.epochs}; "
                "valid: start_epoch + ceil(1/rate) + finetune_epochs <= epochs")
        if self.schedule == "adaptive" and self.start_epoch >= self.epochs:
            raise ConfigError(f"sharpen: start_epoch {self.start_epoch} leaves no epoch to sharpen in; "
                              f"valid: start_epoch < epochs ({self.epochs})")



class Sharpen(Method):
    name = "sharpen"
    needs_trained_ann = False
    trains = True
    default_model = "stpu-dnn"
    smoke_sets = {"epochs": "6", "start_epoch": "2", "duration": "3", "lr": "3e-3"}
    Params = SharpenParams
    events_refusal = ("its spiking network is a one-step network of step "
                      "functions reading one (binary or analog) image, with no time axis for a stream of event frames")
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
        MetricSpec("sharpen/test/accuracy_readout_potential", "test accuracy of the sharpened network with its "
                   "readout decoded by membrane potential (summed per class) instead of spikes: binary hidden "
                   "layers, an analog readout", "fraction", "max", 0, 1),
        MetricSpec("sharpen/test/accuracy_before_finetune", "test accuracy of the fully sharpened network before "
                   "its straight-through fine-tuning (finetune_epochs; ties to the lowest class index)", "fraction",
                   "max", 0, 1),
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
            batchnorm=trial.suggest_categorical("batchnorm", [False, True]),
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
        # only a network that can be sharpened has a schedule worth checking
        layers = len(ctx.graph.neurons) + 1  # the hidden neurons and the readout
        end = schedule_end(params, layers)
        if params.schedule == "scheduled" and end + params.finetune_epochs > params.epochs:
            raise ConfigError(
                f"sharpen: {layers} layers sharpened over {params.duration} epochs from epoch {params.start_epoch} with "
                f"{params.intermission} epochs between layers end at epoch {end:g}{params._and_finetune} but "
                f"training has {params.epochs} epochs; valid: start_epoch + duration + intermission * "
                f"(layers - 1) + finetune_epochs <= epochs")

    def prepare(self, ctx, ann, params):
        from ...training import Classifier, fit
        from .callback import SharpeningCallback, accuracy

        torch.manual_seed(ctx.seed)
        ds = ctx.dataset
        net = build_sharpenable(ctx.architecture(), ds.input_shape, ds.num_classes, params)
        sharpener = Sharpener(net.activations, params)
        module = Classifier(net.gm, lr=params.lr, optimizer=params.optimizer)
        callback = SharpeningCallback(sharpener, net.gm, params.sharpen_lr, ctx.loader("val"), params.lr_floor,
                                      params.finetune_epochs)
        fit(ctx, module, params.epochs, callbacks=[callback], stage="sharpen")
        reached = min(sharpener.values) if sharpener.values else 1.0
        info = {}
        if reached < 1.0:
            info["sharpen_warning"] = (f"training ended at sharpness {reached:.3f} < 1; the network was "
                                       "set to step functions for inference (raise epochs)")
        steps = {f"sharpen/{k}": v for k, v in module.history.items()}
        steps.update({f"sharpen/sharpness/{n}": v for n, v in sharpener.history.items()})
        steps["sharpen/val/accuracy_sharpened"] = callback.sharpened_val
        metrics = {"sharpen/sharpness_reached": reached,
                   "sharpen/epochs_trained": float(len(module.history.get("train/loss", [])))}
        if callback.lr_used is not None:
            metrics["sharpen/lr"] = callback.lr_used
        for key, state in (("sharpen/brelu/test/accuracy", callback.before),  # Whetstone's "original"
                           ("sharpen/test/accuracy_before_finetune", callback.sharpened)):
            if state is not None:  # the same network before sharpening, or once sharpened
                earlier = copy.deepcopy(net.gm)
                earlier.load_state_dict(state)
                metrics[key] = accuracy(earlier.to(ctx.device).eval(), ctx.loader("test"), ctx.device)
        if params.batchnorm:
            fold_batchnorm(net)
        net.gm.eval()
        set_sharpness(net.activations, [1.0] * len(net.activations))
        return Preparation(SharpenedSNN(net, params.tie_break), metrics=metrics,
                           step_metrics=steps, info=info)

    def analyse(self, ctx, prep, evaluation, params) -> Extras:
        meters = evaluation.meters
        n, counted = max(meters.samples, 1), meters.counters
        metrics = {"sharpen/snn_agreement": counted.get("sharpen/agree", 0.0) / n,  # 1: IF network = step network
                   "sharpen/ties": counted.get("sharpen/ties", 0.0) / n,
                   "sharpen/test/accuracy_lowest_index": counted.get("correct/lowest_index", 0.0) / n,
                   "sharpen/test/accuracy_readout_potential": counted.get("correct/readout_potential", 0.0) / n}
        return Extras(metrics=metrics)
