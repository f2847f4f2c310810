"""Network architectures, registered by name, each adapting to the input shape, and the
resolution of a ``--model`` value (a registered name, a plug-in, or a ``module:factory`` path).

A model factory is called as ``factory(input_shape, num_classes)`` and returns an ``nn.Module``
whose ``forward()`` traces with ``torch.fx`` (see :mod:`harness.graph`). The seeds' networks are
``nn.Sequential`` with named layers (``conv1``, ``relu1``, ``fc1`` ...); ``vgg-small`` and
``resnet-small`` are the field's usual shapes written as classes with their own ``forward()``
(BatchNorm, residual adds, projection shortcuts). Op names become the per-layer metric keys
(``layer/conv1/synops``, ``layer/layer1.0.conv1/synops``). Kernel sizes larger than the input
(e.g. the Sandia networks on 8x8 ``digits``) shrink to the input size; pooling is skipped where a
feature map has shrunk to 1x1. torch is imported inside the builders, so listing models stays cheap.
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
MODELS.lazy("vgg-small", "harness.models:vgg_small",
            "VGG-style: 2 x (conv-BN-ReLU, conv-BN-ReLU, max-pool), dense 128, output")
MODELS.lazy("resnet-small", "harness.models:resnet_small",
            "ResNet-20-style basic blocks with BN: stem + 3 stages (16/32/64 ch, projection shortcuts), global avg-pool")
MODELS.entry_points("snn_harness.models")

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
        from .errors import ConfigError

        raise ConfigError(f"input shape {input_shape} is too small for this model")
    layers.append((readout, nn.Linear(n, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _conv_stack(input_shape: Shape, specs: list[tuple[int, int, int]], pool: str | None) -> list:
    """conv/ReLU(/pool) blocks; spec = (channels, kernel, padding). Pools only maps >= 4x4, so
    that a pool leaves at least 2x2: on 8x8 digits three pools would average cnn7's features down
    to 1x1 (test accuracy 0.794 after 15 epochs; 0.875 keeping 2x2)."""
    from torch import nn

    c, h, w = input_shape
    layers: list = []
    for i, (ch, k, pad) in enumerate(specs, start=1):
        k = min(k, h + 2 * pad, w + 2 * pad)
        layers += [(f"conv{i}", nn.Conv2d(c, ch, k, padding=pad)), (f"relu{i}", nn.ReLU())]
        c, h, w = ch, h + 2 * pad - k + 1, w + 2 * pad - k + 1
        if pool and min(h, w) >= 4:
            layers.append((f"pool{i}", nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)))
            h, w = h // 2, w // 2
    layers.append(("flatten", nn.Flatten()))
    return layers


def _dense_stack(first: int, widths: list[int], start: int = 1, dropout: float = 0.0) -> list:
    from torch import nn

    layers: list[tuple[str, Any]] = []
    n = first
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
    # the seed's 11x11 filters span 11/28 of an MNIST image; on smaller images (8x8 digits) the
    # kernel keeps that span (3x3), where a kernel clipped to the whole image left 3 features
    # (test accuracy 0.24 on digits)
    side = min(input_shape[1], input_shape[2])
    kernel = 11 if side >= 28 else max(3, round(11 * side / 28))
    return _finish(_conv_stack(input_shape, [(3, kernel, 0)], pool="max"), input_shape, num_classes)


def _sandia_cnn(input_shape: Shape, num_classes: int, channels: int, kernel: int):
    layers = _conv_stack(input_shape, [(channels, kernel, 0), (channels, kernel, 0)], pool=None)
    body = _finish(list(layers), input_shape, 1)
    layers += _dense_stack(body[-1].in_features, [100, 100])
    return _finish(layers, input_shape, num_classes)


def cnn_restricted(input_shape: Shape, num_classes: int):
    return _sandia_cnn(input_shape, num_classes, 8, 3)


def cnn_unrestricted(input_shape: Shape, num_classes: int):
    return _sandia_cnn(input_shape, num_classes, 32, 10)


def vgg_small(input_shape: Shape, num_classes: int, channels: tuple[int, int] = (16, 32), hidden: int = 128):
    """Two VGG stages of (conv 3x3-BN-ReLU) x 2 + max-pool, then dense ``hidden`` and the readout."""
    import torch
    from torch import nn

    c, h, w = input_shape
    layers: list = []
    for i, ch in enumerate(channels, start=1):
        for j in (1, 2):
            layers += [(f"conv{i}_{j}", nn.Conv2d(c, ch, 3, padding=1, bias=False)), (f"bn{i}_{j}", nn.BatchNorm2d(ch)),
                       (f"relu{i}_{j}", nn.ReLU())]
            c = ch
        if min(h, w) >= 2:
            layers.append((f"pool{i}", nn.MaxPool2d(2)))
            h, w = h // 2, w // 2
    layers += [("flatten", nn.Flatten()), ("fc1", nn.Linear(c * h * w, hidden)), ("relu_fc1", nn.ReLU()),
               ("drop", nn.Dropout(0.2)), ("fc_out", nn.Linear(hidden, num_classes))]
    model = nn.Sequential(OrderedDict(layers))
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))  # fails here if the input is too small
    return model.train()


def _basic_block():
    from torch import nn

    class BasicBlock(nn.Module):
        """ResNet's basic block: conv-BN-ReLU, conv-BN, + shortcut (1x1 conv-BN projection when the
        shape changes), ReLU — one ReLU module called twice, as torchvision writes it."""

        def __init__(self, c_in: int, c_out: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU()
            self.shortcut: nn.Module = nn.Identity()
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(c_out))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    return BasicBlock


def resnet_small(input_shape: Shape, num_classes: int, widths: tuple[int, int, int] = (16, 32, 64),
                 blocks: int = 1):
    """A ResNet-20-style network (He et al. 2016, CIFAR variant) cut to ``blocks`` basic block(s) per
    stage: stem conv-BN-ReLU, three stages (the 2nd and 3rd halve the resolution through a
    projection shortcut), global average pooling, linear readout."""
    import torch
    from torch import nn

    block = _basic_block()

    class ResNetSmall(nn.Module):
        def __init__(self):
            super().__init__()
            c = input_shape[0]
            self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU()
            c = widths[0]
            stages = []
            for i, wd in enumerate(widths):
                stride = 1 if i == 0 else 2
                stage = []
                for b in range(blocks):
                    stage.append(block(c, wd, stride if b == 0 else 1))
                    c = wd
                stages.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3 = stages
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(c, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(self.pool(x), 1))

    return ResNetSmall()


# -------------------------------------------------------------------------------------------------
# --model values


def resolve_model(spec: Any) -> tuple[str, Any]:
    """(name, factory) for a registered name, a plug-in, ``module:factory`` / ``file.py:factory``,
    a callable or an ``nn.Module`` instance (Python API). Errors name the path and the import error."""
    import copy

    if isinstance(spec, str):
        if spec in MODELS or ":" not in spec:
            MODELS.check(spec)
            return spec, MODELS.get(spec)
        from .registry import import_object

        return spec, import_object(spec, "model factory")
    from torch import nn

    if isinstance(spec, nn.Module):
        instance = spec
        return type(spec).__name__, lambda input_shape, num_classes: copy.deepcopy(instance)
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__), spec
    from .errors import ConfigError

    raise ConfigError(f"model {spec!r}: expected a registered name, 'module:factory', a callable or an nn.Module")
