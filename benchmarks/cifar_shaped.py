"""A CIFAR-sized workload for ``bench_distributed.py``, given to the harness by path
(``benchmarks/cifar_shaped.py:vgg16`` and ``:images``): VGG-16 in its CIFAR layout (13 conv-BN-ReLU
layers, 5 max pools, a linear readout) and 3×32×32 images drawn at random with a fixed seed.
Throughput does not depend on what the images show, and no download works everywhere."""

import numpy as np

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16(input_shape, num_classes):
    from torch import nn

    layers: list = []
    channels = input_shape[0]
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            channels = v
    side = input_shape[1] // 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * side * side, num_classes))


def images(train: int = 512, test: int = 128):
    rng = np.random.default_rng(0)
    x = rng.random((train + test, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, train + test)
    return (x[:train], y[:train]), (x[train:], y[train:])
