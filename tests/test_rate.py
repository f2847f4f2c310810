"""rate / layer-scaling: the chunked, time-folded simulator against a reference written from the
formulas (plain torch loops; none of the simulator's neurons, filter or decoder), the scale plan
against W·λ_in/λ_out by hand, neurons at exactly their threshold, and residual networks."""

import math

import pytest
import torch
import torch.nn.functional as F
from harness.errors import ConfigError, HarnessError
from harness.graph import trace
from harness.meters import Meters
from harness.methods.rate import RateModel, RateParams, calibrate_scales, plan_scales, rate_problems
from harness.simulate import NeuronPool, Simulator
from torch import nn


def _ann(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3),
    ).eval()


def reference(net, x, T, *, tau_lif=None, synapse=None, dt=1e-3, decode="membrane", v_init=0.0):
    """The converted sequential network of ``_ann`` stepped one time step at a time, written from
    the formulas: v ← v·(1 − 1/τ) + I; s = [v ≥ 1]; v ← v − s; y ← a·y + (1 − a)·s with
    a = exp(−dt/τ_syn); the readout current integrated over time (membrane), its IF spikes
    counted (spikes) or low-passed (filtered). Predictions after every step, [T, B]."""
    layers = [net.layers[n] for n in ("0", "3", "7", "9")]
    pre = [lambda h: h, lambda h: F.avg_pool2d(h, 2), lambda h: torch.flatten(F.max_pool2d(h, 2), 1), lambda h: h]
    a = None if synapse is None else math.exp(-dt / synapse)
    decay = 1.0 if tau_lif is None else 1.0 - 1.0 / tau_lif
    v = [None] * 3
    y = [None] * 3
    v_out = None
    y_out = None
    acc = None
    preds = []
    current0 = layers[0](x)
    for _ in range(T):
        h = current0
        for i in range(3):
            v[i] = (torch.full_like(h, v_init) if v[i] is None else v[i]) * decay + h
            s = (v[i] >= 1.0).to(h.dtype)
            v[i] = v[i] - s
            if a is not None:
                y[i] = (1 - a) * s if y[i] is None else a * y[i] + (1 - a) * s
                s = y[i]
            h = layers[i + 1](pre[i + 1](s))
        if decode == "membrane":
            out = h
        elif decode == "spikes":
            v_out = h if v_out is None else v_out + h
            out = (v_out >= 1.0).to(h.dtype)
            v_out = v_out - out
        else:
            y_out = (1 - a) * h if y_out is None else a * y_out + (1 - a) * h
            out = y_out
        acc = out if acc is None else acc + out
        preds.append(acc.argmax(-1))
    return torch.stack(preds)


def _converted(params, x, scales=None, seed=0):
    graph = trace(_ann(seed), tuple(x.shape[1:])).folded()
    lams = calibrate_scales(graph, x, "percentile", 99.0)
    return RateModel(graph, lams).convert(params, scales)


@pytest.mark.parametrize("decode,synapse,neuron,v_init", [
    ("membrane", None, "if", 0.0), ("spikes", None, "if", 0.0), ("filtered", 0.005, "if", 0.0),
    ("membrane", 0.002, "lif", 0.0), ("membrane", None, "if", 0.5), ("membrane", 0.002, "lif", 0.5),
])
@pytest.mark.parametrize("backend", ["inplace", "spikingjelly"])
def test_simulator_equals_the_formulas(decode, synapse, neuron, v_init, backend):
    torch.manual_seed(3)
    x = torch.rand(7, 1, 8, 8)
    params = RateParams(timesteps=23, decode=decode, synapse=synapse, neuron=neuron, neuron_backend=backend,
                        v_init=v_init)
    net = _converted(params, x, {"1": 3.0, "4": 3.0, "8": 3.0})
    expected = reference(net, x, 23, tau_lif=None if neuron == "if" else params.lif_tau, synapse=synapse,
                         decode=decode, v_init=v_init)
    for time_chunk, batch_chunk, memory_mb in ((23, 7, 512), (5, 3, 512), (1, 7, 512), (23, 7, 0.001), (23, 7, 0)):
        sim = Simulator(net, synapse=synapse, decode=decode, time_chunk=time_chunk, batch_chunk=batch_chunk,
                        memory_mb=memory_mb)
        got = sim.run(x, 23)
        assert got.shape == (23, 7)
        assert torch.equal(got, expected), (time_chunk, batch_chunk)


