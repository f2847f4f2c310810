import math

import pytest
import torch
from harness.energy import ENERGY_MODELS, PJ, LemaireModel, energy_metrics, lemaire_breakdown
from harness.meters import Meters
from torch import nn


def test_registered_models_have_sources():
    assert {"cmos45-fp32", "cmos45-fp16", "cmos45-int8", "loihi", "spinnaker2", "truenorth",
            "lemaire-45nm"} <= set(ENERGY_MODELS)
    for name in ENERGY_MODELS:
        em = ENERGY_MODELS.get(name)
        assert em.source and (isinstance(em, LemaireModel) or em.e_synop > 0)


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
    assert out["energy_ratio/cmos45-fp32"] == 1.0
    assert out["ann/energy_nJ/cmos45-fp32"] == pytest.approx(4600e-3)  # 4600 pJ in nJ
    # the ANN read as a one-step SNN: the input layer keeps its 100 MACs (460 pJ); the 300 other
    # effective ops become synops, 300 / 50 = 6 per spike; spikes per neuron s costs
    # 100 neurons · s · 6 · 0.9 pJ = 540·s pJ; 460 + 540·s = 4600  ->  s = 4140 / 540
    be = out["break_even_spikes_per_neuron/cmos45-fp32"]
    assert be == pytest.approx(4140 / 540)
    # loihi also charges 81 pJ per neuron update (100) and 27.1 pJ per MAC or synop
    loihi = out["break_even_spikes_per_neuron/loihi"]
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
    assert set(out) == {f"energy_nJ/{m}" for m in ENERGY_MODELS if not isinstance(ENERGY_MODELS.get(m), LemaireModel)}
    assert out["energy_nJ/cmos45-fp32"] == pytest.approx((10 * 4.6 + 20 * 0.9) * 1e-3)  # pJ in nJ


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
    assert math.isnan(out["energy_ratio/cmos45-fp32"])  # 0 J against 0 J has no ratio
    assert out["energy_nJ/cmos45-fp32"] == pytest.approx(5 * 0.9 * 1e-3)  # pJ in nJ


# ---- the memory-aware model (Lemaire et al.) --------------------------------------------------

def _sram_pj_per_byte(capacity_bytes: float) -> float:
    """Lemaire et al.'s SRAM cost, written from the paper's table (10 / 20 / 100 pJ per 32-bit
    access at 8 KiB / 32 KiB / 1 MiB, linear in between and from 0): pJ per byte."""
    points = [(0, 0.0), (8192, 2.5), (32768, 5.0), (1 << 20, 25.0)]
    c = min(max(capacity_bytes, 0), 1 << 20)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if c <= x1:
            return y0 + (y1 - y0) * (c - x0) / (x1 - x0)
    raise AssertionError


def _ttfs_like_meters(fc2_zeros: int = 0) -> Meters:
    """One inference of a two-layer TTFS network, recorded as the TTFS evaluator records it: 3 input
    spikes into fc1 (4 → 2, bias), 1 of its 2 two-stage neurons fires, 1 spike into fc2 (2 → 3)."""
    m = Meters(timesteps=1)
    fc1, fc2 = nn.Linear(4, 2), nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        fc1.weight.fill_(0.5)
        fc2.weight.fill_(0.5)
        fc2.weight.view(-1)[:fc2_zeros] = 0.0
    m.record_synapse("fc1", fc1, torch.tensor([[1.0, 0.0, 1.0, 1.0]]), spikes=True)
    m.record_neuron_counts("n1", spikes=1.0, entries=2.0, zeros=1.0, kind="TTFS two-stage")
    m.record_synapse("fc2", fc2, torch.tensor([[1.0, 0.0]]), spikes=True)
    m.samples = 1
    return m


def test_lemaire_ttfs_counted_by_hand():
    parts = lemaire_breakdown(_ttfs_like_meters(), spiking=True, event_driven=True)
    fifo = _sram_pj_per_byte(4000)  # input and spike FIFOs: 1 000 messages of 4 bytes
    # adds: fc1 3 spikes × 2 targets + 2 biases, n1 1 spike, fc2 1 spike × 3 targets -> 12 × 0.1 pJ
    assert parts["compute"] == pytest.approx(12 * 0.1 * PJ)
    # weight addressing: 3 × 2 + 1 × 3 adds
    assert parts["addressing"] == pytest.approx(9 * 0.1 * PJ)
    # inputs: 3 + 1 spike reads, and 1 spike written out by n1, 4 bytes each, in FIFOs
    assert parts["memory_inout"] == pytest.approx(5 * 4 * fifo * PJ)
    # weights: fc1 reads 6 weights + 2 biases from its 40-byte buffer, fc2 3 from 24 bytes
    assert parts["memory_params"] == pytest.approx((8 * 4 * _sram_pj_per_byte(40) + 3 * 4 * _sram_pj_per_byte(24)) * PJ)
    # potentials, read and written: fc1's 2 outputs once per incoming spike (silent stage: 6 updates),
    # n1's 2 neurons once each (spiking stage: event-driven, not once per time step), fc2's 3 outputs
    # once for its one spike
    assert parts["memory_potential"] == pytest.approx(
        (2 * 6 * 4 * _sram_pj_per_byte(8) + 2 * 2 * 4 * _sram_pj_per_byte(8) + 2 * 3 * 4 * _sram_pj_per_byte(12)) * PJ)
    assert parts["total"] == pytest.approx(parts["compute"] + parts["addressing"] + parts["memory"])
    assert parts["memory"] == pytest.approx(parts["memory_inout"] + parts["memory_params"] + parts["memory_potential"])
    # without a spike: only fc1's 2 bias adds and reads and n1's 2 potential updates are left
    assert parts["no_spikes"] == pytest.approx(
        (2 * 0.1 + 2 * 4 * _sram_pj_per_byte(40) + 2 * 2 * 4 * _sram_pj_per_byte(8)) * PJ)


