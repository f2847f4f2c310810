"""rate's options for few time steps: per-channel thresholds (checked against SpikingJelly's
``LocalThresholdBalancingRecipe``, which shares no code with the harness), gated max pooling (a
hand-built window, spikes and SynOps derived by hand), and light calibration (the first layer's
correction recomputed here from the IF equations)."""

import numpy as np
import pytest
import torch
from harness.graph import Kind, trace
from harness.meters import Meters
from harness.methods.rate import RateEvaluable, RateModel, RateParams, calibrated_model
from harness.simulate import NeuronPool, Simulator
from torch import nn

from regression_cases import load_nets


# ---------------------------------------------------------------------------------------------
# gated max pooling: a scripted spike train through one 2x2 window


class Scripted(nn.Module):
    """Stands in for a neuron pool: emits a fixed spike train ``[T, 1, 1, 2, 2]`` whatever its input."""

    kind, backend = "IFNode", "inplace"

    def __init__(self, spikes):
        super().__init__()
        self.spikes, self.t = torch.tensor(spikes, dtype=torch.float32), 0

    def reset(self):
        self.t = 0

    def forward(self, x, steps=None):
        T = steps if steps is not None else x.shape[0]
        out = self.spikes[self.t:self.t + T].reshape(T, 1, 1, 2, 2).expand(T, x.shape[-4], 1, 2, 2).clone()
        self.t += T
        return out


# window in raster order (top-left, top-right, bottom-left, bottom-right), 1 = a spike at that step
TRAIN = [[1, 0, 0, 0],  # t1: only TL has spiked (counts 1,0,0,0): TL passes its spike
         [0, 0, 0, 1],  # t2: TL and BR tie at 1: the first in raster order (TL) is the gate, silent now
         [0, 0, 0, 1],  # t3: BR leads (2): its spike passes
         [1, 0, 0, 1],  # t4: BR leads (3): passes
         [1, 0, 0, 0]]  # t5: BR 3, TL 3: tie, TL first: TL's spike passes
GATED = [1, 0, 1, 1, 1]  # by hand from the comments
UNGATED = [1, 1, 1, 1, 1]  # any spike of the window


def _pool_net(gate: bool, time_chunk: int):
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(1, 3))
    graph = trace(net, (1, 2, 2)).folded()
    model = RateModel(graph, {op.name: 1.0 for op in graph.neurons}, gate=gate)
    rn = model.convert(RateParams(timesteps=5))
    (name,) = rn.neurons
    rn.neurons[name] = Scripted(TRAIN)
    readout = dict(net.named_children())["4"]
    with torch.no_grad():
        readout.weight.copy_(torch.tensor([[1.0], [0.5], [0.25]]))
        readout.bias.zero_()
    rn.layers["4"].load_state_dict(readout.state_dict())
    return Simulator(rn, time_chunk=time_chunk), graph


@pytest.mark.parametrize("time_chunk", [1, 2, 5])
@pytest.mark.parametrize("gate,want", [(True, GATED), (False, UNGATED)])
def test_a_gated_max_pool_passes_the_busiest_inputs_spikes_and_synops_count_what_passed(gate, want, time_chunk):
    """The busiest input is not the first to spike; a tie goes to the first in raster order; the
    gate's counts carry over time chunks. Wrong variants: gating on this step's spikes alone,
    the last input on a tie, counts reset per chunk, SynOps counted before the gate."""
    sim, graph = _pool_net(gate, time_chunk)
    readout = graph.synapses[-1].name
    seen = []
    sim.net.layers[readout].register_forward_hook(lambda m, i, o: seen.append(i[0].flatten()))
    meters = Meters(timesteps=5)
    sim.run(torch.ones(1, 1, 2, 2), 5, meters)
    assert torch.cat(seen).tolist() == want  # what reached the readout, step by step
    st = meters.synapses[readout]
    assert st.input_spikes == sum(want)
    assert st.effective_ops == 3 * sum(want)  # each passed spike reaches 3 readout units
    assert meters.neurons[graph.neurons[0].name].spikes == sum(sum(row) for row in TRAIN)