def test_neurons_at_exactly_threshold_fire_in_both_backends():
    """Dyadic currents make membranes reach 1.0 exactly: [v ≥ 1] fires there ([v > 1] would not)."""
    x = torch.tensor([[0.25, 0.5, 0.125, 1.0, 0.75, 0.0]]).repeat(12, 1)  # T = 12 steps, one sample
    # by hand: v after k steps = k·I; fires when k·I reaches 1 exactly, then drops by 1
    expected = torch.zeros(12, 6)
    for j, current in enumerate([0.25, 0.5, 0.125, 1.0, 0.75, 0.0]):
        v = 0.0
        for t in range(12):
            v += current
            if v >= 1.0:
                expected[t, j] = 1.0
                v -= 1.0
    assert expected[3, 0] == 1 and expected[1, 1] == 1 and expected[7, 2] == 1 and expected[0, 3] == 1
    for backend in ("inplace", "spikingjelly"):
        pool = NeuronPool(None, backend)
        assert torch.equal(pool(x.unsqueeze(1))[:, 0], expected), backend
        pool.reset()
        got = torch.cat([pool(x[:5].unsqueeze(1)), pool(x[5:].unsqueeze(1))])[:, 0]  # state carries over chunks
        assert torch.equal(got, expected), backend
        pool.reset()
        assert torch.equal(pool(x[0:1], steps=12)[:, 0], expected), backend  # constant input


def test_half_threshold_initial_membrane_rounds_instead_of_flooring():
    """v_init = 0.5: a constant input a gives round(T·a) spikes in T steps (floor with v_init = 0);
    dyadic inputs put T·a + 0.5 exactly on an integer (the tie fires, [v ≥ 1])."""
    currents = [0.0, 0.125, 0.25, 0.375, 0.5, 0.8125, 1.0]
    T = 12
    x = torch.tensor(currents).repeat(T, 1).unsqueeze(1)  # [T, B=1, N]
    for backend in ("inplace", "spikingjelly"):
        for v_init, expect in ((0.0, [math.floor(T * a) for a in currents]),
                               (0.5, [math.floor(T * a + 0.5) for a in currents])):
            pool = NeuronPool(None, backend, v_init)
            got = torch.cat([pool(x[:5]), pool(x[5:])]).sum(0)[0]  # state carries across chunks
            assert got.tolist() == expect, (backend, v_init)
            pool.reset()
            assert pool(x).sum(0)[0].tolist() == expect, (backend, v_init)  # reset restores v_init
    assert [math.floor(T * a + 0.5) for a in currents] != [math.floor(T * a) for a in currents]


@pytest.mark.parametrize("tau", [None, 5.0])
def test_inplace_neurons_equal_spikingjelly(tau):
    torch.manual_seed(0)
    x = torch.randint(-2, 9, (40, 3, 5, 6)).float() / 8  # multiples of 1/8: membranes hit 1.0 exactly
    fast, ref = NeuronPool(tau, "inplace"), NeuronPool(tau, "spikingjelly")
    from spikingjelly.activation_based import neuron

    assert isinstance(ref._sj, neuron.IFNode if tau is None else neuron.LIFNode)  # SpikingJelly's, not a copy
    assert fast._sj is None
    got = torch.cat([fast(x[:13]), fast(x[13:])])  # state carries across chunks
    assert torch.equal(got, ref(x))
    assert got.sum() > 0


def test_scale_plan_is_lambda_in_over_lambda_out():
    graph = trace(_ann(), (1, 8, 8)).folded()
    lam = {"1": 2.0, "4": 0.5, "8": 4.0}
    s = {"1": 1.0, "4": 2.0, "8": 1.0}
    plan = plan_scales(graph, {n: lam[n] / s[n] for n in lam}, {n: s[n] / lam[n] for n in lam})
    # W ← W · (λ_in/s_in) · (s_out/λ_out), b ← b · s_out/λ_out; the input has λ = 1, the readout s/λ = 1
    assert plan.factors["0"] == (1.0 * (1.0 / 2.0), 1.0 / 2.0)
    assert plan.factors["3"] == ((2.0 / 1.0) * (2.0 / 0.5), 2.0 / 0.5)
    assert plan.factors["7"] == ((0.5 / 2.0) * (1.0 / 4.0), 1.0 / 4.0)
    assert plan.factors["9"] == (4.0 / 1.0, 1.0)
    assert plan.gains == {}


