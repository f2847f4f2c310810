"""qcfs — conversion at a few time steps: the ANN trained with the quantisation-clip-floor-shift
activation, then converted to integrate-and-fire neurons (Bu et al., ICLR 2022, "Optimal ANN-SNN
conversion for high-accuracy and ultra-low-latency spiking neural networks").

Every ReLU of the traced ANN is replaced by

    QCFS(x) = λ · clip(⌊x·L/λ + ½⌋ / L, 0, 1)

with ``levels`` L and a trainable λ per layer, and the network is fine-tuned for ``epochs`` epochs
from the trained ReLU ANN (the run's baseline, which stays the ReLU ANN). The floor passes its
gradient straight through; λ gets the gradient of λ·clip(x/λ, 0, 1) with the quantisation held
fixed: ``q − x/λ`` inside the range, 1 above it, 0 below (the paper's). λ starts from the
``percentile`` of the ReLU ANN's positive activations (the ``rate`` calibration), not a constant,
so that training starts from a network that already works.

The converted network is ``rate``'s: reset by subtraction, threshold λ_l, initial membrane λ_l/2
(``v_init`` 0.5: the shift φ = ½ of the activation), input as a constant current, readout
``membrane``. With T = L and a constant input, a layer's spike count is then exactly
L·QCFS(x)/λ for the first spiking layer (the identity the tests check). Deeper layers get their
input spikes unevenly in time (the paper's unevenness error): a neuron whose input over the run
stays below its threshold can fire early and never take the spike back, so at T = 8 a layer fires
far more than its QCFS ANN says (mnist-5k vgg-small: 0.686 without correction, its accuracy
falling after the first step). ``calibration=light`` (the default here; ``rate``'s
:func:`~harness.methods.rate.light_calibration`) takes that systematic excess out of each layer's
bias and each neuron's initial membrane: 0.981 (QCFS ANN 0.983). The fine-tuned QCFS ANN is kept in
its own cache entry (:func:`qcfs_cache_path`).

Max pooling does not convert (a spiking max pool over-counts: see ``rate``). With ``maxpool=avg``
(the default, as the QCFS paper trains its VGGs) every max pool is replaced by an average pool
of the same window before fine-tuning, in the QCFS ANN and its SNN alike (the run records it as
``qcfs/maxpool_replaced``); ``maxpool=max`` keeps it and converts it as ``rate`` does (``gate``:
as gated pools).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..api import Preparation
from ..calibration import calibrate_scales
from ..config import ConfigError, param
from ..finetune import cached_fine_tune, fine_tune_path
from ..graph import Kind, register_module_kind
from ..metrics import MetricSpec, fine_tuning_curves
from ..simulate import pool_geometry
from .rate import LAYER_METRICS, Rate, RateEvaluable, RateParams, calibrated_model, model_metrics


class QCFS(nn.Module):
    """λ · clip(⌊x·L/λ + ½⌋ / L, 0, 1), λ trainable (see the module docstring for its gradients)."""

    def __init__(self, lam: float, levels: int):
        super().__init__()
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.levels = int(levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam.abs().clamp_min(1e-6)  # a step through 0 must neither flip λ nor divide by 0
        y = torch.clamp(x / lam, 0.0, 1.0)
        q = torch.floor(y * self.levels + 0.5) / self.levels
        return (y + (q - y).detach()) * lam

    @property
    def threshold(self) -> float:
        return float(self.lam.detach().abs().clamp_min(1e-6))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lam={self.threshold:.4g}"


register_module_kind(QCFS, Kind.NEURON)  # traced as the network's neurons: rate converts them to IF


@dataclass(frozen=True)
class QCFSParams(RateParams):
    timesteps: int = param(8, "simulation length T (time steps of dt)", low=1, high=1_000_000)
    # L = 4, not 8: on mnist-5k at T = 8 resnet-small's spiking network reaches 0.962 with L = 4 and
    # 0.841 with L = 8 (vgg-small 0.981 with either); on fashion-mnist L = 8's vgg-small QCFS ANN is
    # 0.9 points more accurate (README, qcfs)
    levels: int = param(4, "L: quantisation levels of the activation (the paper: 4–16)", low=1, high=1024)
    epochs: int = param(10, "fine-tuning epochs of the QCFS ANN (from the trained ReLU ANN)", low=0)
    lr: float = param(1e-3, "fine-tuning learning rate (Adam)", low=0, low_open=True)
    lam_lr: float = param(1e-2, "learning rate of the thresholds λ", low=0)
    maxpool: Literal["avg", "max", "gate"] = param(  # type: ignore[assignment]  # qcfs adds avg
        "avg", "max pooling trained and converted as average pooling, or kept (converted as rate's max or gate)")
    calibration: Literal["none", "bias", "light"] = param(
        "light", "after conversion, match each layer's mean activity to the QCFS ANN's: per channel through the "
        "bias (bias), then per neuron through the initial membrane (light)")

    def validate(self) -> None:
        super().validate()
        if self.normalization in ("channel", "ltb"):
            raise ConfigError(f"qcfs: normalization={self.normalization} is not available (λ is trained per layer); "
                              "valid values are max, percentile (how λ is initialised)")


def replace_maxpools(gm: torch.fx.GraphModule, graph) -> list[str]:
    """Every max pool of ``graph`` (module or ``F.max_pool2d``) as an average pool of the same
    window, in ``gm``; returns the ops replaced."""
    from ..graph import set_module

    done = []
    for op in graph.of(Kind.MAXPOOL):
        kernel, stride, padding, dilation, ceil_mode = pool_geometry(op)
        if dilation not in (1, (1, 1)) or getattr(op.module, "return_indices", op.node.kwargs.get("return_indices")):
            raise ConfigError(f"qcfs: {op.describe()} (dilated, or returning indices) has no average pool "
                              "equivalent; use --set maxpool=max")
        pool = nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)
        # a module call is replaced where it is; a function call becomes a module of its own
        set_module(gm, op.node, str(op.node.target) if op.module is not None else f"{op.name}_avg", pool)
        done.append(op.name)
    gm.recompile()
    return done


def install_qcfs(gm: torch.fx.GraphModule, graph, lams: dict[str, float], levels: int) -> None:
    """A QCFS module of its own on every neuron op of ``graph`` (in ``gm``), λ from ``lams`` (by op
    name). A ReLU module called at several places (resnet-small's blocks call theirs twice) gets one
    QCFS per call, installed at the op's name: each layer trains its own λ."""
    from ..graph import set_module

    taken: set[str] = set()
    names = {n for n, _ in gm.named_modules()}
    for op in graph.neurons:
        target = str(op.node.target) if op.node.op == "call_module" else f"{op.name}_qcfs"
        if target in taken:
            target = op.name if op.name not in names else f"{op.name}_qcfs"
        taken.add(target)
        set_module(gm, op.node, target, QCFS(lams.get(op.name, 1.0), levels))
    gm.recompile()


class Qcfs(Rate):
    name = "qcfs"
    default_model = "vgg-small"
    trains = True
    smoke_sets = {"timesteps": "4", "epochs": "1"}
    Params = QCFSParams
    metrics = LAYER_METRICS + (
        MetricSpec("qcfs/ann/test/accuracy", "test accuracy of the QCFS ANN (the network that is converted)",
                   "fraction", "max", 0, 1),
        MetricSpec("qcfs/maxpool_replaced", "max pools trained and converted as average pools", "count", None, 0),
    ) + fine_tuning_curves("qcfs")

    @classmethod
    def search_space(cls, trial):
        return QCFSParams(timesteps=trial.suggest_categorical("timesteps", [2, 4, 8, 16, 32]),
                          levels=trial.suggest_categorical("levels", [2, 4, 8, 16]),
                          lr=trial.suggest_float("lr", 1e-4, 3e-3, log=True))

    def prepare(self, ctx, ann, params) -> Preparation:
        from ..graph import trace

        relu = trace(copy.deepcopy(ann).cpu().eval(), ctx.dataset.input_shape)
        gm = relu.gm
        replaced = replace_maxpools(gm, relu) if params.maxpool == "avg" else []
        graph = trace(gm, ctx.dataset.input_shape)
        x, _ = ctx.dataset.subset("train", params.calibration_samples)
        lams = calibrate_scales(graph.folded(), torch.from_numpy(x), params.normalization, params.percentile,
                                seed=ctx.seed)
        install_qcfs(gm, graph, lams, params.levels)
        path = qcfs_cache_path(ctx, ann, params) if params.epochs else None
        net: nn.Module
        history: dict[str, list[float]]
        if path is None:  # nothing to fine-tune, nothing to keep
            net, history, hit = gm.eval(), {}, "none (epochs 0)"
        else:  # the fine-tuned QCFS ANN of this very ReLU ANN and these knobs, or a fine-tuning
            def train(model: nn.Module):
                from ..training import fit

                return fit(ctx, _QCFSClassifier(model.train(), lr=params.lr, lam_lr=params.lam_lr), params.epochs,
                           stage="qcfs")

            net, history, hit = cached_fine_tune(path, gm, train, "QCFS")
        alone = ctx.evaluate(net, desc="evaluate QCFS ANN", what="the QCFS ANN")
        converted = trace(net, ctx.dataset.input_shape).folded()
        thresholds = {op.name: qcfs_of(op).threshold for op in converted.neurons}
        model = calibrated_model(converted, torch.from_numpy(x), params, lams=thresholds)
        ev = RateEvaluable(model, params, label=self.name, events=ctx.dataset.is_events)
        metrics = model_metrics(model)
        metrics.update({"qcfs/ann/test/accuracy": alone.metrics["test/accuracy"],
                        "qcfs/maxpool_replaced": float(len(replaced))})
        return Preparation(ev, metrics=metrics, step_metrics={f"qcfs/{k}": v for k, v in history.items()},
                           info={"qcfs_cache": hit, **({"qcfs_cache_file": str(path)} if path else {})})


def qcfs_cache_path(ctx, ann: nn.Module, params: QCFSParams) -> Path:
    """Where the fine-tuned QCFS ANN is kept: keyed by the ReLU ANN it starts from (its tensors,
    so a pruned or user-given ANN has its own entry), the knobs that shape fine-tuning, the
    training configuration (batch size ...), the seed and this file's code — never the ReLU ANN's
    own cache entry (:func:`harness.finetune.fine_tune_path`)."""
    knobs = {k: getattr(params, k) for k in ("levels", "epochs", "lr", "lam_lr", "maxpool", "normalization",
                                             "percentile", "calibration_samples")}
    return fine_tune_path(ctx, "qcfs", ann, knobs, (Path(__file__), Path(__file__).parent.parent / "training.py"))


def qcfs_of(op) -> QCFS:
    if not isinstance(op.module, QCFS):
        raise ConfigError(f"qcfs: {op.describe()} is a neuron op without a QCFS activation")
    return op.module


def _QCFSClassifier(model: nn.Module, lr: float, lam_lr: float):
    """The harness's Classifier with the thresholds λ in their own parameter group."""
    from ..training import Classifier

    class QCFSClassifier(Classifier):
        def configure_optimizers(self):
            lam = [p for n, p in self.model.named_parameters() if n.endswith(".lam") or n == "lam"]
            ids = {id(p) for p in lam}
            rest = [p for p in self.model.parameters() if id(p) not in ids]
            return torch.optim.Adam([{"params": rest, "lr": self.lr}, {"params": lam, "lr": lam_lr}])

    return QCFSClassifier(model, lr=lr)
