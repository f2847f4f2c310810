"""The harness owns evaluation: one loop every method's network goes through, and the invariants
every correct evaluation obeys, checked on every run.

A method hands the harness an :class:`Evaluable` — a network plus the traced :class:`~harness.graph.Graph`
it runs — and the harness runs the test split through it, meters it (the evaluable records what it
computes into the harness's :class:`~harness.meters.Meters`) and then checks, against the graph
and not against anything the method says:

* every neuron op of the graph was metered, with exactly as many neurons as the graph has;
* no neuron fired more often than the evaluable's bound (``T`` steps, one spike for TTFS);
* every synaptic op was metered, with the graph's weights (connection sparsity included);
* the SynOps of every spike-fed layer stay below its capacity (every source neuron firing its
  maximum) and below ``max fan-out × spikes of its sources``;
* the MACs of every layer fed real values once per inference equal the dense count computed here
  from the layer's shapes;
* accuracy lies in [0, 1] and every metric is finite and in the range the metric schema gives.

A broken invariant raises :class:`~harness.errors.InvariantError`: a bug, never a number to report.

Two evaluables are defined here because several methods share them: :class:`AnnEvaluable` (any
network, real-valued, one pass: the ANN baseline, ``ann``, ``prune``) and :class:`GraphSNN` (a
spiking network as a traced module whose time steps are folded into the batch, metered op by op:
``surrogate``, ``sharpen``). The runner injects :func:`evaluate_in` into every run's context as its
evaluator (:class:`harness.api.RunContext`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .api import Evaluable, Evaluation, Outputs, RunContext, SingleStep
from .errors import DataError, InvariantError, NirUnsupported
from .graph import Graph, Kind, event_counts, event_path, trace, weight_of
from .meters import Meters
from .metrics import SCHEMA, Schema


def as_evaluable(model: "Evaluable | nn.Module", input_shape: tuple[int, ...]) -> Evaluable:
    """An ``nn.Module`` is evaluated as an ANN (its traced graph, MACs, non-zero activations)."""
    if isinstance(model, Evaluable):
        return model
    return AnnEvaluable(trace(model, input_shape))


def evaluate_in(ctx: RunContext, model: "Evaluable | nn.Module", split: str = "test", *, batch_size: int | None = None,
                limit: int | None = None, desc: str = "evaluate", what: str = "evaluation") -> Evaluation:
    """The harness's evaluation of ``model`` on one split of the run's data: the run's evaluator
    (sharded over the run's ranks when it has several: :mod:`harness.distributed`)."""
    ev = as_evaluable(model, ctx.dataset.input_shape)
    if batch_size is None and ev.batch_size is not None:  # the smaller of the evaluable's and --eval-batch-size
        batch_size = min(ev.batch_size, ctx.config.eval_batch_size)
    frames = {"frames": True} if ev.takes_frames else {}  # event data's frames, one per step
    loader = ctx.loader(split, batch_size=batch_size, limit=limit or ev.limit, **frames)
    return evaluate(ev, loader, device=ctx.device, progress=ctx.progress and ctx.main, desc=desc, schema=ctx.schema,
                    what=what, world=ctx.world)


def evaluate(ev: Evaluable, loader, *, device: str = "cpu", progress: bool = False, desc: str = "evaluate",
             schema: Schema = SCHEMA, what: str = "evaluation", world=None) -> Evaluation:
    """Run ``loader`` through ``ev``, meter it and check the invariants. With a ``world`` of several
    ranks, this rank runs its slice of ``loader`` and the meters of every rank are summed before
    any ratio is taken."""
    from tqdm.auto import tqdm

    from .io import tqdm_disable
    from .meters import merge_meters

    ev = ev.to(device)
    meters = Meters(timesteps=ev.timesteps, dt=ev.dt, keep_per_neuron=ev.keep_per_neuron)
    correct_at_t: torch.Tensor | None = None
    if world is not None:
        loader = world.shard(loader)
    with torch.no_grad():
        for x, y in tqdm(loader, desc=desc, disable=tqdm_disable(progress), leave=False):
            out = ev.run_batch(x.to(device), meters)
            y = y.to("cpu")
            meters.record_predictions(out.final().to("cpu"), y)
            for rule, predictions in out.alternatives.items():
                meters.count(f"correct/{rule}", float((predictions.to("cpu") == y).sum()))
            if out.step_predictions is not None:
                hits = (out.step_predictions.to("cpu") == y.unsqueeze(0)).sum(1)
                correct_at_t = hits if correct_at_t is None else correct_at_t + hits
    if world is not None and world.distributed:
        parts = world.gather((meters.portable(), correct_at_t), f"summing the meters of {what}")
        meters = merge_meters([m for m, _ in parts])
        curves = [c for _, c in parts if c is not None]
        correct_at_t = torch.stack(curves).sum(0) if curves else None
    if meters.samples == 0:
        raise DataError(f"{what}: no test samples were evaluated (the test split or its limit is empty)")
    metrics, layers = meters.summary()
    if ev.event_driven:
        metrics["neuron_updates"] = metrics["neurons"]
    if ev.latency is not None:
        metrics["timesteps"] = float(ev.latency)
    steps: dict[str, list[float]] = {}
    if correct_at_t is not None:
        steps["test/accuracy_at_t"] = (correct_at_t.double() / max(meters.samples, 1)).tolist()
    check_invariants(ev, meters, metrics, schema, what)
    return Evaluation(metrics, layers, steps, meters, memory_aware_breakdowns(ev, meters))


def memory_aware_breakdowns(ev: Evaluable, meters: Meters) -> dict[str, dict[str, float]]:
    from .energy import ENERGY_MODELS, LemaireModel, lemaire_breakdown

    out = {}
    for name, model in ENERGY_MODELS.usable():
        if isinstance(model, LemaireModel):
            out[name] = lemaire_breakdown(meters, spiking=ev.spiking, event_driven=ev.event_driven)
    return out


# ---------------------------------------------------------------------------------------------
# invariants


def dense_macs(module: nn.Module, out_shape: tuple[int, ...]) -> int:
    """MACs of one dense pass of a synaptic layer with per-sample output shape ``out_shape``: every
    output element takes one multiply-accumulate per weight of its receptive field."""
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        taps = (module.in_channels // module.groups) * math.prod(module.kernel_size)  # type: ignore[arg-type]
        return math.prod(out_shape) * taps
    raise TypeError(type(module).__name__)


def capacity(graph: Graph, synapse: str, fan: torch.Tensor, input_spikes: bool = False) -> float:
    """SynOps of one step of ``synapse`` in which every source neuron spikes: the events each
    input element can receive per step, times its non-zero fan-out ``fan``."""
    path = event_path(graph, synapse, input_spikes)
    ones = {s: torch.ones((1, *graph[s].shape), dtype=torch.float64) for s in path.sources}
    events = event_counts(graph, path, ones)[0]
    return float((events * fan.detach().to("cpu", torch.float64)).sum())  # the fan-outs of a GPU run are on it


def check_invariants(ev: Evaluable, meters: Meters, metrics: dict[str, float], schema: Schema = SCHEMA,
                     what: str = "evaluation") -> None:
    """Raise :class:`InvariantError` listing every broken invariant (see the module docstring)."""
    g, n = ev.graph, meters.samples
    problems: list[str] = []
    if n == 0:
        raise InvariantError(what, ["no test sample was evaluated (empty test split or limit 0)"])
    bound = ev.max_spikes_per_neuron
    # neurons
    kinds = (Kind.NEURON,) if ev.spiking else (Kind.NEURON, Kind.ACTIVATION)
    expected = {op.name: op.size for op in g.of(*kinds)}
    for name, nst in meters.neurons.items():
        if name not in expected:
            problems.append(f"neurons of `{name}` were metered but the network has no such neuron op")
            continue
        got = nst.entries / (n * meters.timesteps)
        if abs(got - expected[name]) > 1e-9 * max(1.0, expected[name]):
            problems.append(f"`{name}` was metered with {got:g} neurons, the traced network has {expected[name]}")
        spn = nst.spikes / (n * expected[name]) if expected[name] else 0.0
        if spn > bound * (1 + 1e-9):
            problems.append(f"`{name}` fired {spn:g} spikes per neuron per inference, above the bound {bound:g}")
    for name in expected:
        if name not in meters.neurons:
            problems.append(f"the neuron op `{name}` was never metered")
    # synapses
    static = g.static_ops()
    spikes_of = {name: nst.spikes / n for name, nst in meters.neurons.items()}
    for op in g.synapses:
        st = meters.synapses.get(op.name)
        if st is None:
            problems.append(f"the synaptic op `{op.name}` was never metered")
            continue
        w = weight_of(op.layer).detach()
        zeros = int((w == 0).sum())
        if st.weights != w.numel() or st.zero_weights != zeros:
            problems.append(f"`{op.name}` was metered with {st.weights} weights ({st.zero_weights} zero), the "
                            f"network's layer has {w.numel()} ({zeros} zero)")
        per_inf = st.effective_ops / n
        if st.spike_input:
            if op.inputs[0] in static and not ev.input_spikes:
                problems.append(f"`{op.name}` reads the analog input but was metered as fed by spikes")
                continue  # no spikes reach it: there is no capacity to compare with
            path = event_path(g, op.name, ev.input_spikes)
            if ev.takes_frames and all(g[s].kind in (Kind.INPUT, Kind.ENCODER) for s in path.sources):
                # event input: a pixel may send several events per step, so the bound is the events sent
                sent = meters.counters.get("input_events", 0.0) / n
                if per_inf > st.max_fanout * sent * (1 + 1e-9) + 1e-9:
                    problems.append(f"`{op.name}`: {per_inf:g} SynOps per inference, more than its largest fan-out "
                                    f"{st.max_fanout:g} x the {sent:g} input events")
                continue
            fan = meters.fanouts(op.name, op.layer, tuple(g[op.inputs[0]].shape))[0]
            cap = capacity(g, op.name, fan, ev.input_spikes) * bound
            if per_inf > cap * (1 + 1e-9) + 1e-9:
                problems.append(f"`{op.name}`: {per_inf:g} SynOps per inference exceed its capacity {cap:g} "
                                f"(every source neuron firing {bound:g} times)")
            src_spikes = sum(spikes_of.get(s, 0.0) * path.paths.get(s, 1) for s in path.sources
                             if g[s].kind == Kind.NEURON)
            if all(g[s].kind == Kind.NEURON for s in path.sources):
                limit = st.max_fanout * src_spikes
                if per_inf > limit * (1 + 1e-9) + 1e-9:
                    problems.append(f"`{op.name}`: {per_inf:g} SynOps per inference, more than its largest fan-out "
                                    f"{st.max_fanout:g} x the {src_spikes:g} spikes of its sources")
        elif op.inputs[0] in static:
            want = dense_macs(op.layer, op.shape)
            got = st.dense_ops / n
            if abs(got - want) > 1e-9 * want:
                problems.append(f"`{op.name}`: {got:g} dense MACs per inference metered, its shapes give {want}")
    for name in meters.synapses:
        if name not in g.ops or g[name].kind != Kind.SYNAPSE:
            problems.append(f"`{name}` was metered as a synaptic layer but the network has no such op")
    # metrics
    acc = metrics.get("test/accuracy", float("nan"))
    if not (0.0 <= acc <= 1.0):
        problems.append(f"test/accuracy = {acc}")
    problems += schema.problems(metrics)
    if problems:
        raise InvariantError(what, problems)


# ---------------------------------------------------------------------------------------------
# shared evaluables


class AnnEvaluable(Evaluable):
    """A real-valued network: every synaptic layer counts dense MACs, every hidden non-linearity
    its non-zero outputs (what an SNN would count as spikes)."""

    spiking = False

    def __init__(self, graph: Graph):
        self.graph = graph
        graph.gm.eval()
        self._static = graph.static_ops()

    def single_step(self) -> SingleStep:
        raise NirUnsupported("an ANN has no spiking neurons to export (NIR is for spiking networks)")

    def run_batch(self, x, meters):
        static = self._static

        def on_op(op, args, out):
            if op.kind == Kind.SYNAPSE:
                meters.record_synapse(op.name, op.layer, args[0], spikes=False, reads_input=op.inputs[0] in static)
            elif op.kind in (Kind.NEURON, Kind.ACTIVATION):
                meters.record_neurons(op.name, out, shape=op.shape, kind=op.what, spiking=False)

        return Outputs(logits=self.graph.run(x, on_op))


class GraphSNN(Evaluable):
    """A spiking network as a traced module whose tensors hold ``T`` time steps folded into the
    batch (``[T·B, ...]``; ``T`` = 1 for single-step networks). Spiking neurons, encoders and time
    expansion are registered ``Kind`` s of :mod:`harness.graph`. Ops that depend on the input alone
    run once per inference and count MACs; every other synaptic op counts the events that reach
    it (:func:`harness.graph.event_counts`). ``readout(output, T, B)`` turns the network's output
    into :class:`Outputs`."""

    def __init__(self, graph: Graph, timesteps: int, readout, *, max_spikes_per_neuron: float | None = None):
        self.graph, self.timesteps, self.readout = graph, timesteps, readout
        self.max_spikes_per_neuron = float(timesteps if max_spikes_per_neuron is None else max_spikes_per_neuron)
        self._static = graph.static_ops()
        self._paths = {op.name: event_path(graph, op.name) for op in graph.synapses if op.inputs[0] not in self._static}
        # layers fed by the (encoded) input alone read the input, as the static ones do
        self._reads_input = {s for s, p in self._paths.items()
                             if all(graph[src].kind == Kind.ENCODER for src in p.sources)}

    label = "this network"  # how NIR refusals name it (a method sets its name)

    def single_step(self) -> SingleStep:
        """The chain of the network with BatchNorm folded (eval statistics), neurons as single-step
        SpikingJelly nodes (:mod:`harness.export`)."""
        from .export import chain_sequential, spikingjelly_node

        return chain_sequential(self.graph.folded(), self.label, lambda op: op.layer,
                                lambda op: spikingjelly_node(op.layer, op, self.label))

    def run_batch(self, x, meters):
        from spikingjelly.activation_based.base import MemoryModule

        for m in self.graph.gm.modules():  # stateful neurons start every inference at rest
            if isinstance(m, MemoryModule):
                m.reset()
        out = _MeteringInterpreter(self, meters, x.shape[0]).run(x)
        return self.readout(out, self.timesteps, x.shape[0])


class _MeteringInterpreter(fx.Interpreter):
    def __init__(self, snn: GraphSNN, meters: Meters, batch: int):
        super().__init__(snn.graph.gm)
        self.snn, self.meters, self.B = snn, meters, batch
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        g = self.snn.graph
        op = g.by_node.get(n)
        if op is not None and op.kind == Kind.SYNAPSE:
            x = self.env[n.all_input_nodes[0]]
            if op.inputs[0] in self.snn._static:
                self.meters.record_synapse(op.name, op.layer, x, spikes=False, reads_input=True)
            else:
                self.meters.record_synapse(op.name, op.layer, self._events(op.name), spikes=True,
                                           rows=self.snn.timesteps * self.B,
                                           reads_input=op.name in self.snn._reads_input)
        out = super().run_node(n)
        if op is not None and op.kind in (Kind.NEURON, Kind.ENCODER):
            self.values[op.name] = out
            if getattr(op.module, "input_events", False):  # event data's frames entering the network
                self.meters.count("input_events", float(out.sum(dtype=torch.float64)))
            if op.kind == Kind.NEURON:
                self.meters.record_neurons(op.name, out, shape=op.shape, kind=op.what, spiking=True)
        return out

    def _events(self, synapse: str) -> torch.Tensor:
        path = self.snn._paths[synapse]
        T, B = self.snn.timesteps, self.B

        def per_step(v: torch.Tensor) -> torch.Tensor:
            return v.reshape(T, B, *v.shape[1:])

        if path.per_step:
            ev = event_counts(self.snn.graph, path, {s: self.values[s] for s in path.sources})
            return per_step(ev).sum(0)
        return event_counts(self.snn.graph, path, {s: per_step(self.values[s]).sum(0) for s in path.sources})