class Residual(nn.Module):
    """relu(conv_b(relu(conv_a(x))) + shortcut) with an identity shortcut of spikes (block 1) and a
    1x1 projection (block 2): the joins of ResNet."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a1, self.b1 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.a2, self.b2 = nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.proj = nn.Conv2d(4, 6, 1, stride=2)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.b1(F.relu(self.a1(x))) + x)
        x = F.relu(self.b2(F.relu(self.a2(x))) + self.proj(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_residual_join_gains_and_conversion():
    graph = trace(Residual().eval(), (1, 8, 8)).folded()
    names = [op.name for op in graph.neurons]
    assert names == ["relu", "relu_1", "relu_2", "relu_3", "relu_4"]
    lam = dict(zip(names, [2.0, 3.0, 5.0, 7.0, 11.0]))
    plan = plan_scales(graph, dict(lam), {n: 1.0 / v for n, v in lam.items()})
    # block 1: the shortcut carries spikes of scale λ(relu) into the neurons of relu_2: gain λ_in/λ_out
    assert plan.gains == {("add", 1): 2.0 / 5.0}
    assert plan.factors["b1"] == (3.0 * (1.0 / 5.0), 1.0 / 5.0)
    # block 2: both inputs of the add are currents: the projection is normalised like a layer
    assert plan.factors["proj"] == (5.0 * (1.0 / 11.0), 1.0 / 11.0)
    assert plan.factors["b2"] == (7.0 * (1.0 / 11.0), 1.0 / 11.0)
    assert plan.factors["fc"] == (11.0, 1.0)


def test_residual_network_approaches_its_ann():
    ann = Residual().eval()
    torch.manual_seed(1)
    x = torch.rand(64, 1, 8, 8)
    graph = trace(ann, (1, 8, 8)).folded()
    lams = calibrate_scales(graph, x, "max", 100.0)
    net = RateModel(graph, lams).convert(RateParams(timesteps=512))
    meters = Meters(timesteps=512, keep_per_neuron=True)
    preds = Simulator(net).run(x, 512, meters)
    agree = (preds[-1] == ann(x).argmax(-1)).float().mean()
    assert agree > 0.9
    assert agree >= (preds[7] == ann(x).argmax(-1)).float().mean()
    # every neuron fires at its ANN activation over λ (clipped to one spike per step), within a
    # few spikes in 512 steps, after the joins too (an unscaled shortcut is off by 0.05 and more)
    acts = {}
    with torch.no_grad():
        graph.run(x, lambda op, args, out: acts.__setitem__(op.name, out) if op.name in lams else None)
    for name, lam in lams.items():
        rate = meters.neurons[name].per_neuron / (64 * 512)
        expected = (acts[name] / lam).clamp(0, 1).mean(0)
        assert float((rate - expected).abs().max()) < 0.01, name


@pytest.mark.parametrize("key,value,needle", [
    ("timesteps", "0", "timesteps=0 is out of range; valid range is [1, 1e+06]"),
    ("scale_firing_rates", "0", "scale_firing_rates=0 is out of range; valid range is (0, inf)"),
    ("synapse", "-0.1", "synapse=-0.1 is out of range"),
    ("synapse", "0", "synapse=0 is out of range"),
    ("percentile", "101", "percentile=101 is out of range; valid range is (0, 100]"),
    ("neuron", "lf", "Did you mean 'lif'"),
])
def test_bad_params(key, value, needle):
    with pytest.raises(HarnessError) as err:
        RateParams.from_strings({key: value})
    assert needle in str(err.value)


def test_unmappable_ops_are_named_before_work(quick, tmp_path):
    graph = trace(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)), (3,))
    problems = rate_problems(graph.folded())
    assert [(op.name, why) for op, why in problems] == [("1", "a non-linearity other than ReLU")]
    with pytest.raises(ConfigError, match=r"node `1` \(Sigmoid\) cannot be converted by rate: a non-linearity"):
        graph.check("rate", problems)
    from harness.runner import run

    with pytest.raises(ConfigError, match="timesteps=-1"):
        run(quick(method="rate", sets=("timesteps=-1",)))
    assert not (tmp_path / "cache").exists()


def test_rate_run_logs_curve_and_firing_rates(quick):
    from harness.runner import run

    res = run(quick(method="rate", model="dnn5", sets=("timesteps=24",)))
    curve = res.step_metrics["test/accuracy_at_t"]
    assert len(curve) == 24 and curve[-1] == res.metrics["test/accuracy"]
    assert res.metrics["timesteps"] == 24
    assert "firing_rates.npz" in res.artifacts and "firing_rates_summary.csv" in res.artifacts
    rates = [res.metrics[f"layer/relu_fc{i}/firing_rate_hz"] for i in range(1, 6)]
    assert all(0 <= r <= 1000 for r in rates)  # at most one spike per 1 ms step
    assert res.metrics["macs"] == 64 * 128  # the analog input layer, once per inference (8x8 digits)


def test_layer_scaling_table_is_each_layer_boosted_alone(quick):
    """Every row of the table, re-derived here: the run's calibrated λ (its ``layer/*/lambda``), its
    cached ANN, and a conversion with the base scale on every layer but one boosted ×4, evaluated on
    the same 100 images; the row's accuracy and extra spikes (over the base configuration) and
    their ratio must be those. Wrong variants: the boost landing on another layer, extra spikes
    of the wrong sign, the gain divided the wrong way, a pair where a single layer was meant."""
    from harness.datasets import load_dataset
    from harness.evaluation import evaluate
    from harness.methods.layer_scaling import LayerScalingParams
    from harness.methods.rate import RateEvaluable
    from harness.models import build_model
    from harness.runner import run

    res = run(quick(method="layer-scaling", model="dnn5", sets=("timesteps=12", "eval_samples=100")))
    m = res.metrics
    ann = build_model("dnn5", (1, 8, 8), 10)
    ann.load_state_dict(torch.load(res.provenance["ann_cache_file"], weights_only=True)["state_dict"])
    names = [f"relu_fc{i}" for i in range(1, 6)]
    model = RateModel(trace(ann.eval(), (1, 8, 8)).folded(), {n: m[f"layer/{n}/lambda"] for n in names})
    params = LayerScalingParams(timesteps=12, eval_samples=100)
    ds = load_dataset("digits")
    loader = ds.loader("test", 500, limit=100)

    def measure(scales):
        return evaluate(RateEvaluable(model, params, scales), loader).metrics

    base = measure({n: 1.0 for n in names})
    assert m["test/accuracy"] == base["test/accuracy"] and m["spikes"] == pytest.approx(base["spikes"])
    for boosted in names:
        mine = measure({n: 4.0 if n == boosted else 1.0 for n in names})
        p = f"layer_scaling/{boosted}/"
        extra = mine["spikes"] - base["spikes"]
        assert m[p + "accuracy"] == mine["test/accuracy"]
        assert m[p + "extra_spikes"] == pytest.approx(extra) and extra > 0
        assert m[p + "accuracy_gain"] == pytest.approx(mine["test/accuracy"] - base["test/accuracy"])
        assert m[p + "gain_per_extra_spike"] == pytest.approx((mine["test/accuracy"] - base["test/accuracy"]) / extra)
    assert m["layer_scaling/best_gain"] == pytest.approx(max(m[f"layer_scaling/{n}/accuracy_gain"] for n in names))
    assert not any(":" in k for k in m)  # no pairs unless asked
    assert "layer_scaling.csv" in res.artifacts
    # the seed's explanation, tested: each layer's base firing rate against its gain per extra spike,
    # ranked here by hand (Spearman's ρ = Pearson's r of the ranks; no ties in these floats)
    rates = [base[f"layer/{n}/firing_rate_hz"] for n in names]
    gains = [m[f"layer_scaling/{n}/gain_per_extra_spike"] for n in names]
    if len(set(rates)) == len(rates) and len(set(gains)) == len(gains):
        def ranks(v):
            return [sorted(v).index(x) for x in v]

        d2 = sum((a - b) ** 2 for a, b in zip(ranks(rates), ranks(gains)))
        assert m["layer_scaling/rate_gain_spearman"] == pytest.approx(1 - 6 * d2 / (5 * (25 - 1)))
        assert 0 <= m["layer_scaling/rate_gain_pvalue"] <= 1


def test_the_rate_gain_correlation_is_spearmans_rho_and_undefined_on_ties_or_few_layers():
    """By hand: ranks (1, 2, 3) against (1, 3, 2) give 1 − 6·2/(3·8) = 0.5; reversed order gives −1
    (Pearson's r on the raw values would not); the p-value counts the pairings of the ranks at
    least as extreme (scipy's asymptotic value would be 0 for a perfect ρ); a constant column or
    fewer than 3 layers report nothing (ρ is undefined, not 0)."""
    from harness.methods.layer_scaling import rate_gain_correlation

    def rows(rates, gains):
        return [dict(base_firing_rate_hz=r, gain_per_extra_spike=g) for r, g in zip(rates, gains)]

    assert rate_gain_correlation(rows([10, 20, 30], [1e-4, 9e-4, 2e-4]))["layer_scaling/rate_gain_spearman"] == \
        pytest.approx(0.5)
    out = rate_gain_correlation(rows([1, 2, 4, 100], [5e-3, 1e-3, 8e-4, -3e-2]))
    assert out["layer_scaling/rate_gain_spearman"] == pytest.approx(-1.0)
    # exact: of the 4! = 24 pairings of the ranks, the identity and the reversal reach |ρ| = 1
    assert out["layer_scaling/rate_gain_pvalue"] == pytest.approx(2 / 24)
    # 3 layers: pairings of (1, 2, 3) have ρ = 1, 0.5, 0.5, −0.5, −0.5, −1: |ρ| ≥ 0.5 for all six
    assert rate_gain_correlation(rows([10, 20, 30], [1e-4, 9e-4, 2e-4]))["layer_scaling/rate_gain_pvalue"] == \
        pytest.approx(1.0)
    assert rate_gain_correlation(rows([1, 2, 3], [0.1, 0.1, 0.1])) == {}
    assert rate_gain_correlation(rows([1, 2], [0.1, 0.2])) == {}


@pytest.mark.slow
def test_layer_scaling_pairs_are_valid_mlflow_keys(quick):
    from harness.runner import run
    from mlflow.tracking import MlflowClient

    res = run(quick(method="layer-scaling", model="dnn5", track=True,
                    sets=("timesteps=8", "eval_samples=50", "pairs=true")))
    run_ = MlflowClient(res.tracking["tracking_uri"]).get_run(res.tracking["run_id"])
    assert "layer_scaling/relu_fc1:relu_fc2/accuracy" in run_.data.metrics
    assert len(res.step_metrics["test/accuracy_at_t"]) == 8


class StaticSkip(nn.Module):
    """A skip connection from the input: relu(conv2(relu(conv1(x))) + skip(x)). The skip's current
    depends on the input alone (computed once), the other on spikes (every step)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.conv2 = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.skip = nn.Conv2d(1, 3, 1)
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))) + self.skip(x))
        return self.fc(torch.flatten(h, 1))


