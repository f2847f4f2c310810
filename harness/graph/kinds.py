"""The kinds of op the harness tells apart in a traced network, and which module types,
functions and tensor methods are which (see :mod:`harness.graph`)."""

from __future__ import annotations

import operator
from enum import StrEnum
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn


class Kind(StrEnum):
    INPUT = "input"
    OUTPUT = "output"
    SYNAPSE = "synapse"  # Linear / Conv: weights, counted as MACs or SynOps
    NEURON = "neuron"  # ReLU in an ANN; the spiking neuron in an SNN
    ACTIVATION = "activation"  # another non-linearity: metered in an ANN, converted by no method
    NORM = "norm"  # BatchNorm (folded away for conversion)
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    ADAPTIVE_AVGPOOL = "adaptive_avgpool"
    FLATTEN = "flatten"
    IDENTITY = "identity"  # dropout, identity, contiguous
    ADD = "add"
    CAT = "cat"
    SCALE = "scale"  # multiplication by a constant (inserted by conversions)
    ENCODER = "encoder"  # turns the input into spikes (Poisson, binarisation): a spike source
    EXPAND = "expand"  # broadcasts a static tensor over time (folded-time networks)
    DECODE = "decode"  # a fixed read-out of output spikes (not part of the network's cost)
    SHAPE = "shape"  # a non-tensor helper (x.size(0))
    OTHER = "other"


# stateless tensor ops: they move or combine values, hold no weights and no state
STATELESS = frozenset({Kind.MAXPOOL, Kind.AVGPOOL, Kind.ADAPTIVE_AVGPOOL, Kind.FLATTEN, Kind.IDENTITY,
                       Kind.ADD, Kind.CAT, Kind.SCALE, Kind.EXPAND})
SYNAPTIC_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (nn.ReLU6, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
                                                 nn.GELU, nn.SiLU, nn.ELU, nn.Softplus)

_MODULE_KINDS: dict[type[nn.Module], Kind] = {
    nn.Linear: Kind.SYNAPSE, nn.Conv1d: Kind.SYNAPSE, nn.Conv2d: Kind.SYNAPSE,
    nn.ReLU: Kind.NEURON,
    nn.BatchNorm1d: Kind.NORM, nn.BatchNorm2d: Kind.NORM,
    nn.MaxPool2d: Kind.MAXPOOL, nn.AvgPool2d: Kind.AVGPOOL, nn.AdaptiveAvgPool2d: Kind.ADAPTIVE_AVGPOOL,
    nn.Flatten: Kind.FLATTEN, nn.Dropout: Kind.IDENTITY, nn.Dropout2d: Kind.IDENTITY,
    nn.Identity: Kind.IDENTITY,
    **{t: Kind.ACTIVATION for t in ACTIVATION_TYPES},
}
_FUNCTION_KINDS: dict[Any, Kind] = {
    F.relu: Kind.NEURON, torch.relu: Kind.NEURON, torch.relu_: Kind.NEURON,
    torch.flatten: Kind.FLATTEN, F.dropout: Kind.IDENTITY,
    F.max_pool2d: Kind.MAXPOOL, F.avg_pool2d: Kind.AVGPOOL, F.adaptive_avg_pool2d: Kind.ADAPTIVE_AVGPOOL,
    operator.add: Kind.ADD, operator.iadd: Kind.ADD, torch.add: Kind.ADD,
    torch.cat: Kind.CAT, torch.concat: Kind.CAT,
    operator.mul: Kind.SCALE, torch.mul: Kind.SCALE,
    torch.sigmoid: Kind.ACTIVATION, torch.tanh: Kind.ACTIVATION, F.sigmoid: Kind.ACTIVATION,
    F.tanh: Kind.ACTIVATION, F.gelu: Kind.ACTIVATION, F.silu: Kind.ACTIVATION, F.relu6: Kind.ACTIVATION,
    F.leaky_relu: Kind.ACTIVATION, F.hardtanh: Kind.ACTIVATION, F.elu: Kind.ACTIVATION,
}
_METHOD_KINDS: dict[str, Kind] = {
    "relu": Kind.NEURON, "relu_": Kind.NEURON, "flatten": Kind.FLATTEN, "contiguous": Kind.IDENTITY,
    "add": Kind.ADD, "add_": Kind.ADD, "size": Kind.SHAPE, "dim": Kind.SHAPE,
    "sigmoid": Kind.ACTIVATION, "tanh": Kind.ACTIVATION,
}
# Module types that other parts of the harness add (spiking neurons, encoders ...) register here.
EXTRA_MODULE_KINDS: dict[type[nn.Module], Kind] = {}


def register_module_kind(module_type: type[nn.Module], kind: Kind) -> None:
    """Classify ``module_type`` as ``kind`` in every later trace (used for the harness's own modules)."""
    EXTRA_MODULE_KINDS[module_type] = kind


def weight_of(module: nn.Module) -> torch.Tensor:
    """A synaptic layer's weight tensor."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def describe_target(node: fx.Node, module: nn.Module | None) -> str:
    """What a node calls, for messages: ``Conv2d``, ``F.relu``, ``operator.add``, ``Tensor.view`` ..."""
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    if node.op == "call_function":
        t = node.target
        mod = getattr(t, "__module__", None) or ""
        name = getattr(t, "__name__", str(t))
        if mod == "_operator":
            return f"operator.{name}"
        if mod.startswith("torch.nn.functional"):
            return f"F.{name}"
        return f"torch.{name}" if mod.startswith("torch") or mod == "" else f"{mod}.{name}"
    return node.op


def classify(node: fx.Node, module: nn.Module | None) -> Kind:
    """The kind of a node by what it calls (module type, exact before subclasses; function; tensor method)."""
    if node.op == "placeholder":
        return Kind.INPUT
    if node.op == "output":
        return Kind.OUTPUT
    if node.op == "call_module":
        for types in (EXTRA_MODULE_KINDS, _MODULE_KINDS):
            for t, k in types.items():
                if type(module) is t:
                    return k
        for types in (EXTRA_MODULE_KINDS, _MODULE_KINDS):  # subclasses
            for t, k in types.items():
                if isinstance(module, t):
                    return k
        return Kind.OTHER
    if node.op == "call_function":
        return _FUNCTION_KINDS.get(node.target, Kind.OTHER)
    if node.op == "call_method":
        if node.target in ("view", "reshape"):
            return Kind.FLATTEN  # checked against the shapes in tracing._refine
        return _METHOD_KINDS.get(str(node.target), Kind.OTHER)
    return Kind.OTHER


def is_tensor(node: fx.Node) -> bool:
    """Whether the node's value (in the shape-propagation dry run) is a tensor."""
    return hasattr(node.meta.get("tensor_meta"), "shape")


FOREIGN = (Kind.OTHER, Kind.ENCODER, Kind.EXPAND, Kind.DECODE)  # ops of another method's rebuilt network
