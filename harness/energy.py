"""Energy models (DESIGN §6): joules per inference from op counts. Estimates, not measurements.

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


ENERGY_MODELS: Registry[EnergyModel] = Registry("energy model")
ENERGY_MODELS.entry_points("snn_harness.energy")


def _add(model: EnergyModel) -> None:
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


def energy_metrics(snn: dict[str, float], ann: dict[str, float] | None, *, spiking: bool) -> dict[str, float]:
    """``energy/<model>/joules|ratio|break_even_spikes_per_neuron`` and ``ann/energy/<model>/joules``.

    ``snn`` holds the method's metrics; ``spiking=False`` (the ``ann`` method) charges it as an ANN.
    Without an ANN baseline (``ann`` None) only the method's own joules are computed.
    """
    out: dict[str, float] = {}
    for name in ENERGY_MODELS:
        em = ENERGY_MODELS.get(name)
        j = em.snn_joules(snn) if spiking else em.ann_joules(snn)
        if ann is None:
            out[f"energy/{name}/joules"] = j
            continue
        ann_j = em.ann_joules(ann)
        out[f"ann/energy/{name}/joules"] = ann_j
        out[f"energy/{name}/joules"] = j
        out[f"energy/{name}/ratio"] = j / ann_j if ann_j else float("nan")
        view = snn if spiking else as_converted(snn)
        out[f"energy/{name}/break_even_spikes_per_neuron"] = em.break_even_spikes_per_neuron(view, ann_j)
    return out


def as_converted(ann: dict[str, float]) -> dict[str, float]:
    """An ANN's counts read as a one-time-step SNN with one spike per non-zero activation: the
    input layer keeps its MACs, every other layer's effective ops become synops."""
    return dict(ann, macs=ann["input_layer_macs"], synops=ann["synops_if_spiking"],
                neuron_updates=ann.get("neurons", 0.0))
