"""Energy models (DESIGN §6): joules per inference from op counts. Estimates, not measurements.

Two kinds. The *arithmetic* models (:class:`EnergyModel`) charge each MAC, synaptic operation and
neuron update at a per-op cost. The *memory-aware* model (:class:`LemaireModel`, ``lemaire-45nm``)
follows Lemaire et al., "An analytical estimation of spiking neural networks energy efficiency"
(ICONIP 2022, arXiv 2210.13107) as SpikingJelly 2.x implements it
(``spikingjelly.activation_based.op_counter.analytical_energy``): it also charges every read of an
input, a weight or a bias, every read and write of a membrane potential and every spike written
out, each at a per-byte cost that grows with the size of the buffer it lives in (SpikingJelly's
``LemaireEnergyCostConfig``: its 45 nm cost table is used as is), plus the additions that address
the weights. See :func:`lemaire_breakdown` for what is counted and why it is counted here rather
than by SpikingJelly's profiler.

An ANN on any device pays its dense MACs (+ one update per neuron on neuromorphic devices, where a
MAC is charged as one graded synaptic event, as keras-spiking does for non-spiking layers). An SNN
pays its analog MACs (input layers fed with real values), its synaptic operations and its neuron
updates. The break-even spike budget is the spikes per neuron at which the SNN's energy equals
the ANN's, with the SNN's measured synops per spike held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from .registry import Registry

PJ = 1e-12


@dataclass(frozen=True)
class EnergyModel:
    name: str
    e_mac: float  # J per multiply-accumulate on real values
    e_synop: float  # J per synaptic (accumulate) event
    e_neuron: float  # J per neuron update
    source: str
    description: str = ""

    def ann_joules(self, m: dict[str, float]) -> float:
        """``m``: the ANN's metrics (``macs``, ``neurons``)."""
        return m["macs"] * self.e_mac + m.get("neurons", 0.0) * self.e_neuron

    def snn_joules(self, m: dict[str, float]) -> float:
        """``m``: the SNN's metrics (``macs``, ``synops``, ``neuron_updates``)."""
        return m["macs"] * self.e_mac + m["synops"] * self.e_synop + m["neuron_updates"] * self.e_neuron

    def break_even_spikes_per_neuron(self, m: dict[str, float], ann_joules: float) -> float:
        """Spikes per neuron at which ``snn_joules`` equals ``ann_joules`` (inf if none needed)."""
        neurons = m.get("neurons", 0.0)
        spikes = m.get("spikes", 0.0)
        synops_per_spike = m["synops"] / spikes if spikes else (
            m.get("synop_capacity", 0.0) / neurons if neurons else 0.0)
        fixed = m["macs"] * self.e_mac + m["neuron_updates"] * self.e_neuron
        per_spike_per_neuron = neurons * synops_per_spike * self.e_synop
        if per_spike_per_neuron <= 0:
            return float("inf")
        return max(0.0, (ann_joules - fixed) / per_spike_per_neuron)


@dataclass(frozen=True)
class LemaireModel:
    """The memory-aware model (module docstring); its figures come from :func:`lemaire_breakdown`
    of the evaluation's meters, so ``ann_joules``/``snn_joules`` of flat counts do not exist."""

    name: str
    source: str
    description: str = ""


def _energy_problem(obj) -> str | None:
    if isinstance(obj, (EnergyModel, LemaireModel)):
        return None
    return f"it is a {type(obj).__name__}, not a harness.energy.EnergyModel or LemaireModel"


ENERGY_MODELS: Registry[EnergyModel | LemaireModel] = Registry("energy model", validate=_energy_problem)
ENERGY_MODELS.entry_points("snn_harness.energy")


def _add(model: "EnergyModel | LemaireModel") -> None:
    ENERGY_MODELS.register(model.name, f"{model.description} [{model.source}]")(model)


_HOROWITZ = "Horowitz, 'Computing's energy problem', ISSCC 2014 (45 nm)"
_add(EnergyModel("cmos45-fp32", 4.6 * PJ, 0.9 * PJ, 0.0, _HOROWITZ, "45 nm CMOS, fp32: MAC 4.6 pJ, AC 0.9 pJ"))
_add(EnergyModel("cmos45-fp16", 1.5 * PJ, 0.4 * PJ, 0.0, _HOROWITZ, "45 nm CMOS, fp16: MAC 1.5 pJ, AC 0.4 pJ"))
_add(EnergyModel("cmos45-int8", 0.23 * PJ, 0.03 * PJ, 0.0, _HOROWITZ, "45 nm CMOS, int8: MAC 0.23 pJ, AC 0.03 pJ"))
_add(EnergyModel("loihi", 27.1 * PJ, 27.1 * PJ, 81 * PJ,
                 "Davies et al., IEEE Micro 2018 (pre-silicon minimum; as used by keras-spiking)",
                 "Intel Loihi: 23.6 + 3.5 pJ per synop, 81 pJ per neuron update"))
