"""Meters: hand-derived cases and a cross-check against SpikingJelly's op_counter."""

import pytest
import torch
from harness.evaluation import AnnEvaluable, GraphSNN, Outputs, evaluate
from harness.graph import Kind, register_module_kind, trace
from harness.meters import Meters, connection_sparsity, dense_macs_per_pass, fanout_map
from torch import nn


def meter_ann(model, loader):
    x = next(iter(loader))[0]
    return evaluate(AnnEvaluable(trace(model, tuple(x.shape[1:]))), loader)


def test_linear_by_hand():
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
    assert fanout_map(lin, (3,)).tolist() == [1.0, 0.0, 2.0]
    m = Meters(timesteps=2)
    # one sample, two time steps: spikes [1,1,0] then [1,1,1] -> 1 + 0 + (1 + 0 + 2) = 4 synops
    m.record_synapse("fc", lin, torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 1.0, 1.0]]]), spikes=True)
    m.record_batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    metrics, rows = m.summary()
    assert metrics["synops"] == 4.0
    assert metrics["layer/fc/synops"] == 4.0
    assert metrics["macs"] == 0.0 and rows[0]["dense_macs"] == 12.0  # 2 passes x 6 weights
    assert metrics["connection_sparsity"] == 0.5
    # spike counts summed over time give the same synops (summing commutes with the weight pass)
    m2 = Meters(timesteps=2)
    m2.record_synapse("fc", lin, torch.tensor([[2.0, 2.0, 1.0]]), spikes=True, rows=2)
    m2.record_batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    assert m2.summary()[0]["synops"] == 4.0


def test_conv_fanout_by_hand():
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]]))
    # each input pixel of a 3x3 map reaches the non-zero kernel taps that land on valid outputs
    expected = [[1, 1, 0], [2, 3, 1], [1, 2, 1]]
    assert fanout_map(conv, (1, 3, 3))[0].tolist() == expected
    assert fanout_map(conv, (1, 3, 3), nonzero=False).sum() == 16  # 4 outputs x 4 taps
    padded = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    assert dense_macs_per_pass(padded, (1, 3, 3)) == 81  # padding taps count as dense MACs
    assert fanout_map(padded, (1, 3, 3), nonzero=False).sum() == 49  # ... but reach no input
    m = Meters()
    spikes = torch.zeros(1, 1, 3, 3)
    spikes[0, 0, 0, 2] = 1
    spikes[0, 0, 1, 1] = 1
    m.record_synapse("conv", conv, spikes, spikes=True)
    analog = torch.tensor([[[[0.5, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])
    m.record_synapse("conv_a", conv, analog, spikes=False)
    m.record_batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    metrics, _ = m.summary()
    assert metrics["layer/conv/synops"] == 3.0  # 0 + 3
    assert metrics["layer/conv_a/macs"] == 16.0
    assert metrics["layer/conv_a/macs_effective"] == 4.0  # 1 + 3
    # NeuroBench's Dense counts every tap that lands on the input, zero weights included
    assert metrics["macs_dense_nopad"] == 16.0


def test_conv1d_by_hand():
    conv = nn.Conv1d(1, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 2.0]], [[0.0, 3.0]]]))
    # input positions 0..2 of length 3; outputs 0..1; tap k of output o reads position o + k
    assert fanout_map(conv, (1, 3)).tolist() == [[1.0, 3.0, 2.0]]
    m = Meters()
    m.record_synapse("c", conv, torch.tensor([[[1.0, 0.0, 1.0]], [[0.0, 1.0, 0.0]]]), spikes=True)  # B = 2
    m.record_batch(torch.zeros(2, 2), torch.zeros(2, dtype=torch.long))
    assert m.summary()[0]["layer/c/synops"] == (1.0 + 2.0 + 3.0) / 2  # per inference