@pytest.mark.parametrize("tau", [None, 4.0])
def test_a_per_neuron_initial_membrane_is_the_same_in_both_kernels(tau):
    """Light calibration's per-neuron v_init: the in-place loop and SpikingJelly's node start each
    neuron from its own value, in every image of the batch, and carry the state across chunks
    (membranes land exactly on the threshold: multiples of 1/8). Wrong variants: the tensor
    dropped for SpikingJelly (every membrane from 0), one image's membranes only."""
    torch.manual_seed(0)
    v0 = torch.randint(-4, 8, (3, 2, 2)).float() / 8
    x = torch.randint(-2, 9, (6, 5, 3, 2, 2)).float() / 8
    fast, ref = NeuronPool(tau, "inplace", v0), NeuronPool(tau, "spikingjelly", v0)
    got = torch.cat([fast(x[:2]), fast(x[2:])])
    assert torch.equal(got, ref(x))
    flat = NeuronPool(tau, "inplace", 0.0)
    assert not torch.equal(got, flat(x))  # the initial membranes matter here
    v = v0.clone().expand(5, 3, 2, 2).clone()  # by hand, IF or LIF, threshold 1, reset by subtraction
    for t in range(6):
        v = (v * (1 - 1 / tau) if tau else v) + x[t]
        s = (v >= 1).float()
        assert torch.equal(got[t], s)
        v = v - s


def test_pools_that_spikes_reach_gate_and_pools_of_currents_stay_max_pools():
    """A pool after an add of two spiking layers gates (its inputs' activity is the sum of their
    spikes); a pool between a layer and its ReLU pools currents, exact as it is, and stays a max
    pool. Wrong variants: refusing the add, gating currents."""
    from harness.methods.rate import gated_pools

    class AddThenPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.relu2 = nn.Conv2d(1, 2, 1), nn.ReLU(), nn.ReLU()
            self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.pool(self.relu(self.conv(x)) + self.relu2(self.conv(x))).flatten(1))

    class PoolThenRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu, self.conv2 = nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1)
            self.pool, self.relu2, self.fc = nn.MaxPool2d(2), nn.ReLU(), nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.relu2(self.pool(self.conv2(self.relu(self.conv(x))))).flatten(1))

    assert gated_pools(trace(AddThenPool(), (1, 2, 2)).folded()) == {"pool"}
    assert gated_pools(trace(PoolThenRelu(), (1, 2, 2)).folded()) == frozenset()
    # and the add's pool simulates: both neurons fire every step, so every step passes 2 events
    graph = trace(AddThenPool(), (1, 2, 2)).folded()
    model = RateModel(graph, {op.name: 1.0 for op in graph.neurons}, gate=True)
    net = model.convert(RateParams(timesteps=3))
    with torch.no_grad():
        for name in [n for n in net.layers if n != "fc"]:  # the conv, called twice
            net.layers[name].weight.fill_(1.0)
            net.layers[name].bias.zero_()
    meters = Meters(timesteps=3)
    Simulator(net).run(torch.ones(1, 1, 2, 2), 3, meters)
    assert meters.synapses["fc"].input_spikes == 2 * 2 * 3  # 2 channels × 2 events × 3 steps


# ---------------------------------------------------------------------------------------------
# per-channel thresholds: SpikingJelly's LocalThresholdBalancingRecipe on the same network and images


def _stored(model, ds):
    from harness.models import build_model

    net = build_model(model, ds.input_shape, ds.num_classes)
    net.load_state_dict(load_nets()[f"ann/{model}"])
    return net.eval()


def _spikingjelly_ltb(net, x_cal, batch):
    import copy

    from spikingjelly.activation_based import ann2snn
    from spikingjelly.activation_based.ann2snn.modules import ChannelVoltageScaler
    from spikingjelly.activation_based.ann2snn.recipes import LocalThresholdBalancingRecipe

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_cal, torch.zeros(len(x_cal))),
                                         batch_size=batch)
    snn = ann2snn.Converter(LocalThresholdBalancingRecipe(loader)).convert(copy.deepcopy(net))
    thresholds = [m.scale.clone() for name, m in snn.named_modules()
                  if isinstance(m, ChannelVoltageScaler) and name.endswith("scaler1")]
    return snn, thresholds


def _sj_predict(snn, x, T):
    from spikingjelly.activation_based import functional

    with torch.no_grad():
        functional.reset_net(snn)
        out = sum(snn(x) for _ in range(T))
    return out.argmax(-1)


