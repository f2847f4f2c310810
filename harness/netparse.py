"""Map a feed-forward ReLU network onto conversion blocks, naming any layer that cannot map.

A block is ``pre`` ops (pooling, flatten, dropout: they act on the incoming spikes or codes) →
one synaptic layer (Linear/Conv2d) → its ReLU (absent for the last block, the readout). Max- and
average-pooling commute with ReLU, so they always belong to the following block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .errors import ConfigError
from .meters import SYNAPTIC_TYPES

SHAPE_OPS = (nn.Flatten, nn.Dropout, nn.Identity)


@dataclass
class Block:
    name: str
    layer: nn.Module
    pre: list[tuple[str, nn.Module]] = field(default_factory=list)
    neuron: str | None = None  # name of the ReLU that makes this layer spike


def flatten_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_children():
        full = f"{prefix}{name}"
        if isinstance(m, nn.Sequential):
            out += flatten_modules(m, f"{full}.")
        else:
            out.append((full, m))
    return out


def parse_blocks(model: nn.Module, method: str, pools: tuple[type[nn.Module], ...]) -> list[Block]:
    """Blocks of ``model`` for ``method`` (named in errors); ``pools`` are the pooling types it maps."""
    supported = (nn.Conv2d, nn.Linear, nn.ReLU, *pools, *SHAPE_OPS)
    mods = flatten_modules(model) if isinstance(model, nn.Sequential) else [("model", model)]
    blocks: list[Block] = []
    pending: list[tuple[str, nn.Module]] = []
    for name, m in mods:
        if not isinstance(m, supported):
            raise ConfigError(f"{method}: layer {name!r} ({type(m).__name__}) cannot be converted; "
                              "supported layers: " + ", ".join(t.__name__ for t in supported))
        if isinstance(m, SYNAPTIC_TYPES):
            if blocks and blocks[-1].neuron is None:
                raise ConfigError(f"{method}: layer {blocks[-1].name!r} is followed by {name!r} without a "
                                  "ReLU; every layer but the readout needs a ReLU")
            blocks.append(Block(name, m, pre=pending))
            pending = []
        elif isinstance(m, nn.ReLU):
            if not blocks or blocks[-1].neuron is not None or pending:
                raise ConfigError(f"{method}: ReLU {name!r} must directly follow a Linear/Conv2d layer")
            blocks[-1].neuron = name
        elif isinstance(m, pools) and blocks and blocks[-1].neuron is None:
            # pooling before the ReLU: it commutes with ReLU, so it acts on the spikes
            raise ConfigError(f"{method}: pooling {name!r} sits between {blocks[-1].name!r} and its ReLU; "
                              "put the ReLU first (they commute)")
        else:
            pending.append((name, m))
    if not blocks:
        raise ConfigError(f"{method}: the model has no Linear/Conv2d layer")
    if blocks[-1].neuron is not None:
        raise ConfigError(f"{method}: the last layer {blocks[-1].name!r} must be a linear readout (no ReLU)")
    return blocks