def test_counts_accumulate_over_batches():
    m = Meters(timesteps=1)
    m.record_neurons("n", torch.tensor([[1.0, 0.0], [0.0, 0.0]]), shape=(2,))
    m.record_predictions(torch.tensor([1, 0]), torch.tensor([1, 1]))
    m.record_neurons("n", torch.tensor([[1.0, 1.0]]), shape=(2,))
    m.record_predictions(torch.tensor([2]), torch.tensor([2]))
    # pre-aggregated counts (the rate simulator's and ttfs's path) add up the same way
    m.record_neuron_counts("agg", spikes=1.0, entries=4.0, zeros=3.0)
    m.record_neuron_counts("agg", spikes=3.0, entries=2.0, zeros=0.0)
    metrics, _ = m.summary()
    assert metrics["test/accuracy"] == 2 / 3 and metrics["samples"] == 3
    assert metrics["layer/n/neurons"] == 2 and metrics["layer/n/spikes_per_neuron"] == 3 / 6
    assert metrics["layer/agg/neurons"] == 2 and metrics["layer/agg/spikes_per_neuron"] == 4 / 6
    assert metrics["layer/agg/activation_sparsity"] == 3 / 6


def test_neuron_counts_by_hand():
    m = Meters(timesteps=2, keep_per_neuron=True)
    out = torch.tensor([[[1.0, 0.0, 0.0, 1.0]], [[0.0, 0.0, 0.0, 1.0]]])  # T=2, B=1, N=4
    m.record_neurons("lif", out, shape=(4,))
    m.record_batch(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))
    metrics, _ = m.summary()
    assert metrics["spikes_per_neuron"] == 0.75
    assert metrics["activation_sparsity"] == 5 / 8
    assert metrics["neuron_updates"] == 8
    assert metrics["layer/lif/firing_rate_hz"] == pytest.approx(0.75 / 2e-3)
    assert m.firing_rates()["lif"].tolist() == pytest.approx([500.0, 0.0, 0.0, 1000.0])


def test_connection_sparsity_of_pruned_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[:2] = 0
    assert connection_sparsity(model) == pytest.approx(8 / 24)


def _snn(seed=0):
    from spikingjelly.activation_based import neuron

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), neuron.IFNode(v_threshold=0.2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), neuron.IFNode(v_threshold=0.2),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )


class _Binary(nn.Module):
    """An input encoder for the cross-check: its output is the (already binary) input."""

    def forward(self, x):
        return x


register_module_kind(_Binary, Kind.ENCODER)


def _metered_snn(model: nn.Module, x: torch.Tensor, spike_input: bool) -> dict:
    """The harness's meters on a SpikingJelly network through the traced graph (one time step)."""
    from spikingjelly.activation_based import neuron

    register_module_kind(neuron.IFNode, Kind.NEURON)
    net = nn.Sequential(_Binary(), *model) if spike_input else model
    ev = GraphSNN(trace(net, tuple(x.shape[1:])), 1, lambda out, T, B: Outputs(logits=out))
    return evaluate(ev, [(x, torch.zeros(len(x), dtype=torch.long))]).metrics


