import math

import pytest
from harness.energy import ENERGY_MODELS, PJ, energy_metrics


def test_registered_models_have_sources():
    assert {"cmos45-fp32", "cmos45-fp16", "cmos45-int8", "loihi", "spinnaker2", "truenorth"} <= set(ENERGY_MODELS)
    for name in ENERGY_MODELS:
        em = ENERGY_MODELS.get(name)
        assert em.source and em.e_synop > 0


def test_joules_and_break_even_by_hand():
    em = ENERGY_MODELS.get("cmos45-fp32")
    ann = dict(macs=1000.0, neurons=100.0)
    snn = dict(macs=200.0, synops=500.0, neuron_updates=400.0, neurons=100.0, spikes=50.0)
    assert em.ann_joules(ann) == pytest.approx(1000 * 4.6 * PJ)
    assert em.snn_joules(snn) == pytest.approx(200 * 4.6 * PJ + 500 * 0.9 * PJ)
    # 10 synops per spike; E(s) = 200*4.6 + s*100*10*0.9 pJ = 4600 pJ  ->  s = 3680 / 900
    s = em.break_even_spikes_per_neuron(snn, em.ann_joules(ann))
    assert s == pytest.approx(3680 / 900)
    snn_at_s = dict(snn, synops=s * 100 * 10)
    assert em.snn_joules(snn_at_s) == pytest.approx(em.ann_joules(ann))


def test_loihi_charges_neuron_updates():
    em = ENERGY_MODELS.get("loihi")
    snn = dict(macs=0.0, synops=10.0, neuron_updates=3.0)
    assert em.snn_joules(snn) == pytest.approx(10 * 27.1 * PJ + 3 * 81 * PJ)


def test_energy_metrics_keys():
    ann = dict(macs=1000.0, neurons=100.0, input_layer_macs=100.0, synops_if_spiking=300.0, spikes=50.0,
               synops=0.0, neuron_updates=100.0)
    out = energy_metrics(ann, ann, spiking=False)
    assert out["energy/cmos45-fp32/ratio"] == 1.0
    assert out["ann/energy/cmos45-fp32/joules"] == pytest.approx(4600 * PJ)
    # the ANN read as a one-step SNN: the input layer keeps its 100 MACs (460 pJ); the 300 other
    # effective ops become synops, 300 / 50 = 6 per spike; spikes per neuron s costs
    # 100 neurons · s · 6 · 0.9 pJ = 540·s pJ; 460 + 540·s = 4600  ->  s = 4140 / 540
    be = out["energy/cmos45-fp32/break_even_spikes_per_neuron"]
    assert be == pytest.approx(4140 / 540)
    # loihi also charges 81 pJ per neuron update (100) and 27.1 pJ per MAC or synop
    loihi = out["energy/loihi/break_even_spikes_per_neuron"]
    ann_j = (1000 * 27.1 + 100 * 81) * PJ
    assert loihi == pytest.approx((ann_j - (100 * 27.1 + 100 * 81) * PJ) / (100 * 6 * 27.1 * PJ))


def test_break_even_is_infinite_without_synaptic_cost_and_zero_when_fixed_costs_exceed_the_ann():
    em = ENERGY_MODELS.get("cmos45-fp32")
    snn = dict(macs=0.0, synops=0.0, neuron_updates=10.0, neurons=10.0, spikes=0.0, synop_capacity=0.0)
    assert em.break_even_spikes_per_neuron(snn, 1.0) == math.inf
    heavy = dict(macs=1e6, synops=10.0, neuron_updates=10.0, neurons=10.0, spikes=5.0)
    assert em.break_even_spikes_per_neuron(heavy, em.ann_joules(dict(macs=10.0))) == 0.0


def test_no_baseline_gives_only_joules():
    snn = dict(macs=10.0, synops=20.0, neuron_updates=5.0)
    out = energy_metrics(snn, None, spiking=True)
    assert set(out) == {f"energy/{m}/joules" for m in ENERGY_MODELS}
    assert out["energy/cmos45-fp32/joules"] == pytest.approx((10 * 4.6 + 20 * 0.9) * PJ)


def test_a_silent_network_breaks_even_through_its_synaptic_capacity():
    """No spikes were seen: the synops a spike would cost come from the capacity (every neuron
    spiking once), capacity / neurons per spike."""
    em = ENERGY_MODELS.get("cmos45-fp32")
    snn = dict(macs=100.0, synops=0.0, neuron_updates=40.0, neurons=20.0, spikes=0.0, synop_capacity=600.0)
    # E(s) = 100·4.6 + s·20·(600/20)·0.9 pJ = 460 + 540·s pJ; ANN 4600 pJ -> s = 4140 / 540
    assert em.break_even_spikes_per_neuron(snn, 4600 * PJ) == pytest.approx(4140 / 540)


def test_an_ann_without_energy_gives_no_ratio():
    ann = dict(macs=0.0, neurons=10.0, input_layer_macs=0.0, synops_if_spiking=0.0, spikes=0.0, synops=0.0,
               neuron_updates=10.0)
    out = energy_metrics(dict(macs=0.0, synops=5.0, neuron_updates=10.0, neurons=10.0, spikes=1.0), ann,
                         spiking=True)
    assert math.isnan(out["energy/cmos45-fp32/ratio"])  # 0 J against 0 J has no ratio
    assert out["energy/cmos45-fp32/joules"] == pytest.approx(5 * 0.9 * PJ)
