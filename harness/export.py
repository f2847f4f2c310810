"""Keeping the network a run evaluated: ``network.pt`` with every tracked run, ``network.nir``
where NIR can express it.

The evaluable describes itself (:class:`harness.api.Evaluable`): its tensors and, where it can,
a single-step SpikingJelly ``nn.Sequential``. This module writes what it is given and knows no
method: the helpers below (:func:`chain_sequential`, :func:`spikingjelly_node`) are what the
evaluables use to describe their chains.

``network.pt`` (``torch.load(path, weights_only=False)``) holds what rebuilds the network: the
method, its parameters, the model, the data set and input shape, the network's tensors
(``state_dict``: the scaled layers of a converted network, the trained weights of a trained one)
and, for networks NIR can express, the same network as a single-step SpikingJelly
``nn.Sequential`` (``sequential``), runnable as it is: reset it with
``spikingjelly.activation_based.functional.reset_net`` and call it once per time step.

``network.nir`` is that Sequential exported by SpikingJelly's own ``nir_exchange.export_to_nir``
(the Neuromorphic Intermediate Representation, read by sinabs, snnTorch, Norse, Lava and the
toolchains of Loihi, SpiNNaker 2 and Xylo), its nodes renamed after the harness's op names
(``conv1``, ``relu1``, ``layer1.0.conv1`` …), so they match the run's per-layer metrics. NIR
expresses chains of Linear/Conv2d/AvgPool2d/Flatten layers and IF/LIF neurons; what it cannot say
is refused with the reason (:class:`~harness.errors.NirUnsupported`):

* ``ttfs``: its two-stage neuron (a silent integration phase, then a ramp to one spike) has no NIR
  primitive;
* max pooling, residual additions and concatenations (NIR has no max pool; the export walks chains);
* a synaptic filter (``rate``'s ``synapse``) or a spiking readout neuron.

What changes on the way (written into the file's metadata and the run's ``nir_export`` note):

* NIR's IF and LIF reset to ``v_reset`` (here 0) when they fire. ``rate``/``layer-scaling`` neurons
  reset by subtraction (v ← v − θ), which NIR cannot say; simulators differ in how they read NIR's IF
  (sinabs runs it as its ``IAF``: reset by subtraction, membrane floored at −θ, several spikes per
  step when v ≥ 2θ). ``surrogate`` with ``reset=hard`` and ``sharpen`` (one step) are exact.
* NIR neurons start at rest: ``rate``'s ``v_init`` (0.5 by default) is not exported.
* The input node is what the first layer receives: the image as a constant current (``rate``),
  the encoder's spikes (``surrogate``'s Poisson input, ``sharpen``'s binarised input); the output
  node is the readout layer's current each step (summed over time, it is the ``membrane``
  decode) or, for ``sharpen``, the output neurons' spikes (n-hot groups, decoded by count).

Saving never costs a run its results: whatever fails while the files are written becomes a note
(:func:`save_network` returns it), and a half-written file is removed.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import SingleStep
from .errors import NirUnsupported
from .graph import Graph, Kind, Op

log = logging.getLogger(__name__)

FORMAT = "snn-harness/network/1"
NIR_DT = 1e-4  # seconds per step in the NIR file (SpikingJelly's and most NIR readers' default)

__all__ = ["FORMAT", "NIR_DT", "NirUnsupported", "chain_sequential", "save_network", "spikingjelly_node", "to_nir"]


def chain_sequential(graph: Graph, label: str, layer_of: Callable[[Op], nn.Module],
                     neuron_of: Callable[[Op], nn.Module]) -> SingleStep:
    """The chain of ``graph`` as a single-step SpikingJelly ``nn.Sequential``: ``layer_of(op)``
    gives the synaptic layer to export for a synaptic op, ``neuron_of(op)`` the single-step node
    for a neuron op. Raises :class:`NirUnsupported` (naming ``label``, the method) for what NIR
    cannot hold."""
    mods: list[nn.Module] = []
    names: list[str] = []
    notes: list[str] = []
    prev = graph.input.name
    for op in graph.ops.values():
        if op.kind == Kind.INPUT or op.kind == Kind.SHAPE:
            continue
        if op.kind == Kind.OUTPUT:
            break
        if op.kind in (Kind.ADD, Kind.CAT) or (op.inputs and op.inputs[0] != prev) or len(op.inputs) > 1:
            raise NirUnsupported(f"{label}: {op.describe()} joins branches; the NIR export writes chains of layers")
        prev = op.name
        if op.kind == Kind.ENCODER:
            if mods:
                raise NirUnsupported(f"{label}: {op.describe()} encodes in the middle of the network")
            notes.append(f"input: the spikes of the harness's encoder ({op.what}); encode inputs the same way")
            continue
        if op.kind in (Kind.EXPAND, Kind.IDENTITY):
            continue
        if op.kind == Kind.DECODE:
            notes.append(f"output: the output neurons' spikes per step, decoded by {op.what}")
            break
        module = _chain_module(op, mods, label, layer_of, neuron_of)
        if module is not None:
            mods.append(module)
            names.append(op.name)
    from spikingjelly.activation_based import neuron

    if not any(isinstance(m, neuron.BaseNode) for m in mods):
        raise NirUnsupported(f"{label}: no spiking neuron in the exported chain")
    return SingleStep(nn.Sequential(*mods).eval(), names, notes)


def _chain_module(op: Op, mods: list[nn.Module], label: str, layer_of, neuron_of) -> nn.Module | None:
    """The module of one op of a chain (None: folded into the previous one)."""
    if op.kind == Kind.SYNAPSE:
        layer = layer_of(op)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise NirUnsupported(f"{label}: {op.describe()} is not a Linear or Conv2d layer")
        return copy.deepcopy(layer).cpu()
    if op.kind == Kind.NEURON:
        return neuron_of(op)
    if op.kind == Kind.AVGPOOL and isinstance(op.module, nn.AvgPool2d):
        return copy.deepcopy(op.module)
    if op.kind == Kind.FLATTEN:
        return nn.Flatten(1)
    if op.kind == Kind.NORM and mods and isinstance(mods[-1], (nn.Linear, nn.Conv2d)):
        # a BatchNorm the graph could not fold (time expansion between it and its layer): torch's
        # eval-mode fusion, the same as Graph.folded's
        from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

        last, bn = mods[-1].eval(), op.layer.eval()
        mods[-1] = (fuse_linear_bn_eval(last, bn) if isinstance(last, nn.Linear)  # type: ignore[arg-type]
                    else fuse_conv_bn_eval(last, bn))  # type: ignore[arg-type]
        return None
    if op.kind == Kind.MAXPOOL:
        raise NirUnsupported(f"{label}: {op.describe()}: NIR has no max pooling")
    raise NirUnsupported(f"{label}: {op.describe()} has no NIR node")


def spikingjelly_node(module: nn.Module, op: Op, label: str) -> nn.Module:
    """A single-step SpikingJelly node with the dynamics of ``module`` — SpikingJelly's own IF/LIF
    node, or a module wrapping one as ``.node`` — reset to 0 (see the module docstring)."""
    from spikingjelly.activation_based import neuron

    node = getattr(module, "node", module)  # surrogate's TimeLIF wraps a multistep LIFNode
    if isinstance(node, neuron.LIFNode):
        return neuron.LIFNode(tau=float(node.tau), decay_input=node.decay_input, v_threshold=float(node.v_threshold),
                              v_reset=0.0 if node.v_reset is None else float(node.v_reset), step_mode="s")
    if isinstance(node, neuron.IFNode):
        return neuron.IFNode(v_threshold=float(node.v_threshold),
                             v_reset=0.0 if node.v_reset is None else float(node.v_reset), step_mode="s")
    raise NirUnsupported(f"{label}: {op.describe()}: {type(node).__name__} has no NIR neuron")


def to_nir(seq: nn.Sequential, input_shape: tuple[int, ...], names: list[str] | None = None):
    """SpikingJelly's exporter on the single-step chain (``input_shape`` per sample); with
    ``names`` (one per module of ``seq``) the graph's nodes carry those names instead of the
    exporter's positions (``_0``, ``_1`` …), and its ends are ``input`` and ``output``."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    functional.reset_net(seq)
    graph = export_to_nir(seq, torch.zeros(1, *input_shape), dt=NIR_DT)
    functional.reset_net(seq)
    if names is not None:
        import nir

        mapping = {f"_{i}": n for i, n in enumerate(names)}
        mapping.update({k: "input" for k, v in graph.nodes.items() if isinstance(v, nir.Input)})
        mapping.update({k: "output" for k, v in graph.nodes.items() if isinstance(v, nir.Output)})
        graph = rename_nodes(graph, mapping)
    return graph