def test_cross_check_spikingjelly_op_counter():
    """SynOps on spike inputs and MACs on analog inputs agree with SpikingJelly's counters
    (dense random weights: SpikingJelly counts every weight, the harness only non-zero ones)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    model = _snn()
    torch.manual_seed(1)
    x_spk = (torch.rand(3, 2, 6, 6) < 0.3).float()
    x_analog = torch.rand(3, 2, 6, 6)
    for x, spike_input in ((x_spk, True), (x_analog, False)):
        functional.reset_net(model)
        syn, mac = SynOpCounter(), MACCounter()
        with torch.no_grad(), DispatchCounterMode([syn, mac]):
            model(x)
        functional.reset_net(model)
        metrics = _metered_snn(model, x, spike_input)
        assert metrics["synops"] > 0
        assert metrics["synops"] * 3 == pytest.approx(syn.get_total())
        assert metrics["macs"] * 3 == pytest.approx(mac.get_total())


def test_zero_weights_are_not_synops():
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, SynOpCounter

    model = _snn()
    with torch.no_grad():
        model[2].weight[:, :2] = 0  # half of conv2's input channels disconnected
    x = (torch.rand(3, 2, 6, 6) < 0.3).float()
    syn = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([syn]):
        model(x)
    functional.reset_net(model)
    dense = _metered_snn(model, x, True)["synops"]
    assert dense * 3 < syn.get_total()


def test_meter_ann_counts_dense_macs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(5, 1, 4, 4)
    loader = [(x, torch.zeros(5, dtype=torch.long))]
    ev = meter_ann(model, loader)
    metrics = ev.metrics
    assert metrics["macs"] == 16 * 8 + 8 * 3
    relu_out = torch.relu(model[1](x.flatten(1)))
    assert metrics["activation_sparsity"] == pytest.approx(float((relu_out == 0).float().mean()))
    assert metrics["neurons"] == 8
    assert metrics["synops"] == 0.0


def test_per_neuron_counts_keep_the_layer_shape():
    m = Meters(timesteps=2, keep_per_neuron=True)
    spikes = torch.zeros(2, 3, 2, 2, 2)  # [T, B, C, H, W]
    spikes[0, 0, 1, 0, 1] = 1
    spikes[1, 2, 1, 0, 1] = 1
    spikes[1, 1, 0, 1, 0] = 1
    m.record_neurons("conv", spikes, shape=(2, 2, 2))
    m.record_neurons("conv_folded", spikes.reshape(6, 2, 2, 2), shape=(2, 2, 2))  # time folded into the batch
    m.record_batch(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    for name in ("conv", "conv_folded"):
        per = m.neurons[name].per_neuron
        assert per.shape == (2, 2, 2)  # one count per neuron
        assert per[1, 0, 1] == 2 and per[0, 1, 0] == 1 and per.sum() == 3
    rates = m.firing_rates()["conv"]
    assert rates.shape == (8,) and rates.max() == pytest.approx(2 / (3 * 2 * 1e-3))


def test_per_neuron_counts_of_a_conv1d_map_follow_its_shape_not_the_tensor_rank():
    """A Conv1d map's neurons are (C, L): a [T, B, C, L] tensor has the rank of a Conv2d map's
    [B, C, H, W]; counting by rank would take (B, C, L) as the neurons."""
    m = Meters(timesteps=2, keep_per_neuron=True)
    spikes = torch.zeros(2, 3, 2, 4)  # [T, B, C, L]
    spikes[0, 0, 1, 3] = 1
    spikes[1, 2, 1, 3] = 1
    m.record_neurons("conv1d", spikes, shape=(2, 4))
    per = m.neurons["conv1d"].per_neuron
    assert per.shape == (2, 4) and per[1, 3] == 2 and per.sum() == 2


def test_every_summary_formula_by_hand():
    """Two samples, T = 3: an input layer fed real values (a negative one among them), a spike-fed
    layer, two neuron layers. Every figure below is computed by hand from the counts recorded.
    Wrong variants it catches: zeros counted as non-zero (or negatives as zero) in effective MACs,
    spikes per neuron over neurons × T, sparsity per layer averaged instead of pooled, rates in
    Hz with dt inverted, neuron updates without T, the input layer's MACs charged as SynOps."""
    m = Meters(timesteps=3, dt=1e-3)
    inp = nn.Linear(2, 2, bias=False)
    hid = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        inp.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))  # fan-outs: input 0 -> 2, input 1 -> 1
        hid.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))  # fan-outs 2, 2
    # analog input: sample 0 = (0.5, 0), sample 1 = (-1, 2): non-zero inputs reach 2 + 0 and 2 + 1 weights
    m.record_synapse("in", inp, torch.tensor([[0.5, 0.0], [-1.0, 2.0]]), spikes=False, reads_input=True)
    spikes = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]])  # T, B, 2
    m.record_synapse("hid", hid, spikes, spikes=True, reads_input=False)  # 5 spikes x fan-out 2 = 10 SynOps
    m.record_neurons("n1", spikes, shape=(2,))  # 5 spikes in 3 x 2 x 2 = 12 entries
    m.record_neuron_counts("n2", spikes=3.0, entries=18.0, zeros=15.0)  # 3 neurons x 3 steps x 2 samples
    m.record_predictions(torch.tensor([1, 0]), torch.tensor([1, 1]))
    s, rows = m.summary()
    assert s["test/accuracy"] == 0.5 and s["samples"] == 2 and s["timesteps"] == 3
    assert s["layer/in/macs"] == 4.0 and s["layer/in/macs_effective"] == 2.5  # (2 + 3) / 2
    assert s["layer/in/synops"] == 0.0 and s["layer/hid/synops"] == 5.0 and s["layer/hid/macs"] == 0.0
    assert (s["macs"], s["macs_effective"], s["synops"]) == (4.0, 2.5, 5.0)
    assert s["macs_dense_equivalent"] == 4.0 + 3 * 6  # hid densely: 3 steps x 3 outputs x 2 inputs
    assert s["input_layer_macs"] == 4.0 and s["synops_if_spiking"] == 5.0
    assert s["synop_capacity"] == 4.0  # every input of hid spiking once: 2 + 2 non-zero weights
    assert s["connection_sparsity"] == pytest.approx(3 / 10)  # zero weights: 1 of 4 and 2 of 6
    assert s["layer/in/connection_sparsity"] == 0.25 and s["layer/hid/connection_sparsity"] == pytest.approx(2 / 6)
    assert s["neurons"] == 5.0 and s["spikes"] == 4.0  # (5 + 3) spikes / 2 samples
    assert s["spikes_per_neuron"] == pytest.approx(4 / 5)
    assert s["activation_sparsity"] == pytest.approx((7 + 15) / (12 + 18))
    assert s["neuron_updates"] == 15.0  # 5 neurons x 3 steps
    assert s["layer/n1/spikes_per_neuron"] == 1.25 and s["layer/n2/spikes_per_neuron"] == 0.5
    assert s["layer/n1/firing_rate_hz"] == pytest.approx(1.25 / 3e-3)
    assert s["layer/n1/activation_sparsity"] == pytest.approx(7 / 12)
    assert {r["layer"]: r["input"] for r in rows if "input" in r} == {"in": "analog", "hid": "spikes"}