def test_a_static_current_joining_spikes_is_broadcast_over_time():
    ann = StaticSkip().eval()
    torch.manual_seed(5)
    x = torch.rand(16, 1, 8, 8)
    graph = trace(ann, (1, 8, 8)).folded()
    assert {"conv1", "skip"} <= graph.static_ops() and "add" not in graph.static_ops()
    lams = calibrate_scales(graph, x, "max", 100.0)
    net = RateModel(graph, lams).convert(RateParams(timesteps=256))
    preds = [Simulator(net, time_chunk=c, batch_chunk=8).run(x, 256) for c in (1, 7, 256)]
    assert torch.equal(preds[0], preds[1]) and torch.equal(preds[0], preds[2])
    assert (preds[0][-1] == ann(x).argmax(-1)).float().mean() > 0.85
    # both layers reading the input are metered as input layers: dense MACs once per inference,
    # conv1 192 outputs x 9 taps, skip 192 outputs x 1 tap
    m = Meters(timesteps=256)
    out = Simulator(net, time_chunk=7, batch_chunk=8).run(x, 256, m)
    m.record_predictions(out[-1], out[-1])
    metrics = m.summary()[0]
    assert metrics["input_layer_macs"] == metrics["macs"] == 3 * 64 * 9 + 3 * 64
    assert metrics["layer/conv2/synops"] > 0 and metrics["layer/skip/synops"] == 0