def rename_nodes(graph, mapping: dict[str, str]):
    """A NIR graph with its nodes (and the edges between them) renamed by ``mapping``."""
    import nir

    def new(name: str) -> str:
        return mapping.get(name, name)

    renamed = [new(k) for k in graph.nodes]
    clash = sorted({n for n in renamed if renamed.count(n) > 1})
    if clash:  # two nodes under one name would silently merge into one
        raise NirUnsupported(f"NIR export: two nodes would be named {clash[0]!r} (an op of that name and a node "
                             "NIR adds, such as its input or output)")
    nodes = {new(k): v for k, v in graph.nodes.items()}
    edges = [(new(a), new(b)) for a, b in graph.edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata or {}))


def save_network(ev: Any, meta: dict[str, Any], folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Write ``network.pt`` and, where the evaluable has a single-step form, ``network.nir`` into
    ``folder``. Returns the files written and notes (``nir_export``: exported with its caveats, or
    why not; ``network_pt``: only when it could not be written). Nothing raises: a failure costs
    the file, never the run."""
    notes: dict[str, str] = {}
    seq: nn.Sequential | None = None
    names: list[str] = []
    caveats: list[str] = []
    try:
        form = ev.single_step()
        seq, names, caveats = form.sequential, form.names, form.notes
    except NirUnsupported as exc:
        notes["nir_export"] = f"not exported: {exc}"
    except Exception as exc:  # noqa: BLE001 - a method's description of itself failed: its files, not its run
        notes["nir_export"] = f"not exported: describing the network failed ({type(exc).__name__}: {exc})"
    meta = dict(format=FORMAT, **meta, nir_notes=caveats, nir_unsupported=notes.get("nir_export"))
    files: list[Path] = []
    pt = folder / "network.pt"
    try:
        torch.save(dict(meta=meta, state_dict=ev.tensors(), sequential=seq), pt)
        files.append(pt)
    except Exception as exc:  # noqa: BLE001 - the run's results matter more than one artifact
        pt.unlink(missing_ok=True)
        log.warning("network.pt was not written: %s: %s", type(exc).__name__, exc)
        notes["network_pt"] = f"not written: {type(exc).__name__}: {exc}"
    if seq is None:
        return files, notes
    path = folder / "network.nir"
    try:
        import nir

        graph = to_nir(seq, tuple(meta["input_shape"]), names)
        graph.metadata = {"snn-harness": str(meta)}
        nir.write(str(path), graph)
    except Exception as exc:  # noqa: BLE001 - the run's results matter more than one artifact
        log.warning("the NIR export failed: %s: %s", type(exc).__name__, exc)
        path.unlink(missing_ok=True)
        notes["nir_export"] = f"not exported: SpikingJelly's NIR export failed ({type(exc).__name__}: {exc})"
        return files, notes
    files.append(path)
    notes["nir_export"] = "exported" + (f" ({'; '.join(caveats)})" if caveats else "")
    return files, notes
