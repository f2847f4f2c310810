"""One network representation for every method: the user's ANN traced by ``torch.fx``.

:func:`trace` turns any ``nn.Module`` whose ``forward()`` traces symbolically into a
:class:`Graph`: the fx graph with every node classified (:class:`Kind`) and its per-sample output
shape. Every method and the meters read this graph, never ``nn.Sequential`` positions:

* **synapses**: ``Linear``/``Conv1d``/``Conv2d`` modules (with or without bias);
* **neurons**: ReLU as a module, ``F.relu``, ``torch.relu`` or ``x.relu()``;
* **stateless** nodes: max/avg/adaptive-avg pooling, flatten (module, ``torch.flatten``,
  ``x.flatten``, ``x.view(x.size(0), -1)``), dropout and identity, ``+`` of two tensors,
  ``torch.cat``;
* **norm**: ``BatchNorm1d``/``BatchNorm2d`` — :meth:`Graph.folded` folds each into the
  synaptic layer before it with ``torch.fx.experimental.optimization.fuse`` (the fusion PyTorch
  ships; not rewritten here), which is how the conversion methods see the network;
* anything else is kept as ``OTHER`` and named by whichever method refuses it.

Per-layer metric keys are the op names: the module path for module calls (``layer1.0.conv1``;
a module called twice gets ``_1``, ``_2`` … on its later calls) and the fx node name for function
calls (``add``, ``relu_3``).

The graph also answers the questions the simulators and meters share: which ops depend on the
input alone (*static*: computed once per inference), and, for every synaptic op, through which
stateless ops the spikes of which neurons reach it (its *event path*), so that SynOps count every
spike once per non-zero weight it reaches (``event_counts``), whatever pooling, adds or
concatenations lie between.
"""

from __future__ import annotations

import copy
import hashlib
import json
import linecache
import logging
import math
import operator
import re
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


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


@dataclass
class Op:
    """One node of the traced network."""

    name: str  # metric key: module path (first call) or fx node name
    kind: Kind
    node: fx.Node
    inputs: tuple[str, ...]  # names of the tensor ops feeding this one, in argument order
    shape: tuple[int, ...]  # per-sample output shape (() for non-tensors)
    what: str  # what the op is, for messages: "Conv2d", "F.relu", "operator.add" ...
    module: nn.Module | None = None

    @property
    def size(self) -> int:
        """Elements of the output per sample (neurons, for a neuron op)."""
        return math.prod(self.shape) if self.shape else 0

    def describe(self) -> str:
        return f"node `{self.name}` ({self.what})"

    @property
    def layer(self) -> nn.Module:
        """The module a module call runs (synaptic layers, pooling modules ...)."""
        if self.module is None:
            raise TypeError(f"{self.describe()} calls no module")
        return self.module


def weight_of(module: nn.Module) -> torch.Tensor:
    """A synaptic layer's weight tensor."""
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return w


def _what(node: fx.Node, module: nn.Module | None) -> str:
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


def _kind(node: fx.Node, module: nn.Module | None) -> Kind:
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
            return Kind.FLATTEN  # checked against the shapes in _check_flatten
        return _METHOD_KINDS.get(str(node.target), Kind.OTHER)
    return Kind.OTHER


class TraceFailure(ConfigError):
    """The network's forward() could not be traced by torch.fx."""


def _user_frame(tb) -> str:
    """The innermost traceback frame outside torch: where the user's forward() failed."""
    frames = [f for f in traceback.extract_tb(tb) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or linecache.getline(f.filename, f.lineno or 0)).strip()
    return f" at {f.filename}:{f.lineno} in {f.name}(): `{code}`"