def test_subset_evaluation_is_compared_with_the_ann_on_the_same_samples(quick):
    """eval_samples=N: the drop is against the ANN's accuracy on those N test images, not on all."""
    from harness.datasets import load_dataset
    from harness.models import build_model
    from harness.runner import run

    res = run(quick(method="rate", model="dnn5", sets=("timesteps=8", "eval_samples=37")))
    blob = torch.load(res.provenance["ann_cache_file"], weights_only=True)
    ds = load_dataset("digits")
    ann = build_model("dnn5", ds.input_shape, ds.num_classes)
    ann.load_state_dict(blob["state_dict"])
    x, y = torch.from_numpy(ds.x["test"][:37]), torch.from_numpy(ds.y["test"][:37])
    with torch.no_grad():
        correct = int((ann.eval()(x).argmax(-1) == y).sum())
    assert res.metrics["ann/test/accuracy"] == correct / 37
    assert res.metrics["test/accuracy_drop"] == res.metrics["ann/test/accuracy"] - res.metrics["test/accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cnn7", "ttfs-cnn"])  # average pooling; max pooling (metered per step)
def test_metrics_do_not_depend_on_batching_or_time_chunks(quick, model):
    """Counts accumulate over batches and chunks: several small batches, and chunks of 2 or 3 steps
    (the last one shorter), meter exactly what one batch of one chunk meters."""
    from harness.runner import run

    base = ("timesteps=7", "time_chunk=7", "batch_chunk=500")  # digits' 359 test images in one batch
    ref = run(quick(method="rate", model=model, sets=base)).metrics
    assert ref["synops"] > 0
    for sets in (("batch_chunk=97",), ("time_chunk=2",), ("time_chunk=3", "batch_chunk=50")):
        got = run(quick(method="rate", model=model, sets=base + sets)).metrics
        assert got["samples"] == ref["samples"] == 359  # four batches of 97, eight of 50
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (sets, k)


