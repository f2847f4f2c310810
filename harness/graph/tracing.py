"""Tracing: the user's ANN as a :class:`Graph` of classified ops (see :mod:`harness.graph`)."""

from __future__ import annotations

import copy
import hashlib
import json
import linecache
import math
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import ConfigError
from .kinds import EXTRA_MODULE_KINDS, FOREIGN, Kind, classify, describe_target, is_tensor


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

    def feed(self, name: str, through: Iterable[Kind]) -> Op:
        """The op whose value reaches ``name`` through ops of the kinds ``through`` only (each
        followed to its first input): ``graph.feed(graph.output.name, PASS)`` is the readout layer
        of a network that ends in a layer then a flatten or dropout."""
        kinds = set(through)
        op = self.ops[name]
        if op.kind == Kind.OUTPUT:
            op = self.ops[op.inputs[0]]
        while op.kind in kinds:
            op = self.ops[op.inputs[0]]
        return op

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
    def run(self, x: torch.Tensor, on_op: Callable[[Op, tuple, Any], Any] | None = None,
            rewrite: bool = False) -> torch.Tensor:
        """Run the network on ``x``; ``on_op(op, inputs, output)`` sees every tensor op (with
        ``rewrite``, a tensor it returns replaces the op's output downstream)."""
        if on_op is None:
            return self.gm(x)
        return _Recorder(self, on_op, rewrite).run(x)

    def check(self, method: str, problems: list[tuple[Op, str]]) -> None:
        """Raise :class:`UnsupportedOps` if ``method`` found ``problems`` in this graph."""
        if problems:
            raise UnsupportedOps(method, problems)


class UnsupportedOps(ConfigError):
    """Ops of a traced network a method cannot take, each with the reason: the message names the
    first; :mod:`harness.methods` adds which other methods would take it (the graph does not know
    the methods)."""

    def __init__(self, method: str, problems: list[tuple[Op, str]], alternatives: Iterable[str] = ()):
        self.method, self.problems, self.alternatives = method, list(problems), list(alternatives)
        op, why = self.problems[0]
        others = self.alternatives
        tail = (f"; {', '.join(others[:-1]) + ' and ' + others[-1] if len(others) > 1 else others[0]} "
                f"accept{'s' if len(others) == 1 else ''} it") if others else ""
        n = len(self.problems) - 1
        more = f" ({n} more such node{'s' if n > 1 else ''})" if n else ""
        super().__init__(f"{op.describe()} cannot be converted by {method}{': ' + why if why else ''}{tail}{more}")

    @property
    def op(self) -> Op:
        return self.problems[0][0]


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


class _Recorder(fx.Interpreter):
    def __init__(self, graph: Graph, on_op, rewrite: bool = False):
        super().__init__(graph.gm)
        self.g, self.on_op, self.rewrite = graph, on_op, rewrite

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        op = self.g.by_node.get(n)
        if op is not None and isinstance(out, torch.Tensor) and op.kind not in (Kind.INPUT, Kind.OUTPUT):
            args = fx.node.map_arg(n.args, lambda a: self.env[a])
            new = self.on_op(op, args, out)
            if self.rewrite and isinstance(new, torch.Tensor):
                return new
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
        kind = classify(node, module)
        if kind == Kind.SHAPE or (not hasattr(meta, "shape") and node.op != "output"):
            kind = Kind.SHAPE
        if node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise ConfigError("the network must return one tensor of logits, not a tuple or dict")
            shape = tuple(node.args[0].meta["tensor_meta"].shape[1:])
        inputs: list[str] = []
        for a in node.all_input_nodes:
            if a in names and is_tensor(a) and names[a] not in inputs:
                inputs.append(names[a])
        if kind == Kind.OUTPUT:
            inputs = [names[node.args[0]]]
        op = Op(name, kind, node, tuple(inputs), shape, describe_target(node, module), module)
        _refine(op)
        ops.append(op)
    return Graph(gm, tuple(input_shape), ops)


def _refine(op: Op) -> None:
    """Checks a kind by its arguments: a view/reshape must flatten from dim 1; add must join two
    tensors of one shape; mul must scale by a constant."""
    node = op.node
    if op.kind == Kind.FLATTEN:
        src = node.all_input_nodes[0] if node.all_input_nodes else None
        src_shape = tuple(src.meta["tensor_meta"].shape[1:]) if src is not None and is_tensor(src) else None
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