@pytest.mark.parametrize("model", ["cnn7", "resnet-small"])
def test_channel_thresholds_and_predictions_match_spikingjellys_local_threshold_balancing(model, digits):
    """Same stored network, same 300 calibration images in batches of 10: every channel's λ equals
    SpikingJelly's threshold, and the two spiking networks (IF, membrane from half the threshold,
    reset by subtraction, input as a current, summed logits) predict alike at T = 16. Wrong
    variants: λ per layer, another update rule or batch size, the membrane from 0."""
    net = _stored(model, digits)
    x_cal = torch.from_numpy(digits.x["train"][:300])
    x_test = torch.from_numpy(digits.x["test"])
    snn, sj = _spikingjelly_ltb(net, x_cal, 10)
    graph = trace(net, digits.input_shape).folded()
    params = RateParams(timesteps=16, normalization="ltb", ltb_batch=10)
    m = calibrated_model(graph, x_cal, params)
    ours = [m.lams[op.name] * m.channel[op.name] for op in graph.neurons]
    assert len(ours) == len(sj) == len(graph.neurons)
    theirs = [b.flatten().float() for b in sj]  # SpikingJelly names its modules in another order: match each
    for a in ours:
        hit = [k for k, b in enumerate(theirs) if b.shape == a.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)]
        assert hit, f"no SpikingJelly threshold equals {a}"
        theirs.pop(hit[0])
    assert not all(torch.allclose(t, t.max().expand_as(t)) for t in m.channel.values())  # channels differ
    preds = Simulator(m.convert(params)).run(x_test, 16)[-1]
    assert (preds == _sj_predict(snn, x_test, 16)).float().mean() >= 0.99


def test_channel_thresholds_are_each_channels_percentile_of_its_positive_activations():
    """normalization=channel: λ_c = NumPy's percentile of channel c's positive activations; a silent
    channel takes the layer's λ. Wrong variants: the layer's percentile for every channel, zeros
    counted, the channel dimension mixed up with positions."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0, -1.0]).reshape(3, 1, 1, 1))
        net[0].bias.copy_(torch.tensor([0.0, -0.5, -10.0]))  # channel 2 never fires
    x = torch.rand(50, 1, 2, 2)
    graph = trace(net, (1, 2, 2)).folded()
    m = calibrated_model(graph, x, RateParams(normalization="channel", percentile=90.0))
    pre = np.stack([x.numpy()[:, 0] * w + b for w, b in ((1.0, 0.0), (2.0, -0.5))])  # [channel, N, 2, 2]
    want = [np.percentile(c[c > 0], 90.0) for c in pre]
    layer = np.percentile(np.concatenate([c[c > 0] for c in pre]), 90.0)
    got = (m.lams["1"] * m.channel["1"]).numpy()
    assert np.allclose(got, [*want, layer], rtol=1e-5)
    assert m.lams["1"] == pytest.approx(max(*want, layer), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# light calibration: the bias corrections recomputed from the IF equations


def _if_counts(currents, T, v0=0.5):
    """Spike counts of IF neurons (threshold 1, reset by subtraction, membrane from v0) driven by
    ``currents[t]`` (or a constant current), in NumPy."""
    v = np.full(currents.shape[1:], v0)
    spikes = []
    for t in range(T):
        v = v + currents[t]
        s = (v >= 1.0).astype(np.float64)
        v = v - s
        spikes.append(s)
    return np.array(spikes)


def test_bias_calibration_moves_each_bias_by_the_layers_mean_excess_over_the_ann():
    """Two hidden layers, λ = 1 (no normalisation), T = 4, membranes from 0 (floor: a systematic
    deficit to correct): layer 1's correction is the mean over
    images of (spikes/T − clip(ReLU(c), 0, 1)) for its constant current c; layer 2's is measured on
    the network with layer 1 already corrected, against the *uncorrected* ANN. Wrong variants: the
    sign, the unclipped ANN, layer 2 measured before layer 1's correction, the ANN with corrections."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[2].bias.fill_(0.3)  # layer 2 active, so that it has an error to correct
    x = torch.rand(16, 4) * 2
    graph = trace(net, (4,)).folded()
    model = RateModel(graph, {op.name: 1.0 for op in graph.neurons})
    T = 4
    from harness.methods.rate import light_calibration

    light_calibration(model, RateParams(timesteps=T, v_init=0.0), x, potentials=False)
    shifts = model.shifts
    W1, b1 = net[0].weight.detach().double().numpy(), net[0].bias.detach().double().numpy()
    W2, b2 = net[2].weight.detach().double().numpy(), net[2].bias.detach().double().numpy()
    xs = x.double().numpy()
    c1 = xs @ W1.T + b1
    a1 = np.maximum(c1, 0)
    a2 = np.clip(np.maximum(a1 @ W2.T + b2, 0), 0, 1)
    d1 = -(_if_counts(np.broadcast_to(c1, (T, *c1.shape)), T, 0.0).mean((0, 1)) - np.clip(a1, 0, 1).mean(0))
    s1 = _if_counts(np.broadcast_to(c1 + d1, (T, *c1.shape)), T, 0.0)
    d2 = -(_if_counts(s1 @ W2.T + b2, T, 0.0).mean((0, 1)) - a2.mean(0))
    assert set(shifts) == {"0", "2"}
    assert np.allclose(shifts["0"].numpy(), d1, atol=1e-6)
    assert np.allclose(shifts["2"].numpy(), d2, atol=1e-6)
    assert np.abs(d1).sum() > 0.01 and np.abs(d2).sum() > 0.01, (d1, d2)  # the case corrects something
    # the converted layers carry the corrections
    rn = model.convert(RateParams(timesteps=T, v_init=0.0))
    assert np.allclose(rn.layers["0"].bias.detach().numpy(), b1 + d1, atol=1e-6)
    # light = bias, then per-neuron potentials: v0 − T·(spikes/T − ANN), layer 2 measured with
    # layer 1's potentials in place
    light_calibration(model, RateParams(timesteps=T, v_init=0.0), x, potentials=True)
    c1b = np.broadcast_to(c1 + d1, (T, *c1.shape))
    p1 = -T * (_if_counts(c1b, T, 0.0).mean((0, 1)) - np.clip(a1, 0, 1).mean(0))
    s1 = _if_counts(c1b, T, p1)
    p2 = -T * (_if_counts(s1 @ W2.T + b2 + d2, T, 0.0).mean((0, 1)) - a2.mean(0))
    assert np.allclose(model.potentials["1"].numpy(), p1, atol=1e-5)
    assert np.allclose(model.potentials["3"].numpy(), p2, atol=1e-5)
    assert np.abs(p1).sum() > 0.1
    pools = model.convert(RateParams(timesteps=T, v_init=0.0)).neurons
    assert np.allclose(pools["1"].v_init.numpy(), p1, atol=1e-5)


