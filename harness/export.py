"""Keeping the network a run evaluated: ``network.pt`` with every run, ``network.nir`` where NIR can
express it.

``network.pt`` (``torch.load(path, weights_only=False)``) holds what rebuilds the network: the
method, its parameters, the model, the data set and input shape, the network's tensors
(``state_dict``: the scaled layers of a converted network, the trained weights of a trained one)
and, for networks NIR can express, the same network as a single-step SpikingJelly
``nn.Sequential`` (``sequential``), runnable as it is: reset it with
``spikingjelly.activation_based.functional.reset_net`` and call it once per time step.

``network.nir`` is that Sequential exported by SpikingJelly's own ``nir_exchange.export_to_nir``
(the Neuromorphic Intermediate Representation, read by sinabs, snnTorch, Norse, Lava and the
toolchains of Loihi, SpiNNaker 2 and Xylo). NIR expresses chains of Linear/Conv2d/AvgPool2d/Flatten
layers and IF/LIF neurons; what it cannot say is refused with the reason (``NirUnsupported``):

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
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import HarnessError

log = logging.getLogger(__name__)

FORMAT = "snn-harness/network/1"
NIR_DT = 1e-4  # seconds per step in the NIR file (SpikingJelly's and most NIR readers' default)


class NirUnsupported(HarnessError):
    """The network has something NIR cannot express; the message says what."""

    exit_code = 2


def network_state(ev: Any) -> dict[str, torch.Tensor]:
    """The network's tensors: what a method's construction needs to rebuild it."""
    from .evaluation import AnnEvaluable, GraphSNN

    def cpu(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in module.state_dict().items()}

    if hasattr(ev, "net") and hasattr(ev.net, "layers") and hasattr(ev.net, "neurons"):  # rate, layer-scaling
        return cpu(nn.ModuleDict(ev.net.layers))
    if isinstance(ev, (GraphSNN, AnnEvaluable)):
        return cpu(ev.graph.gm)
    net: Any = getattr(ev, "net", None)
    if hasattr(net, "graph") and hasattr(net.graph, "gm"):  # ttfs: the folded layers and a threshold per neuron op
        return {**cpu(net.graph.gm), **{f"u_th.{n}": torch.tensor(u) for n, u in getattr(net, "u_th", {}).items()}}
    if isinstance(ev, nn.Module):
        return cpu(ev)
    raise NirUnsupported(f"{type(ev).__name__}: no tensors to save")


def single_step_sequential(ev: Any, method: str) -> tuple[nn.Sequential, list[str]]:
    """The evaluated network as a single-step SpikingJelly ``nn.Sequential`` (one call per time
    step), with notes on what NIR changes; ``NirUnsupported`` says what it cannot express."""
    from .evaluation import AnnEvaluable, GraphSNN
    from .graph import Kind

    chain = method.split("+")[-1]
    if chain == "ttfs":
        raise NirUnsupported("ttfs: its two-stage neuron (silent integration, then a ramp to a single spike) "
                             "has no NIR primitive")
    if isinstance(ev, (AnnEvaluable, nn.Module)) or chain == "ann":
        raise NirUnsupported(f"{method}: an ANN has no spiking neurons to export (NIR is for spiking networks)")
    notes: list[str] = []
    if hasattr(ev, "net") and hasattr(ev.net, "neurons"):  # rate, layer-scaling
        graph, rate = ev.net.graph, ev
        if ev.params.synapse:
            raise NirUnsupported(f"{method}: the synaptic filter (synapse={ev.params.synapse}) is not exported; "
                                 "convert with synapse unset")
        if ev.sim.out_neuron is not None:
            raise NirUnsupported(f"{method}: a spiking readout (decode={ev.params.decode}) is not exported")
        inner = {k: g for k, g in ev.net.gains.items() if k[0] != graph.output.name}
        if inner:
            raise NirUnsupported(f"{method}: gains between layers ({sorted(inner)}) have no place in a chain")
        notes.append("reset by subtraction in the harness; NIR's IF/LIF reset to v_reset = 0")
        if ev.params.v_init:
            notes.append(f"membranes start at 0 in NIR (the harness starts them at v_init = {ev.params.v_init})")
        notes.append("input: the image as a constant current every step; output: the readout current per step "
                     "(sum over steps, argmax: the harness's membrane decode)")
    elif isinstance(ev, GraphSNN):
        graph, rate = ev.graph.folded(), None  # BatchNorm folded into the layer before it (eval statistics)
    else:
        raise NirUnsupported(f"{method}: {type(ev).__name__} is not a network NIR export knows")

    from spikingjelly.activation_based import neuron

    mods: list[nn.Module] = []
    prev = graph.input.name
    for op in graph.ops.values():
        if op.kind == Kind.INPUT or op.kind == Kind.SHAPE:
            continue
        if op.kind == Kind.OUTPUT:
            break
        if op.kind in (Kind.ADD, Kind.CAT) or (op.inputs and op.inputs[0] != prev) or len(op.inputs) > 1:
            raise NirUnsupported(f"{method}: {op.describe()} joins branches; the NIR export writes chains of layers")
        prev = op.name
        if op.kind == Kind.ENCODER:
            if mods:
                raise NirUnsupported(f"{method}: {op.describe()} encodes in the middle of the network")
            notes.append(f"input: the spikes of the harness's encoder ({op.what}); encode inputs the same way")
            continue
        if op.kind in (Kind.EXPAND, Kind.IDENTITY):
            continue
        if op.kind == Kind.DECODE:
            notes.append(f"output: the output neurons' spikes per step, decoded by {op.what}")
            break
        if op.kind == Kind.SYNAPSE:
            layer = rate.net.layers[op.name] if rate is not None else op.layer
            if not isinstance(layer, (nn.Linear, nn.Conv2d)):
                raise NirUnsupported(f"{method}: {op.describe()} is not a Linear or Conv2d layer")
            mods.append(copy.deepcopy(layer).cpu())
        elif op.kind == Kind.NEURON:
            mods.append(_node(rate.net.neurons[op.name] if rate is not None else op.module, op, method))
        elif op.kind == Kind.AVGPOOL and isinstance(op.module, nn.AvgPool2d):
            mods.append(copy.deepcopy(op.module))
        elif op.kind == Kind.FLATTEN:
            mods.append(nn.Flatten(1))
        elif op.kind == Kind.NORM and mods and isinstance(mods[-1], (nn.Linear, nn.Conv2d)):
            # a BatchNorm the graph could not fold (time expansion between it and its layer): torch's
            # eval-mode fusion, the same as Graph.folded's
            from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

            last, bn = mods[-1].eval(), op.layer.eval()
            mods[-1] = (fuse_linear_bn_eval(last, bn) if isinstance(last, nn.Linear)  # type: ignore[arg-type]
                        else fuse_conv_bn_eval(last, bn))  # type: ignore[arg-type]
        elif op.kind == Kind.MAXPOOL:
            raise NirUnsupported(f"{method}: {op.describe()}: NIR has no max pooling")
        else:
            raise NirUnsupported(f"{method}: {op.describe()} has no NIR node")
    if not any(isinstance(m, neuron.BaseNode) for m in mods):
        raise NirUnsupported(f"{method}: no spiking neuron in the exported chain")
    return nn.Sequential(*mods).eval(), notes


def _node(module: nn.Module, op, method: str) -> nn.Module:
    """A single-step SpikingJelly node with the neuron's dynamics (reset to 0: see the module doc)."""
    from spikingjelly.activation_based import neuron

    from .simulate import NeuronPool

    if isinstance(module, NeuronPool):
        if module.tau is None:
            return neuron.IFNode(v_threshold=1.0, v_reset=0.0, step_mode="s")
        return neuron.LIFNode(tau=module.tau, decay_input=False, v_threshold=1.0, v_reset=0.0, step_mode="s")
    node = getattr(module, "node", module)  # surrogate's TimeLIF wraps a multistep LIFNode
    if isinstance(node, neuron.LIFNode):
        return neuron.LIFNode(tau=float(node.tau), decay_input=node.decay_input, v_threshold=float(node.v_threshold),
                              v_reset=0.0 if node.v_reset is None else float(node.v_reset), step_mode="s")
    if isinstance(node, neuron.IFNode):
        return neuron.IFNode(v_threshold=float(node.v_threshold),
                             v_reset=0.0 if node.v_reset is None else float(node.v_reset), step_mode="s")
    raise NirUnsupported(f"{method}: {op.describe()}: {type(node).__name__} has no NIR neuron")


