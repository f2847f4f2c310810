"""The seeds' network architectures, registered by name, each adapting to the input shape.

Every builder returns an ``nn.Sequential`` with named layers (``conv1``, ``relu1``, ``fc1`` ...):
the names become the per-layer metric keys (``layer/conv1/synops``). Kernel sizes larger than the
input (e.g. the Sandia networks on 8x8 ``digits``) shrink to the input size; pooling is skipped
where a feature map has shrunk to 1x1. torch is imported inside the builders, so listing models
stays cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from .registry import Registry

MODELS: Registry = Registry("model")
MODELS.lazy("dnn5", "harness.models:dnn5",
            "5 equal-width dense ReLU layers + linear readout (deutsch-* DNN)")
MODELS.lazy("cnn7", "harness.models:cnn7",
            "3 conv+avg-pool pairs + dense readout (deutsch-* CNN)")
MODELS.lazy("ttfs-cnn", "harness.models:ttfs_cnn",
            "2 conv (5x5) + 2 max-pool + 2 dense, ReLU, dropout 0.2 (lopez-randulfe-* Fig. 1)")
MODELS.lazy("stpu-dnn", "harness.models:stpu_dnn", "784-512-512-10 dense network (sandia-whetstone-*)")
MODELS.lazy("stpu-cnn", "harness.models:stpu_cnn", "conv 3x11x11, max-pool 2x2, dense output (sandia-whetstone-*)")
MODELS.lazy("cnn-restricted", "harness.models:cnn_restricted",
            "conv 8x3x3, conv 8x3x3, dense 100, dense 100, output (sandia-whetstone-*)")
MODELS.lazy("cnn-unrestricted", "harness.models:cnn_unrestricted",
            "conv 32x10x10, conv 32x10x10, dense 100, dense 100, output (sandia-whetstone-*)")

Shape = tuple[int, int, int]


def build_model(name: str, input_shape: Shape, num_classes: int, **kwargs: Any):
    """Instantiate a registered model for a (C, H, W) input and ``num_classes`` outputs."""
    return MODELS.get(name)(tuple(input_shape), num_classes, **kwargs)


def _finish(layers: list[tuple[str, Any]], input_shape: Shape, num_classes: int, readout: str = "fc_out"):
    """Append the readout, sized by a dry run of the layers so far."""
    import torch
    from torch import nn

    body = nn.Sequential(OrderedDict(layers))
    with torch.no_grad():
        n = body(torch.zeros(1, *input_shape)).flatten(1).shape[1]
    if n == 0:
        raise ValueError(f"input shape {input_shape} is too small for this model")
    layers.append((readout, nn.Linear(n, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _conv_stack(input_shape: Shape, specs: list[tuple[int, int, int]], pool: str | None) -> list:
    """conv/ReLU(/pool) blocks; spec = (channels, kernel, padding). Pools only maps >= 2x2."""
    from torch import nn

    c, h, w = input_shape
    layers: list = []
    for i, (ch, k, pad) in enumerate(specs, start=1):
        k = min(k, h + 2 * pad, w + 2 * pad)
        layers += [(f"conv{i}", nn.Conv2d(c, ch, k, padding=pad)), (f"relu{i}", nn.ReLU())]
        c, h, w = ch, h + 2 * pad - k + 1, w + 2 * pad - k + 1
        if pool and min(h, w) >= 2:
            layers.append((f"pool{i}", nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)))
            h, w = h // 2, w // 2
    layers.append(("flatten", nn.Flatten()))
    return layers


def _dense_stack(first: int, widths: list[int], start: int = 1, dropout: float = 0.0) -> list:
    from torch import nn

    layers, n = [], first
    for i, width in enumerate(widths, start=start):
        if dropout:
            layers.append((f"drop{i}", nn.Dropout(dropout)))
        layers += [(f"fc{i}", nn.Linear(n, width)), (f"relu_fc{i}", nn.ReLU())]
        n = width
    return layers


def _flat_size(input_shape: Shape) -> int:
    c, h, w = input_shape
    return c * h * w


def dnn5(input_shape: Shape, num_classes: int, width: int = 128):
    from torch import nn

    layers = [("flatten", nn.Flatten())] + _dense_stack(_flat_size(input_shape), [width] * 5)
    return _finish(layers, input_shape, num_classes)


def cnn7(input_shape: Shape, num_classes: int, channels: tuple[int, int, int] = (16, 32, 64)):
    layers = _conv_stack(input_shape, [(ch, 3, 1) for ch in channels], pool="avg")
    return _finish(layers, input_shape, num_classes)


def ttfs_cnn(input_shape: Shape, num_classes: int, channels: tuple[int, int] = (16, 32),
             hidden: int = 128, dropout: float = 0.2):
    from torch import nn

    layers = _conv_stack(input_shape, [(channels[0], 5, 2), (channels[1], 5, 2)], pool="max")
    body = _finish(list(layers), input_shape, 1)  # dry run for the flattened size
    n = body[-1].in_features
    layers += [("drop1", nn.Dropout(dropout)), ("fc1", nn.Linear(n, hidden)), ("relu_fc1", nn.ReLU()),
               ("drop2", nn.Dropout(dropout))]
    return _finish(layers, input_shape, num_classes)


def stpu_dnn(input_shape: Shape, num_classes: int):
    from torch import nn

    layers = [("flatten", nn.Flatten())] + _dense_stack(_flat_size(input_shape), [512, 512])
    return _finish(layers, input_shape, num_classes)


def stpu_cnn(input_shape: Shape, num_classes: int):
    return _finish(_conv_stack(input_shape, [(3, 11, 0)], pool="max"), input_shape, num_classes)


def _sandia_cnn(input_shape: Shape, num_classes: int, channels: int, kernel: int):
    layers = _conv_stack(input_shape, [(channels, kernel, 0), (channels, kernel, 0)], pool=None)
    body = _finish(list(layers), input_shape, 1)
    layers += _dense_stack(body[-1].in_features, [100, 100])
    return _finish(layers, input_shape, num_classes)


def cnn_restricted(input_shape: Shape, num_classes: int):
    return _sandia_cnn(input_shape, num_classes, 8, 3)


def cnn_unrestricted(input_shape: Shape, num_classes: int):
    return _sandia_cnn(input_shape, num_classes, 32, 10)