def test_lemaire_pruned_weights_are_neither_stored_nor_read():
    dense = lemaire_breakdown(_ttfs_like_meters(), spiking=True, event_driven=True)
    half = lemaire_breakdown(_ttfs_like_meters(fc2_zeros=3), spiking=True, event_driven=True)
    # fc2 at density 1/2: 1.5 of its 3 accumulates, weight reads and potential updates remain,
    # from a 12-byte weight buffer
    assert dense["compute"] - half["compute"] == pytest.approx(1.5 * 0.1 * PJ)
    assert half["memory_params"] == pytest.approx(
        (8 * 4 * _sram_pj_per_byte(40) + 1.5 * 4 * _sram_pj_per_byte(12)) * PJ)


def test_lemaire_time_steps_charge_every_neuron_every_step():
    m = _ttfs_like_meters()
    m.timesteps = 4
    m.neurons["n1"].entries = 2.0 * 4  # 2 neurons over 4 steps
    stepped = lemaire_breakdown(m, spiking=True, event_driven=False)
    once = lemaire_breakdown(m, spiking=True, event_driven=True)
    assert stepped["memory_potential"] - once["memory_potential"] == pytest.approx(
        2 * 2 * 3 * 4 * _sram_pj_per_byte(8) * PJ)  # 3 more reads and writes of 2 neurons


def _sharpened(arch: nn.Module, shape: tuple[int, ...]):
    from harness.methods.sharpen import SharpenedSNN, SharpenParams, build_sharpenable, set_sharpness

    torch.manual_seed(0)
    net = build_sharpenable(arch, shape, 3, SharpenParams(n_hot=2))
    with torch.no_grad():
        for mod in net.gm.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                mod.weight.normal_(0, 1)
                mod.bias.normal_(0, 0.5)
    net.gm.eval()
    set_sharpness(net.activations, [1.0] * len(net.activations))
    return net, SharpenedSNN(net, "first")


@pytest.mark.filterwarnings("ignore:Lemaire formulas do not support")
@pytest.mark.parametrize("arch,shape", [
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)),
     (1, 4, 4)),
    (lambda: nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3, stride=2),
                           nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)), (1, 8, 8)),
], ids=["dense", "conv-pool-stride"])
def test_lemaire_equals_spikingjellys_estimate_on_a_one_step_if_network(arch, shape):
    from harness.evaluation import evaluate
    from harness.methods.sharpen.snn import to_spiking
    from spikingjelly.activation_based.op_counter.analytical_energy import (
        LemaireEnergyConfig,
        estimate_lemaire_energy,
    )

    net, snn = _sharpened(arch(), shape)
    x = torch.rand(6, *shape)
    harness_parts = evaluate(snn, [(x, torch.zeros(6, dtype=torch.long))]).breakdowns["lemaire-45nm"]
    assert harness_parts["total"] > harness_parts["no_spikes"]  # spikes flowed: the event rules are compared too
    # SpikingJelly's profiler on its own copy of the network, one sample at a time (the harness's
    # buffers hold one inference), averaged; layers it has no rule for (encoder, pooling, flatten,
    # decoder) it leaves out, as the harness does
    from spikingjelly.activation_based import functional

    reference = to_spiking(net).eval()
    reports = []
    for i in range(len(x)):
        functional.reset_net(reference)  # every inference starts at rest
        reports.append(estimate_lemaire_energy(reference, x[i:i + 1], config=LemaireEnergyConfig(strict=False)))
    mean = {k: sum(r.breakdown_pj[k] for r in reports) / len(reports) for k in reports[0].breakdown_pj}
    assert sum(r.total_pj for r in reports) / len(reports) * PJ == pytest.approx(harness_parts["total"], rel=1e-9)
    assert mean["ops_pj"] * PJ == pytest.approx(harness_parts["compute"], rel=1e-9)
    assert mean["addressing_pj"] * PJ == pytest.approx(harness_parts["addressing"], rel=1e-9)
    for ours, theirs in (("memory_inout", "inout_pj"), ("memory_params", "params_pj"), ("memory_potential", "potential_pj")):
        assert mean[theirs] * PJ == pytest.approx(harness_parts[ours], rel=1e-9), ours