def to_nir(seq: nn.Sequential, input_shape: tuple[int, ...]):
    """SpikingJelly's exporter on the single-step chain (``input_shape`` per sample)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    functional.reset_net(seq)
    graph = export_to_nir(seq, torch.zeros(1, *input_shape), dt=NIR_DT)
    functional.reset_net(seq)
    return graph


def save_network(ev: Any, ctx, method: str, params: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[list[Path], str]:
    """Write ``network.pt`` and, where NIR can express the network, ``network.nir`` into the run's
    artifacts. Returns the files and a one-line note on the NIR export (done, with its caveats, or
    why not)."""
    import nir

    from . import __version__

    seq: nn.Sequential | None = None
    notes: list[str] = []
    why_not: str | None = None
    try:
        seq, notes = single_step_sequential(ev, method)
    except NirUnsupported as exc:
        why_not = str(exc)
    meta = dict(format=FORMAT, harness_version=__version__, method=method, model=ctx.model_name,
                dataset=ctx.dataset.name, dataset_version=ctx.dataset.version, input_shape=list(input_shape),
                num_classes=ctx.dataset.num_classes, params=params, timesteps=int(getattr(ev, "timesteps", 1)),
                nir_notes=notes, nir_unsupported=why_not)
    pt = ctx.artifact("network.pt")
    torch.save(dict(meta=meta, state_dict=network_state(ev), sequential=seq), pt)
    files = [pt]
    if seq is None:
        return files, f"not exported: {why_not}"
    path = ctx.artifact("network.nir")
    try:
        graph = to_nir(seq, tuple(input_shape))
        graph.metadata = {"snn-harness": str(meta)}
        nir.write(str(path), graph)
    except Exception as exc:  # noqa: BLE001 - the run's results matter more than one artifact
        log.warning("the NIR export failed: %s: %s", type(exc).__name__, exc)
        path.unlink(missing_ok=True)
        return files, f"not exported: SpikingJelly's NIR export failed ({type(exc).__name__}: {exc})"
    files.append(path)
    return files, "exported" + (f" ({'; '.join(notes)})" if notes else "")
