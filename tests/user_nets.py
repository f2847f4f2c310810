"""Networks written the way users write them — nested modules, ``nn.Sequential`` stems and feature
stacks, projection shortcuts, functional ops — for the default-path matrix
(``tests/test_default_path.py``), passed to the harness as ``tests/user_nets.py:<factory>``."""

import torch
import torch.nn.functional as F
from torch import nn


class ReadmeNet(nn.Module):
    """The README's own example (``mynets.py``), as it is printed there."""

    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)       # a residual connection
        return self.fc(torch.flatten(self.pool(h), 1))


def readme_net(input_shape, num_classes):
    return ReadmeNet(input_shape[0], num_classes)


class VGGNested(nn.Module):
    """A VGG whose feature stack is an ``nn.Sequential`` of ``nn.Sequential`` stages."""

    def __init__(self, channels, classes, side):
        super().__init__()

        def stage(c_in, c_out):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.features = nn.Sequential(stage(channels, 8), stage(8, 8), nn.MaxPool2d(2), stage(8, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * (side // 4) ** 2, 32), nn.ReLU(),
                                        nn.Dropout(0.1), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def vgg_nested(input_shape, num_classes):
    return VGGNested(input_shape[0], num_classes, input_shape[1])


class Block(nn.Module):
    """A basic block with a 1x1 projection shortcut (an ``nn.Sequential``) and functional ReLUs."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetStem(nn.Module):
    """A ResNet with an ``nn.Sequential`` stem, blocks in an ``nn.ModuleList`` and functional pooling
    and reshaping."""

    def __init__(self, channels, classes):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList([Block(8, 12, 1), Block(12, 16, 2)])
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(x.view(x.size(0), -1))


def resnet_stem(input_shape, num_classes):
    return ResNetStem(input_shape[0], num_classes)


class Branch(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)

    def forward(self, x):
        return F.relu(self.conv(x))


class TwoBranches(nn.Module):
    """Two ``Branch`` submodules concatenated along channels, functional max pooling, a dense head."""

    def __init__(self, channels, classes, side):
        super().__init__()
        self.left, self.right = Branch(channels, 4, 3), Branch(channels, 6, 5)
        self.mix = Branch(10, 8, 3)
        self.head = nn.Sequential(nn.Linear(8 * (side // 4) ** 2, 24), nn.ReLU(), nn.Linear(24, classes))

    def forward(self, x):
        h = F.max_pool2d(torch.cat([self.left(x), self.right(x)], 1), 2)
        h = F.max_pool2d(self.mix(h), 2)
        return self.head(torch.flatten(h, 1))


def two_branches(input_shape, num_classes):
    return TwoBranches(input_shape[0], num_classes, input_shape[1])