_add(EnergyModel("spinnaker2", 450 * PJ, 450 * PJ, 2190 * PJ,
                 "Hoppner et al. 2019 (as used by keras-spiking)",
                 "SpiNNaker 2: 450 pJ per synop, 2.19 nJ per neuron update"))
_add(EnergyModel("truenorth", 26 * PJ, 26 * PJ, 0.0, "Merolla et al., Science 2014",
                 "IBM TrueNorth: 26 pJ per synaptic event"))


_add(LemaireModel("lemaire-45nm", "Lemaire et al., ICONIP 2022 (arXiv 2210.13107), as implemented by "
                   "SpikingJelly 2.x op_counter.analytical_energy (45 nm, 32-bit)",
                   "memory-aware: ops + addressing + SRAM reads/writes of inputs, weights, potentials, spikes"))


def energy_metrics(snn: dict[str, float], ann: dict[str, float] | None, *, spiking: bool,
                   parts: dict[str, dict[str, float]] | None = None,
                   ann_parts: dict[str, dict[str, float]] | None = None) -> dict[str, float]:
    """``energy_nJ/<model>``, ``energy_ratio/<model>``, ``break_even_spikes_per_neuron/<model>`` and
    ``ann/energy_nJ/<model>``: nanojoules (a J value of 1e-8 reads "0.00" in MLflow's charts), keyed
    so that each quantity is one section of MLflow's chart view with a chart per energy model.

    ``snn`` holds the method's metrics; ``spiking=False`` (the ``ann`` method) charges it as an ANN.
    Without an ANN baseline (``ann`` None) only the method's own joules are computed. ``parts`` /
    ``ann_parts``: the memory-aware models' breakdowns of the method's and the ANN's evaluation
    (:attr:`harness.evaluation.Evaluation.breakdowns`); a memory-aware model without one is skipped.
    """
    out: dict[str, float] = {}
    for name, em in ENERGY_MODELS.usable():
        if isinstance(em, LemaireModel):
            out.update(_memory_aware_metrics(name, spiking, snn, (parts or {}).get(name),
                                             None if ann is None else (ann_parts or {}).get(name)))
            continue
        j = em.snn_joules(snn) if spiking else em.ann_joules(snn)
        if ann is None:
            out[f"energy_nJ/{name}"] = j * 1e9
            continue
        ann_j = em.ann_joules(ann)
        out[f"ann/energy_nJ/{name}"] = ann_j * 1e9
        out[f"energy_nJ/{name}"] = j * 1e9
        out[f"energy_ratio/{name}"] = j / ann_j if ann_j else float("nan")
        view = snn if spiking else as_converted(snn)
        out[f"break_even_spikes_per_neuron/{name}"] = em.break_even_spikes_per_neuron(view, ann_j)
    return out


def as_converted(ann: dict[str, float]) -> dict[str, float]:
    """An ANN's counts read as a one-time-step SNN with one spike per non-zero activation: the
    input layer keeps its MACs, every other layer's effective ops become synops."""
    return dict(ann, macs=ann["input_layer_macs"], synops=ann["synops_if_spiking"],
                neuron_updates=ann.get("neurons", 0.0))


def _memory_aware_metrics(name: str, spiking: bool, snn: dict[str, float], parts: dict[str, float] | None,
                          ann_parts: dict[str, float] | None) -> dict[str, float]:
    if parts is None:
        return {}
    out = {f"energy_nJ/{name}": parts["total"] * 1e9}
    for k in ("compute", "addressing", "memory", "memory_params", "memory_potential", "memory_inout"):
        out[f"energy_parts_nJ/{name}/{k}"] = parts[k] * 1e9
    if ann_parts is None:
        return out
    ann_j = ann_parts["total"]
    out[f"ann/energy_nJ/{name}"] = ann_j * 1e9
    out[f"ann/energy_parts_nJ/{name}/compute"] = (ann_parts["compute"] + ann_parts["addressing"]) * 1e9
    out[f"ann/energy_parts_nJ/{name}/memory"] = ann_parts["memory"] * 1e9
    out[f"energy_ratio/{name}"] = parts["total"] / ann_j if ann_j else float("nan")
    if spiking:
        # the breakdown is affine in the spike counts (buffer sizes do not depend on them):
        # E(s) = E0 + s · (E1 − E0) / s1, with E0 the same network without a spike
        e0, e1, s1 = parts["no_spikes"], parts["total"], snn.get("spikes_per_neuron", 0.0)
        slope = (e1 - e0) / s1 if s1 > 0 else 0.0
        out[f"break_even_spikes_per_neuron/{name}"] = (
            max(0.0, (ann_j - e0) / slope) if slope > 0 else (float("inf") if ann_j >= e0 else 0.0))
    return out


WORD = 4  # bytes per access: 32-bit values, as Lemaire et al.


