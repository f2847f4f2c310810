"""The sharpenable network and its one-step spiking form (see :mod:`harness.methods.sharpen`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.fx as fx
from torch import nn

from ...api import Outputs
from ...config import ConfigError
from ...evaluation import GraphSNN
from ...graph import (
    PASS,
    Graph,
    Kind,
    Op,
    build,
    insert_after,
    insert_after_edge,
    register_module_kind,
    set_module,
    spike_paths,
    symbolic_trace,
    unsupported_ops,
)
from .layers import InputEncoding, NHotDecode, SharpenableActivation

if TYPE_CHECKING:  # pragma: no cover
    from . import SharpenParams

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
    readout = graph.feed(graph.output.name, PASS)
    if readout.kind != Kind.SYNAPSE:
        problems.append((graph.output, "the network must end in a linear readout layer"))
    elif not isinstance(readout.module, nn.Linear):
        problems.append((readout, f"the readout `{readout.name}` must be a Linear layer"))
    return problems


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
    readout = g.feed(g.output.name, PASS)
    set_module(gm, readout.node, readout.name,
               nn.Linear(cast(nn.Linear, readout.layer).in_features, num_classes * p.n_hot))
    if p.batchnorm:
        _insert_batchnorm(gm, g, num_classes * p.n_hot)
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



def _insert_batchnorm(gm: fx.GraphModule, g: Graph, readout_width: int) -> None:
    """Whetstone's convolutional recipe: a BatchNorm on the input of every neuron op (unless one is
    there already) and of the readout's spiking layer. Inserted before the neurons are rebuilt, so
    each becomes a call on its BatchNorm's output."""
    for op in g.neurons:
        src = op.node.args[0]
        assert isinstance(src, fx.Node)
        if g[op.inputs[0]].kind == Kind.NORM:
            continue
        shape = g[op.inputs[0]].shape
        if len(shape) not in (1, 3):
            raise ConfigError(f"sharpen: batchnorm=true needs [C] or [C, H, W] inputs to each neuron; "
                              f"`{op.name}` gets {list(shape)}")
        bn: nn.Module = nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        insert_after_edge(gm, src, op.node, f"bn_{op.name}".replace(".", "_"), bn)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    src = out.args[0]
    assert isinstance(src, fx.Node)
    insert_after_edge(gm, src, out, "bn_readout", nn.BatchNorm1d(readout_width))


def fold_batchnorm(net: Sharpenable) -> None:
    """Fold every BatchNorm into the Conv/Linear before it (eval statistics), as Whetstone's
    ``copy_remove_batchnorm`` does before the network is deployed: the step functions then read the
    layers' own currents. The activations stay the same module objects."""
    from torch.fx.experimental.optimization import fuse

    net.gm.eval()
    fused = fuse(net.gm, inplace=True, no_trace=True)
    assert isinstance(fused, fx.GraphModule)
    net.gm = fused


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

    label = "sharpen"

    def __init__(self, net: Sharpenable, tie_break: str):
        snn = to_spiking(net)
        decode, potential = _decoder(snn), _Potential(snn.get_submodule("spike_out"))

        def readout(out, T, B):
            assert potential.value is not None
            pred, ties = decode.decide(out, potential.value, tie_break)
            self._batch = (out.argmax(-1), ties)
            return Outputs(logits=out, predictions=pred)

        super().__init__(build(snn, net.input_shape), 1, readout)
        self._decode, self._potential = decode, potential
        self.sharpened, self.tie_break = net.gm, tie_break
        self._sharpened_potential = _Potential(net.gm.get_submodule("spike_out"))
        self._sharpened_decode = _decoder(net.gm)

    def to(self, device):
        self.sharpened.to(device)
        return super().to(device)

    def run_batch(self, x, meters):
        """Also counts, into the meters (so a sharded evaluation sums them): ``sharpen/ties``,
        ``sharpen/agree`` (samples decided as the sharpened network decides them) and the
        predictions under Whetstone's lowest-index rule (``correct/lowest_index``) and those of the
        readout decoded by its membrane potentials instead of its spikes (``correct/readout_potential``:
        binary hidden layers, an analog readout — what the binary vote itself costs)."""
        out = super().run_batch(x, meters)
        first, ties = self._batch
        assert self._potential.value is not None
        out.alternatives["readout_potential"] = self._decode.owned(self._potential.value).argmax(-1)
        meters.count("sharpen/ties", int(ties.sum()))
        votes = self.sharpened(x)
        assert self._sharpened_potential.value is not None
        ref, _ = self._sharpened_decode.decide(votes, self._sharpened_potential.value, self.tie_break)
        meters.count("sharpen/agree", int((out.final() == ref).sum()))
        out.alternatives["lowest_index"] = first
        return out