def test_without_a_reads_input_flag_the_first_layer_recorded_reads_the_input():
    m = Meters()
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    m.record_synapse("a", a, torch.ones(1, 2), spikes=False)
    m.record_synapse("b", b, torch.ones(1, 2), spikes=False)
    m.record_predictions(torch.zeros(1), torch.zeros(1))
    s, _ = m.summary()
    assert s["input_layer_macs"] == 4.0 and s["synops_if_spiking"] == 4.0  # b's effective ops


def test_fanouts_of_a_strided_padded_convolution_on_a_map_its_stride_does_not_divide():
    """Stride 2, padding 1, kernel 3 on a 5x5 map: each input element reaches the outputs whose
    window covers it, counted here by brute force over output positions (no meter code)."""
    conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]]]))
    w = conv.weight[0, 0]
    expected = torch.zeros(5, 5)
    for oy in range(3):  # (5 + 2 - 3) // 2 + 1 = 3 outputs per side
        for ox in range(3):
            for ky in range(3):
                for kx in range(3):
                    iy, ix = 2 * oy - 1 + ky, 2 * ox - 1 + kx
                    if 0 <= iy < 5 and 0 <= ix < 5 and w[ky, kx] != 0:
                        expected[iy, ix] += 1
    assert torch.equal(fanout_map(conv, (1, 5, 5))[0].float(), expected)
    assert dense_macs_per_pass(conv, (1, 5, 5)) == 9 * 9  # 9 outputs x 9 taps, padding taps included