def lemaire_breakdown(meters, *, spiking: bool, event_driven: bool = False, spike_scale: float = 1.0,
                      cost=None) -> dict[str, float]:
    """Joules per inference under Lemaire et al.'s model, from one evaluation's :class:`Meters`.

    Every count follows SpikingJelly's ``LemaireEnergyProfiler`` rule for rule (its synaptic rule for
    Linear/Conv layers, its neuron rule for IF/LIF nodes; ``tests/test_energy.py`` checks the totals
    against ``estimate_lemaire_energy`` on the same network and input), with one inference at a time
    (buffers hold one sample). It is counted here from the meters, not by running SpikingJelly's
    profiler on the network, because the harness's networks do not run as SpikingJelly modules: the
    rate simulator computes static layers once and folds time into the batch, and TTFS's two-stage
    neuron and the event paths through pooling have no SpikingJelly node (its profiler omits pooling).

    * a synaptic layer fed spikes: per input spike, ``event_fanout`` accumulates and one read of the
      input (a FIFO of 1 000 messages), ``memory_fanout`` weight reads and as many potential reads
      and writes of the layer's output; a convolution adds 2 multiply-adds per spike to locate its
      first output. A layer fed real values: its dense MACs, with one input (conv: per weight use)
      and one weight read per MAC; an ANN layer (no neurons) writes its output.
    * biases: one add and one read per output element and pass.
    * neurons: one potential read and write per neuron and time step, and per neuron once in an
      event-driven network (TTFS: its silent stage is charged per incoming spike by the synaptic
      rule above, its spiking stage once per neuron); one add and one 4-byte write per output spike;
      LIF one multiply-add per neuron and step for the leak.
    * pruning (not in Lemaire et al.): a layer is assumed stored compressed, its zero weights neither
      stored nor read nor accumulated: every per-weight count and the weight buffer are scaled by the
      layer's fraction of non-zero weights (index storage ignored). At density 1 this is the paper's.

    ``spike_scale`` multiplies every spike count (0: the network's cost without a spike, used for
    the break-even budget). Returns ``compute`` (ops), ``addressing``, ``memory`` and its parts
    ``memory_inout|params|potential``, ``total``, and ``no_spikes`` (the total at ``spike_scale=0``).
    """
    if cost is None:
        from spikingjelly.activation_based.op_counter.analytical_energy import LemaireEnergyCostConfig

        cost = LemaireEnergyCostConfig()
    parts = _lemaire(meters, spiking, event_driven, spike_scale, cost)
    parts["no_spikes"] = _lemaire(meters, spiking, event_driven, 0.0, cost)["total"]
    return parts


def _lemaire(meters, spiking: bool, event_driven: bool, spike_scale: float, cost) -> dict[str, float]:
    n = max(meters.samples, 1)
    T = meters.timesteps
    ac = mac = acc_addr = mac_addr = 0.0
    mem = {"inout": 0.0, "params": 0.0, "potential": 0.0}

    def access(kind: str, nbytes: float, capacity: float) -> None:
        mem[kind] += nbytes * cost.memory_cost_pj(capacity)

    fifo = 1000 * WORD
    for st in meters.synapses.values():
        g = st.geometry
        density = g["nonzero"] / g["params"] if g["params"] else 1.0
        passes = st.rows / n
        params_capacity = (g["nonzero"] + g["bias"]) * WORD
        bias_reads = passes * g["out_numel"] if g["bias"] else 0.0
        ac += bias_reads
        if st.spike_input:
            active = st.input_spikes / n * spike_scale
            event, fan = active * g["event_fanout"] * density, active * g["memory_fanout"] * density
            ac += event
            acc_addr += fan
            if g["conv_taps"] is not None:
                mac_addr += 2 * active
            access("inout", active * WORD, fifo)
            access("params", (fan + bias_reads) * WORD, params_capacity)
            access("potential", 2 * fan * WORD, g["out_numel"] * WORD)  # read and write
        else:
            uses = passes * g["dense_per_pass"] * density
            mac += uses
            acc_addr += passes * (g["in_numel"] + g["out_numel"] + (g["conv_taps"] or 0))
            read_in = uses if g["conv_taps"] is not None else passes * g["in_numel"]
            access("inout", read_in * WORD, g["in_numel"] * WORD)
            access("params", (uses + bias_reads) * WORD, params_capacity)
            if not spiking:
                access("inout", passes * g["out_numel"] * WORD, g["out_numel"] * WORD)
    if spiking:
        for nst in meters.neurons.values():
            neurons = nst.entries / (n * T)
            steps = 1 if event_driven else T
            spikes = nst.spikes / n * spike_scale
            access("potential", 2 * neurons * steps * WORD, neurons * WORD)
            ac += spikes
            if "LIF" in nst.kind:
                mac += neurons * steps
            access("inout", spikes * WORD, fifo)
    compute = (ac * cost.e_add_pj + mac * (cost.e_mul_pj + cost.e_add_pj)) * PJ
    addressing = (acc_addr * cost.e_add_pj + mac_addr * (cost.e_mul_pj + cost.e_add_pj)) * PJ
    memory = sum(mem.values()) * PJ
    return {"compute": compute, "addressing": addressing, "memory": memory, "memory_inout": mem["inout"] * PJ,
            "memory_params": mem["params"] * PJ, "memory_potential": mem["potential"] * PJ,
            "total": compute + addressing + memory}