def test_memory_aware_metrics_ratio_and_break_even():
    parts = dict(total=10 * PJ, no_spikes=4 * PJ, compute=1 * PJ, addressing=1 * PJ, memory=8 * PJ,
                 memory_params=5 * PJ, memory_potential=2 * PJ, memory_inout=1 * PJ)
    ann_parts = dict(parts, total=20 * PJ)
    snn = dict(macs=0.0, synops=1.0, neuron_updates=1.0, neurons=1.0, spikes=2.0, spikes_per_neuron=2.0)
    out = energy_metrics(snn, dict(macs=1.0, neurons=1.0), spiking=True,
                         parts={"lemaire-45nm": parts}, ann_parts={"lemaire-45nm": ann_parts})
    assert out["energy_ratio/lemaire-45nm"] == pytest.approx(0.5)
    assert out["energy_parts_nJ/lemaire-45nm/memory"] == pytest.approx(8e-3)
    # E(s) = 4 + s · (10 − 4) / 2 pJ = 20 pJ  ->  s = 16 / 3
    assert out["break_even_spikes_per_neuron/lemaire-45nm"] == pytest.approx(16 / 3)
    assert "energy_nJ/lemaire-45nm" not in energy_metrics(snn, None, spiking=True)  # no breakdown: skipped


def test_lemaire_ann_counted_by_hand():
    """The ANN side of the memory-aware model, one inference: a Linear(3 → 2, bias) and a
    Conv2d(1 → 2, 2x2, no bias) on a 3x3 map, both fed real values, neither spiking. Every count
    below comes from Lemaire et al.'s rules (and SpikingJelly's profiler): a dense MAC per weight use
    with one weight read each; inputs read once per pass (a convolution: once per weight use); one
    add and one read per bias; the outputs written; addressing adds per input, output and (conv) tap.
    Wrong variants: conv inputs read once per pass, output writes left out, biases charged as MACs,
    the 45 nm costs swapped."""
    m = Meters()
    fc, conv = nn.Linear(3, 2), nn.Conv2d(1, 2, 2, bias=False)
    m.record_synapse("fc", fc, torch.ones(1, 3), spikes=False, reads_input=True)
    m.record_synapse("conv", conv, torch.ones(1, 1, 3, 3), spikes=False, reads_input=True)
    m.samples = 1
    p = lemaire_breakdown(m, spiking=False)
    add, mul = 0.1, 3.1  # pJ
    # MACs: fc 3 x 2 = 6; conv 2 x 2 x 2 outputs x 4 taps = 32; bias adds: fc's 2 outputs
    assert p["compute"] == pytest.approx((2 * add + 38 * (mul + add)) * PJ)
    # addressing adds: fc 3 inputs + 2 outputs; conv 9 inputs + 8 outputs + 2 x 4 taps
    assert p["addressing"] == pytest.approx((5 + 25) * add * PJ)
    sram = _sram_pj_per_byte
    inout = (3 * 4 * sram(12) + 2 * 4 * sram(8)  # fc: read 3 inputs, write 2 outputs
             + 32 * 4 * sram(36) + 8 * 4 * sram(32))  # conv: an input read per weight use, 8 outputs written
    params = (6 + 2) * 4 * sram(32) + 32 * 4 * sram(32)  # fc: 6 weights + 2 biases; conv: 32 weight uses of 8
    assert p["memory_inout"] == pytest.approx(inout * PJ)
    assert p["memory_params"] == pytest.approx(params * PJ)
    assert p["memory_potential"] == 0.0  # an ANN keeps no membrane
    assert p["no_spikes"] == pytest.approx(p["total"])  # nothing in an ANN scales with spikes


def test_synops_if_spiking_and_input_layer_macs_by_hand():
    """An ANN read as a one-step SNN: the layer reading the input keeps its dense MACs; every other
    layer costs its effective operations (non-zero inputs × non-zero fan-out). Here fc2 receives 2
    non-zero activations (inputs 0 and 2), reaching 2 and 3 non-zero weights: 5. Wrong variants:
    the input layer counted as effective ops, zero activations or zero weights counted."""
    from harness.energy import as_converted

    m = Meters()
    fc1, fc2 = nn.Linear(2, 3, bias=False), nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        fc2.weight.copy_(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))  # fan-outs 2, 2, 3
    m.record_synapse("fc1", fc1, torch.tensor([[0.3, -0.2]]), spikes=False, reads_input=True)
    m.record_synapse("fc2", fc2, torch.tensor([[0.5, 0.0, 2.0]]), spikes=False, reads_input=False)
    m.record_predictions(torch.zeros(1), torch.zeros(1))
    s, _ = m.summary()
    assert s["input_layer_macs"] == 6.0 and s["synops_if_spiking"] == 2 + 3
    view = as_converted(dict(s, neurons=3.0))
    assert (view["macs"], view["synops"], view["neuron_updates"]) == (6.0, 5.0, 3.0)