def test_bias_calibration_brings_a_stored_networks_rates_to_the_anns(digits):
    """On the stored vgg-small at T = 8, per-channel mean activity of every layer is closer to the
    ANN's after light calibration than before (the correction's purpose), and accuracy is no lower.
    Deterministic: stored weights, the first 300 training images."""
    from harness.methods.rate import light_calibration

    net = _stored("vgg-small", digits)
    x = torch.from_numpy(digits.x["train"][:300])
    graph = trace(net, digits.input_shape).folded()
    params = RateParams(timesteps=8)
    plain = calibrated_model(graph, x, params)
    ann = {}
    graph.run(x, lambda op, a, out: ann.__setitem__(op.name, out) if op.kind == Kind.NEURON else None)

    def error(model):
        meters = Meters(timesteps=8, keep_per_neuron=True)
        Simulator(model.convert(params)).run(x, 8, meters)
        out = {}
        for n, lam in model.lams.items():
            rate = meters.neurons[n].per_neuron.double() / (8 * len(x)) * lam
            ref = ann[n].clamp(0, lam).double().mean(0)
            dims = (1, 2) if rate.dim() == 3 else ()
            out[n] = float((rate.mean(dims) - ref.mean(dims) if dims else rate - ref).abs().mean())
        return out

    before = error(plain)
    light_calibration(plain, params, x, potentials=False)
    after = error(plain)
    assert all(after[n] < before[n] for n in before), (before, after)
    x_test, y = torch.from_numpy(digits.x["test"]), torch.from_numpy(digits.y["test"])
    acc = {k: float((Simulator(m.convert(params)).run(x_test, 8)[-1] == y).float().mean())
           for k, m in (("light", plain), ("none", calibrated_model(graph, x, params)))}
    assert acc["light"] >= acc["none"], acc


@pytest.mark.parametrize("time_chunk", [1, 3, 64])
def test_counting_one_layers_spikes_stops_there_and_counts_what_the_full_simulation_counts(digits, time_chunk):
    """Light calibration simulates each layer only up to itself: its counts equal the metered full
    run's, whatever the time chunks (a stop that forgot later chunks, or counted one step twice, fails)."""
    net = _stored("resnet-small", digits)
    x = torch.from_numpy(digits.x["test"][:40])
    graph = trace(net, digits.input_shape).folded()
    params = RateParams(timesteps=7)
    rn = calibrated_model(graph, torch.from_numpy(digits.x["train"][:100]), params).convert(params)
    meters = Meters(timesteps=7, keep_per_neuron=True)
    Simulator(rn, time_chunk=time_chunk).run(x, 7, meters)
    for op in graph.neurons:
        part = Simulator(rn, time_chunk=time_chunk, batch_chunk=16).spike_counts(x, 7, op.name)
        assert torch.equal(part.float(), meters.neurons[op.name].per_neuron.float()), op.name
