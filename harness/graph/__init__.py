"""One network representation for every method: the user's ANN traced by ``torch.fx``.

:func:`trace` turns any ``nn.Module`` whose ``forward()`` traces symbolically into a
:class:`Graph`: the fx graph with every node classified (:class:`Kind`) and its per-sample output
shape. Every method and the meters read this graph, never ``nn.Sequential`` positions:

* **synapses**: ``Linear``/``Conv1d``/``Conv2d`` modules (with or without bias);
* **neurons**: ReLU as a module, ``F.relu``, ``torch.relu`` or ``x.relu()``;
* **stateless** ops: max/avg/adaptive-avg pooling, flatten (module, ``torch.flatten``,
  ``x.flatten``, ``x.view(x.size(0), -1)``), dropout and identity, ``+`` of two tensors,
  ``torch.cat`` along channels, multiplication by a constant;
* **norm**: ``BatchNorm1d``/``BatchNorm2d`` — :meth:`Graph.folded` folds each into the
  synaptic layer before it with ``torch.fx.experimental.optimization.fuse`` (the fusion PyTorch
  ships; not rewritten here), which is how the conversion methods see the network;
* other non-linearities (``ACTIVATION``) are metered in an ANN and converted by no method;
  anything else is kept as ``OTHER`` and named by whichever method refuses it.

Per-layer metric keys are the op names. A module call is named by the module's path
(``layer1.0.conv1``); a module called again gets ``_1``, ``_2`` … on its later calls
(``layer1.0.relu_1``). A function or tensor-method call is named by the module whose ``forward()``
makes it and fx's name of the call without its counter (``layer1.0.add``, numbered likewise on
later calls in the same module), or by fx's node name alone at the top level of the network's
``forward()`` (``flatten``, ``add_1``).

The package is split along its jobs:

* :mod:`.kinds` — the kinds and which module types, functions and tensor methods are which;
* :mod:`.tracing` — tracing, the :class:`Graph` and its :class:`Op` s, folding, fingerprints, and
  :class:`UnsupportedOps` (what a method cannot take, as data: the methods layer words it);
* :mod:`.events` — which ops depend on the input alone, and through which stateless ops the spikes
  of which neurons reach each synaptic layer (its *event path*), so that SynOps count every spike
  once per non-zero weight it reaches (:func:`event_counts`), whatever pooling, adds or
  concatenations lie between;
* :mod:`.rewrite` — installing a method's own modules on a traced network's nodes and edges.
"""

from .events import (
    EventPath,
    adaptive_window_sizes,
    apply_op,
    event_counts,
    event_path,
    spike_paths,
    sum_pool,
)
from .kinds import (
    ACTIVATION_TYPES,
    EXTRA_MODULE_KINDS,
    FOREIGN,
    STATELESS,
    SYNAPTIC_TYPES,
    Kind,
    register_module_kind,
    weight_of,
)
from .rewrite import free_target, insert_after, insert_after_edge, install, set_module
from .tracing import Graph, Op, TraceFailure, UnsupportedOps, build, symbolic_trace, trace, unsupported_ops

PASS = (Kind.FLATTEN, Kind.IDENTITY)  # ops that hand a value on unchanged (flatten, dropout, identity)

__all__ = [
    "ACTIVATION_TYPES", "EXTRA_MODULE_KINDS", "FOREIGN", "PASS", "STATELESS", "SYNAPTIC_TYPES", "EventPath", "Graph",
    "Kind", "Op", "TraceFailure", "UnsupportedOps", "adaptive_window_sizes", "apply_op", "build", "event_counts",
    "event_path", "free_target", "insert_after", "insert_after_edge", "install", "register_module_kind", "set_module",
    "spike_paths", "sum_pool", "symbolic_trace", "trace", "unsupported_ops", "weight_of",
]
