"""Events: how the spikes of upstream neurons reach a synaptic layer through stateless ops, and
how many arrive at each of its inputs (see :mod:`harness.graph`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from ..errors import ConfigError
from .kinds import STATELESS, Kind, is_tensor

if TYPE_CHECKING:  # pragma: no cover
    from .tracing import Graph, Op


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


def event_path(graph: "Graph", synapse: str, input_spikes: bool = False,
               stops: frozenset[str] = frozenset()) -> EventPath:
    """How the spikes of upstream neurons reach ``synapse``'s input (see :class:`EventPath`); with
    ``input_spikes`` the network's input is itself a spike source (spike-encoded input); ops in
    ``stops`` are sources too (a gated max pool: the simulator knows which spikes it passed).
    Raises ``ConfigError`` if an op that does not carry spikes lies between."""
    op = graph[synapse]
    source_kinds = (Kind.NEURON, Kind.ENCODER, Kind.INPUT) if input_spikes else (Kind.NEURON, Kind.ENCODER)
    sources: list[str] = []
    path: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        o = graph[name]
        if o.kind in source_kinds or name in stops:
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
    order = {n: k for k, n in enumerate(graph.ops)}
    path.sort(key=order.__getitem__)
    paths = {s: _count_paths(graph, s, op.inputs[0]) for s in sources}
    per_step = any(graph[p].kind == Kind.MAXPOOL for p in path)
    return EventPath(synapse, tuple(sorted(sources, key=order.__getitem__)), tuple(path), per_step, paths)


def _count_paths(graph: "Graph", src: str, dst: str) -> int:
    """Distinct paths from ``src`` to ``dst`` (a spike travels each of them)."""
    if src == dst:
        return 1
    return sum(_count_paths(graph, src, i) for i in graph[dst].inputs if i == src or src in graph.ancestors(i))


def spike_paths(graph: "Graph", static: set[str]) -> tuple[dict[str, EventPath], list[tuple["Op", str]]]:
    """The event path of every synaptic op that is not computed from the input alone, and the
    problems: ops between spikes and a layer that do not carry spikes, or a layer fed by another
    layer's current without a neuron between."""
    paths: dict[str, EventPath] = {}
    problems: list[tuple[Op, str]] = []
    for op in graph.synapses:
        if op.inputs[0] in static:
            continue
        try:
            path = event_path(graph, op.name)
        except ConfigError as exc:
            problems.append((op, str(exc)))
            continue
        if not path.sources:
            problems.append((op, "fed by another layer's current without a neuron between"))
            continue
        paths[op.name] = path
    return paths, problems


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
    tensor_inputs = [a for a in node.all_input_nodes if is_tensor(a)]
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
