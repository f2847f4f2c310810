"""Method adapters: one module per method (a file, or a package for the larger ones); module name =
registry key = CLI value ('-' for '_').

Built-in methods are listed here as lazy entries, so ``harness ls methods`` imports nothing
heavy. A plug-in registers with ``@METHODS.register("name")`` on a :class:`harness.api.Method`
subclass. Methods compose with ``+``: ``prune+ttfs`` applies the ``prune`` transform to the ANN,
then converts it with ``ttfs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..graph import Graph, Op, UnsupportedOps

METHODS: Registry = Registry("method")
METHODS.lazy("ann", "harness.methods.ann:Ann",
             "the trained ANN, unconverted: the baseline row (MACs, energy)")
METHODS.lazy("rate", "harness.methods.rate:Rate",
             "rate-coded conversion: ReLU -> integrate-and-fire, NengoDL scale_firing_rates and synapse")
METHODS.lazy("layer-scaling", "harness.methods.layer_scaling:LayerScaling",
             "base firing-rate scale + a boost on one layer (or pair) at a time: accuracy per extra spike")
METHODS.lazy("qcfs", "harness.methods.qcfs:Qcfs",
             "ANN trained with quantisation-clip-floor-shift activations, then rate conversion at T = 4-16 (Bu et al.)")
METHODS.lazy("prune", "harness.methods.prune:Prune",
             "magnitude pruning, Zhu & Gupta polynomial schedule; composes: prune+ttfs, prune+rate")
METHODS.lazy("surrogate", "harness.methods.surrogate:Surrogate",
             "direct training of multistep LIF networks, surrogate gradient with width γ and height β (escudero-*)")
METHODS.lazy("sharpen", "harness.methods.sharpen:Sharpen",
             "Whetstone: bounded activations sharpened into step functions, one binary time step (sandia-*)")
METHODS.lazy("ttfs", "harness.methods.ttfs:TTFS",
             "time-to-first-spike single-spike conversion, two-stage neuron (lopez-randulfe-*)")
METHODS.entry_points("snn_harness.methods")


def resolve(spec: str) -> list:
    """``"prune+ttfs"`` → the method classes in order; all but the last must be transforms."""
    from ..api import Method
    from ..errors import ConfigError
    from ..registry import RegistryError

    names = [p.strip() for p in spec.split("+")]
    for n in names:
        METHODS.check(n)
    classes = [METHODS.get(n) for n in names]
    for n, cls in zip(names, classes):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise RegistryError(f"method {n!r} ({METHODS.origin(n)}) is not a harness.api.Method subclass")
        if cls.name != n:
            raise RegistryError(f"method {n!r} ({METHODS.origin(n)}) is registered under another name than its "
                                f"class's name {cls.name!r}")
    for cls in classes[:-1]:
        if not cls.is_transform:
            raise ConfigError(f"method {cls.name!r} cannot precede another method in {spec!r}: "
                              "only transforms of the ANN (e.g. prune) compose with '+'")
    if classes[-1].is_transform and len(classes) > 1:
        raise ConfigError(f"{spec!r}: a transform must be followed by a method, not end the chain")
    return classes


def accepting_methods(graph: "Graph", op: "Op", exclude: str) -> list[str]:
    """Built-in and plug-in methods that would accept ``op`` in ``graph`` (for error messages).
    Transforms and the ANN itself take any network and are not named; a plug-in that cannot be
    loaded is skipped (its own use names it)."""
    import logging

    from ..errors import ConfigError

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
            continue
        try:
            if not any(p.name == op.name for p, _ in checker(graph)):
                out.append(name)
        except ConfigError:
            continue
    return out


def with_alternatives(exc: "UnsupportedOps", graph: "Graph") -> "UnsupportedOps":
    """``exc`` (a method refusing ops of ``graph``) worded with the methods that would take the op."""
    from ..graph import UnsupportedOps

    return UnsupportedOps(exc.method, exc.problems, accepting_methods(graph, exc.op, exclude=exc.method))