class _Tracer(fx.Tracer):
    """fx's tracer, with the module types registered in :data:`EXTRA_MODULE_KINDS` (spiking
    neurons, encoders) kept as leaves rather than traced through."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, tuple(EXTRA_MODULE_KINDS)) or super().is_leaf_module(m, module_qualified_name)


def symbolic_trace(model: nn.Module, name: str = "the model") -> fx.GraphModule:
    """Symbolic tracing (``torch.fx``) with an error that names where the forward() stopped tracing."""
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - fx raises many types; all mean "does not trace"
        where = _user_frame(sys.exc_info()[2])
        raise TraceFailure(
            f"{name} ({type(model).__name__}) cannot be traced by torch.fx{where}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. The harness needs a forward() without "
            "branches on tensor values (see torch.fx's limitations)") from None


class Graph:
    """A traced network: ``gm`` (an fx ``GraphModule``) and its classified :class:`Op` s in
    topological order. Build with :func:`trace`."""

    def __init__(self, gm: fx.GraphModule, input_shape: tuple[int, ...], ops: list[Op]):
        self.gm = gm
        self.input_shape = tuple(input_shape)
        self.ops: dict[str, Op] = {op.name: op for op in ops}
        self.by_node: dict[fx.Node, Op] = {op.node: op for op in ops}
        self._consumers: dict[str, list[str]] = {op.name: [] for op in ops}
        for op in ops:
            for i in op.inputs:
                self._consumers[i].append(op.name)

    # ---- views -----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops.values())

    def __getitem__(self, name: str) -> Op:
        return self.ops[name]

    def of(self, *kinds: Kind) -> list[Op]:
        return [op for op in self.ops.values() if op.kind in kinds]

    @property
    def synapses(self) -> list[Op]:
        return self.of(Kind.SYNAPSE)

    @property
    def neurons(self) -> list[Op]:
        return self.of(Kind.NEURON)

    @property
    def input(self) -> Op:
        return self.of(Kind.INPUT)[0]

    @property
    def output(self) -> Op:
        return self.of(Kind.OUTPUT)[0]

    def consumers(self, name: str) -> list[Op]:
        return [self.ops[c] for c in self._consumers[name]]

    def inputs_of(self, op: Op) -> list[Op]:
        return [self.ops[i] for i in op.inputs]

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = list(self.ops[name].inputs)
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(self.ops[n].inputs)
        return seen

    # ---- structure -------------------------------------------------------------------------
    def static_ops(self) -> set[str]:
        """Ops whose value depends on the input alone (no neuron or encoder upstream): in a
        time-stepped network they are computed once per inference."""
        static: set[str] = set()
        for op in self.ops.values():
            if op.kind == Kind.INPUT:
                static.add(op.name)
            elif op.kind in (Kind.NEURON, Kind.ENCODER, Kind.EXPAND):
                continue
            elif op.inputs and all(i in static for i in op.inputs):
                static.add(op.name)
        return static

    def spike_sources(self) -> list[Op]:
        """Ops whose outputs are spikes: neurons and input encoders."""
        return self.of(Kind.NEURON, Kind.ENCODER)

    def event_path(self, synapse: str, input_spikes: bool = False) -> "EventPath":
        """How the spikes of upstream neurons reach ``synapse``'s input (see :class:`EventPath`);
        with ``input_spikes`` the network's input is itself a spike source (spike-encoded input)."""
        op = self.ops[synapse]
        source_kinds = (Kind.NEURON, Kind.ENCODER, Kind.INPUT) if input_spikes else (Kind.NEURON, Kind.ENCODER)
        sources: list[str] = []
        path: list[str] = []
        seen: set[str] = set()

        def walk(name: str) -> None:
            if name in seen:
                return
            seen.add(name)
            o = self.ops[name]
            if o.kind in source_kinds:
                sources.append(name)
                return
            if o.kind not in STATELESS:
                raise ConfigError(f"{o.describe()} lies between spikes and the synaptic layer `{synapse}`; "
                                  "only pooling, flatten, dropout, add, cat and constant scaling may")
            for i in o.inputs:
                walk(i)
            path.append(name)

        for i in op.inputs[:1]:
            walk(i)
        order = {n: k for k, n in enumerate(self.ops)}
        path.sort(key=order.__getitem__)
        paths = {s: self._count_paths(s, op.inputs[0]) for s in sources}
        per_step = any(self.ops[p].kind == Kind.MAXPOOL for p in path)
        return EventPath(synapse, tuple(sorted(sources, key=order.__getitem__)), tuple(path), per_step, paths)

    def _count_paths(self, src: str, dst: str) -> int:
        if src == dst:
            return 1
        return sum(self._count_paths(src, i) for i in self.ops[dst].inputs
                   if i == src or src in self.ancestors(i))

    def depth(self) -> int:
        """The largest number of neuron ops on any path from the input to the output."""
        d: dict[str, int] = {}
        for op in self.ops.values():
            base = max((d[i] for i in op.inputs), default=0)
            d[op.name] = base + (1 if op.kind == Kind.NEURON else 0)
        return d[self.output.name]

    # ---- normalisation -----------------------------------------------------------------------
    def folded(self) -> "Graph":
        """A copy with every BatchNorm folded into the Conv/Linear before it (eval statistics),
        using ``torch.fx.experimental.optimization.fuse``. A BatchNorm that cannot be folded (not
        directly after a synaptic layer whose output it alone uses) stays as a ``NORM`` op."""
        from torch.fx.experimental.optimization import fuse

        gm = copy.deepcopy(self.gm).eval()
        if self.of(Kind.NORM):
            fused = fuse(gm, inplace=True, no_trace=True)
            assert isinstance(fused, fx.GraphModule)
            gm = fused
        return build(gm, self.input_shape)

    def fingerprint(self) -> str:
        """A digest of the architecture: op kinds, module types and hyper-parameters, parameter
        shapes, function arguments and the wiring — not the weights' values."""
        index = {name: k for k, name in enumerate(self.ops)}
        rows = []
        for op in self.ops.values():
            args = fx.node.map_arg((op.node.args, op.node.kwargs),
                                   lambda n: f"@{index.get(self.by_node[n].name, -1)}" if n in self.by_node else "@?")
            params = ([[k, list(p.shape)] for k, p in op.module.named_parameters(recurse=True)]
                      if op.module is not None else [])
            buffers = ([[k, list(b.shape)] for k, b in op.module.named_buffers(recurse=True)]
                       if op.module is not None else [])
            rows.append([op.kind.value, op.what, repr(op.module) if op.module is not None else "",
                         repr(args), params, buffers, list(op.shape)])
        blob = json.dumps([list(self.input_shape), rows], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ---- running -----------------------------------------------------------------------------
    def run(self, x: torch.Tensor, on_op: Callable[[Op, tuple, Any], None] | None = None) -> torch.Tensor:
        """Run the network on ``x``; ``on_op(op, inputs, output)`` sees every tensor op."""
        if on_op is None:
            return self.gm(x)
        return _Recorder(self, on_op).run(x)

    def check(self, method: str, problems: list[tuple[Op, str]]) -> None:
        """Raise a :class:`ConfigError` naming the first unsupported op and the methods that accept it."""
        if not problems:
            return
        op, why = problems[0]
        others = accepting_methods(self, op, exclude=method)
        tail = (f"; {', '.join(others[:-1]) + ' and ' + others[-1] if len(others) > 1 else others[0]} "
                f"accept{'s' if len(others) == 1 else ''} it") if others else ""
        more = f" ({len(problems) - 1} more such node{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ConfigError(f"{op.describe()} cannot be converted by {method}{': ' + why if why else ''}{tail}{more}")


FOREIGN = (Kind.OTHER, Kind.ENCODER, Kind.EXPAND, Kind.DECODE)


def unsupported_ops(graph: Graph, reasons: dict[Kind, str], foreign: str) -> list[tuple[Op, str]]:
    """Ops whose kind a method cannot take: those in ``reasons`` (with the reason) and ops the
    graph does not classify or that belong to another method's rebuilt network (``foreign``)."""
    out: list[tuple[Op, str]] = []
    for op in graph:
        if op.kind in reasons:
            out.append((op, reasons[op.kind]))
        elif op.kind in FOREIGN:
            out.append((op, foreign))
    return out


def spike_paths(graph: Graph, static: set[str]) -> tuple[dict[str, EventPath], list[tuple[Op, str]]]:
    """The event path of every synaptic op that is not computed from the input alone, and the
    problems: ops between spikes and a layer that do not carry spikes, or a layer fed by another
    layer's current without a neuron between."""
    paths: dict[str, EventPath] = {}
    problems: list[tuple[Op, str]] = []
    for op in graph.synapses:
        if op.inputs[0] in static:
            continue
        try:
            path = graph.event_path(op.name)
        except ConfigError as exc:
            problems.append((op, str(exc)))
            continue
        if not path.sources:
            problems.append((op, "fed by another layer's current without a neuron between"))
            continue
        paths[op.name] = path
    return paths, problems


def accepting_methods(graph: Graph, op: Op, exclude: str) -> list[str]:
    """Built-in and plug-in methods that would accept ``op`` in ``graph`` (for error messages)."""
    from .methods import METHODS

    out = []
    for name in METHODS.names():
        if name == exclude:
            continue
        try:
            cls = METHODS.get(name)
        except Exception as exc:  # noqa: BLE001 - a broken plug-in must not hide the real error
            logging.getLogger(__name__).warning("method %s could not be loaded: %s", name, exc)
            continue
        checker = getattr(cls, "graph_problems", None)
        if checker is None or getattr(cls, "is_transform", False) or not getattr(cls, "spiking", True):
            continue  # transforms and the ANN itself take any network
        try:
            if not any(p.name == op.name for p, _ in checker(graph)):
                out.append(name)
        except ConfigError:
            continue
    return out


class _Recorder(fx.Interpreter):
    def __init__(self, graph: Graph, on_op):
        super().__init__(graph.gm)
        self.g, self.on_op = graph, on_op

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        op = self.g.by_node.get(n)
        if op is not None and isinstance(out, torch.Tensor) and op.kind not in (Kind.INPUT, Kind.OUTPUT):
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            self.on_op(op, args, out)
        return out


# -------------------------------------------------------------------------------------------------
# tracing


def trace(model: nn.Module, input_shape: tuple[int, ...], name: str | None = None) -> Graph:
    """Trace ``model`` (not modified) for inputs of per-sample shape ``input_shape``."""
    label = name or type(model).__name__
    gm = model if isinstance(model, fx.GraphModule) else symbolic_trace(copy.deepcopy(model), label)
    return build(gm, input_shape)


def build(gm: fx.GraphModule, input_shape: tuple[int, ...]) -> Graph:
    """Classify the nodes of ``gm`` and record their shapes."""
    from torch.fx.passes.shape_prop import ShapeProp

    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ConfigError(f"the network's forward() takes {len(placeholders)} inputs; the harness feeds one tensor")
    was_training = gm.training
    gm.eval()
    try:  # shapes from a dry run that leaves the random state alone (encoders may draw)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            p = next(gm.parameters(), None)
            ShapeProp(gm).propagate(torch.zeros(2, *input_shape, dtype=p.dtype if p is not None and p.is_floating_point()
                                                else torch.float32, device=p.device if p is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 - any failure means the shapes do not fit
        raise ConfigError(f"the network does not run on inputs of shape {tuple(input_shape)}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        gm.train(was_training)
    modules = dict(gm.named_modules())
    ops: list[Op] = []
    names: dict[fx.Node, str] = {}
    used: set[str] = set()
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if node.op == "get_attr":
            raise ConfigError(f"node `{node.name}` reads the tensor `{node.target}` directly; the harness needs "
                              "weights inside Linear/Conv modules (functional F.linear / F.conv2d are not supported)")
        if node.op == "call_module":
            base = str(node.target)
        else:
            stack = node.meta.get("nn_module_stack") or {}
            owner = list(stack.values())[-1][0] if stack else ""
            stem = re.sub(r"_\d+$", "", node.name)
            base = f"{owner}.{stem}" if owner and node.op != "placeholder" else node.name
        k = calls.get(base, 0)
        name = base if k == 0 else f"{base}_{k}"
        while name in used:
            k += 1
            name = f"{base}_{k}"
        calls[base] = k + 1
        used.add(name)
        names[node] = name
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape[1:]) if hasattr(meta, "shape") else ()
        kind = _kind(node, module)
        if kind == Kind.SHAPE or (not hasattr(meta, "shape") and node.op != "output"):
            kind = Kind.SHAPE
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise ConfigError("the network must return one tensor of logits, not a tuple or dict")
            shape = tuple(node.args[0].meta["tensor_meta"].shape[1:])
        inputs: list[str] = []
        for a in node.all_input_nodes:
            if a in names and _is_tensor(a) and names[a] not in inputs:
                inputs.append(names[a])
        if kind == Kind.OUTPUT:
            inputs = [names[node.args[0]]]
        op = Op(name, kind, node, tuple(inputs), shape, _what(node, module), module)
        _refine(op)
        ops.append(op)
    return Graph(gm, tuple(input_shape), ops)


def _is_tensor(node: fx.Node) -> bool:
    return hasattr(node.meta.get("tensor_meta"), "shape")


def _refine(op: Op) -> None:
    """Checks a kind by its arguments: a view/reshape must flatten from dim 1; add must join two
    tensors of one shape; mul must scale by a constant."""
    node = op.node
    if op.kind == Kind.FLATTEN:
        src = node.all_input_nodes[0] if node.all_input_nodes else None
        src_shape = tuple(src.meta["tensor_meta"].shape[1:]) if src is not None and _is_tensor(src) else None
        if src_shape is None or op.shape != (math.prod(src_shape),):
            op.kind = Kind.OTHER
            op.what += " (not a flatten from dim 1)"
        elif node.op == "call_function" and node.target is torch.flatten:
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                op.kind, op.what = Kind.OTHER, op.what + " (not from dim 1)"
    elif op.kind == Kind.ADD:
        tensors = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if len(tensors) != 2 or len(op.inputs) not in (1, 2) or node.kwargs.get("alpha", 1) != 1:
            op.kind, op.what = Kind.OTHER, op.what + " (not a sum of two tensors)"
        elif any(tuple(t.meta["tensor_meta"].shape[1:]) != op.shape for t in tensors):
            op.kind, op.what = Kind.OTHER, op.what + " (broadcasting add)"
    elif op.kind == Kind.SCALE:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) != 1:
            op.kind, op.what = Kind.OTHER, op.what + " (product of two tensors)"
    elif op.kind == Kind.CAT:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        if dim != 1:
            op.kind, op.what = Kind.OTHER, op.what + f" (along dim {dim}; only channels, dim 1)"


# -------------------------------------------------------------------------------------------------
# events: how spikes reach a synaptic layer


@dataclass(frozen=True)
class EventPath:
    """The stateless ops between spike ``sources`` and the input of ``synapse``, in order.

    ``per_step``: a max pooling lies on the path, so events must be propagated one time step at a
    time (max pooling passes one spike per window and step); otherwise every op of the path is
    linear in the counts and the path can act on spike counts summed over time.
    ``paths``: how many distinct paths lead from each source to the synapse (a spike travels each).
    """

    synapse: str
    sources: tuple[str, ...]
    ops: tuple[str, ...]
    per_step: bool
    paths: dict[str, int] = field(default_factory=dict)


def event_counts(graph: Graph, path: EventPath, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """Events arriving at each input element of ``path.synapse``, from the sources' spike tensors
    (or spike counts) in ``values``: every spike counts once at every position it reaches —
    average pooling becomes sum pooling, add sums, cat concatenates, constant scaling is ignored
    (it changes what a spike carries, not how many there are), max pooling passes one per window.
    """
    env = dict(values)
    for name in path.ops:
        op = graph.ops[name]
        args = [env[i] for i in op.inputs]
        env[name] = _count_op(op, args, env)
    src = graph.ops[path.synapse].inputs[0]
    return env[src]


def apply_op(op: Op, args: list[torch.Tensor]) -> torch.Tensor:
    """Apply a stateless op to tensors standing in for its inputs (in ``op.inputs`` order), with
    the node's own non-tensor arguments. Shape helpers (``x.size(0)``) are evaluated on the new
    tensors, so the op works on any leading (batch × time) dimension."""
    node = op.node
    by_node = {}
    it = iter(args)
    tensor_inputs = [a for a in node.all_input_nodes if _is_tensor(a)]
    seen: dict[fx.Node, torch.Tensor] = {}
    for a in tensor_inputs:
        if a not in seen:
            seen[a] = next(it)
    by_node.update(seen)

    def value(n: fx.Node) -> Any:
        if n in by_node:
            return by_node[n]
        # a shape helper such as x.size(0) or getitem on it: evaluate on the substituted tensor
        return _call(n, fx.node.map_arg(n.args, value), fx.node.map_arg(n.kwargs, value), op)

    return _call(node, fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value), op)


def _call(node: fx.Node, args: Any, kwargs: Any, op: Op) -> Any:
    """Evaluate ``node`` on already substituted arguments."""
    if node.op == "call_module":
        if node is not op.node or op.module is None:
            raise ConfigError(f"node `{node.name}` (a module call) cannot be evaluated inside {op.describe()}")
        return op.module(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    raise ConfigError(f"node `{node.name}` ({node.op}) cannot be evaluated inside {op.describe()}")


def _count_op(op: Op, args: list[torch.Tensor], env: dict) -> torch.Tensor:
    if op.kind == Kind.SCALE:
        return args[0]
    if op.kind == Kind.AVGPOOL:
        return sum_pool(op, args[0])
    if op.kind == Kind.ADAPTIVE_AVGPOOL:
        out = apply_op(op, args)
        return out * adaptive_window_sizes(args[0].shape[-2:], out.shape[-2:]).to(out)
    if op.kind == Kind.ADD:
        return args[0] + args[1] if len(args) == 2 else args[0] + args[0]
    return apply_op(op, args)


def _pool_arguments(op: Op) -> dict[str, Any]:
    if op.node.op == "call_module":
        m = op.module
        return dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,  # type: ignore[union-attr]
                    ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)  # type: ignore[union-attr]
    from torch.fx.operator_schemas import normalize_function

    norm = normalize_function(op.node.target, op.node.args, op.node.kwargs,  # type: ignore[arg-type]
                              normalize_to_only_use_kwargs=True)
    kw = dict(norm.kwargs) if norm is not None else {}
    kw.pop("input", None)
    kw.pop("divisor_override", None)
    return kw


def sum_pool(op: Op, x: torch.Tensor) -> torch.Tensor:
    """The average pooling of ``op`` as a sum (every input element counts once, padding none)."""
    kw = _pool_arguments(op)
    if kw.get("stride") is None:
        kw.pop("stride", None)
    return F.avg_pool2d(x, divisor_override=1, **kw)


def adaptive_window_sizes(in_hw, out_hw) -> torch.Tensor:
    """Elements per output cell of adaptive average pooling (PyTorch's window rule)."""
    def sizes(n_in: int, n_out: int) -> torch.Tensor:
        return torch.tensor([math.ceil((i + 1) * n_in / n_out) - (i * n_in) // n_out for i in range(n_out)],
                            dtype=torch.float64)
    h, w = sizes(int(in_hw[0]), int(out_hw[0])), sizes(int(in_hw[1]), int(out_hw[1]))
    return h[:, None] * w[None, :]


# -------------------------------------------------------------------------------------------------
# rewriting a traced network (the methods that rebuild it with their own neurons)


def set_module(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> None:
    """Make ``node`` a call of ``module``, installed at ``target`` (created or replaced), with the
    node's own arguments (a function call such as ``F.relu(x)`` becomes a module call)."""
    install(gm, target, module)
    if node.op != "call_module" or node.target != target:
        args = node.args[:1]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, args)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)


def insert_after(gm: fx.GraphModule, node: fx.Node, target: str, module: nn.Module) -> fx.Node:
    """Insert a call of ``module`` (installed at ``target``) on ``node``'s output, before its users."""
    install(gm, target, module)
    users = list(node.users)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(target, (node,))
    for u in users:
        u.replace_input_with(node, new)
    return new


def install(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    """Set the submodule at dotted path ``target``, creating empty parent modules as needed."""
    owner: nn.Module = gm
    *parents, attr = target.split(".")
    for p in parents:
        if not hasattr(owner, p):
            owner.add_module(p, nn.Module())
        owner = getattr(owner, p)
    setattr(owner, attr, module)


def free_target(gm: fx.GraphModule, wanted: str) -> str:
    """``wanted`` if no submodule or attribute has that path yet, else ``wanted_1``, ``wanted_2`` ..."""
    def taken(path: str) -> bool:
        parent, _, attr = path.rpartition(".")
        try:
            owner = gm.get_submodule(parent) if parent else gm
        except AttributeError:
            return False
        return hasattr(owner, attr)
    name, k = wanted, 0
    while taken(name):
        k += 1
        name = f"{wanted}_{k}"
    return name