def test_the_auto_neuron_backend_takes_the_in_place_loop_on_cpu():
    """``auto`` (the default) is SpikingJelly on CUDA (tools/gpu_check.py checks that there) and the
    in-place loop on CPU, where SpikingJelly's operator allocates every step."""
    from harness.methods.rate import RateParams

    assert RateParams().neuron_backend == "auto"
    x = torch.rand(16, 3, 5)
    pool = NeuronPool(None, "auto")
    assert torch.equal(pool(x), NeuronPool(None, "inplace")(x)) and pool._sj is None


def test_lambda_is_numpys_percentile_of_the_positive_activations_only():
    """λ per neuron op = NumPy's (linear) percentile of the strictly positive activations of the ANN
    on the calibration images; ``max`` mode their maximum; a layer that never fires gets 1. Wrong
    variants: zeros counted as positives (the percentile falls), negatives kept, another
    interpolation, the percentile taken over all entries."""
    import numpy as np
    from harness.calibration import calibrate_scales

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    with torch.no_grad():
        model[2].bias.fill_(-100.0)  # the second ReLU never fires
    x = torch.randn(200, 6)
    graph = trace(model, (6,))
    lams = calibrate_scales(graph, x, "percentile", 97.5)
    with torch.no_grad():
        h = torch.relu(model[0](x)).numpy()
    positive = h[h > 0]
    assert (h == 0).mean() > 0.2  # many zeros: counting them as positives would move λ
    assert lams["1"] == pytest.approx(float(np.percentile(positive.astype(np.float64), 97.5)), rel=1e-12)
    assert lams["3"] == 1.0
    assert calibrate_scales(graph, x, "max", 0.0)["1"] == pytest.approx(float(positive.max()))
