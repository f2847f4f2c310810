"""rate / layer-scaling: the chunked, time-folded simulator equals a plain step-by-step loop."""

import pytest
import torch
from torch import nn

from harness.errors import ConfigError, HarnessError
from harness.methods.rate import POOLS, RateParams, calibrate_scales, convert
from harness.netparse import parse_blocks
from harness.simulate import Simulator, reference_loop


def _ann(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 3),
    ).eval()


@pytest.mark.parametrize("decode,synapse,neuron", [
    ("membrane", None, "if"), ("spikes", None, "if"), ("filtered", 0.005, "if"), ("membrane", 0.002, "lif"),
])
@pytest.mark.parametrize("backend", ["inplace", "spikingjelly"])
def test_simulator_equals_step_by_step_loop(decode, synapse, neuron, backend):
    ann = _ann()
    x = torch.rand(7, 1, 8, 8)
    params = RateParams(timesteps=23, decode=decode, synapse=synapse, neuron=neuron, scale_firing_rates=3.0,
                        neuron_backend=backend)
    blocks = parse_blocks(ann, "rate", POOLS)
    lams = calibrate_scales(blocks, x, "percentile", 99.0)
    layers = convert(blocks, lams, [3.0, 3.0, 3.0], params)
    expected = reference_loop(layers, x, 23, synapse=synapse, decode=decode)
    for time_chunk, batch_chunk, memory_mb in ((23, 7, 512), (5, 3, 512), (1, 7, 512), (23, 7, 0.001), (23, 7, 0)):
        sim = Simulator(layers, synapse=synapse, decode=decode, time_chunk=time_chunk, batch_chunk=batch_chunk,
                        memory_mb=memory_mb)
        got = sim.run(x, 23)
        assert got.shape == (23, 7)
        assert torch.equal(got, expected), (time_chunk, batch_chunk)


@pytest.mark.parametrize("tau", [None, 5.0])
def test_inplace_neurons_equal_spikingjelly(tau):
    from harness.simulate import NeuronPool

    x = torch.rand(40, 3, 5, 6) * 1.7 - 0.2
    fast, ref = NeuronPool(tau, "inplace"), NeuronPool(tau, "spikingjelly")
    got = torch.cat([fast(x[:13]), fast(x[13:])])  # state carries across chunks
    assert torch.equal(got, ref(x))
    const = x[0]
    fast.reset(), ref.reset()
    assert torch.equal(fast(const, steps=9), ref(const, steps=9))


def test_rate_approaches_ann_with_time():
    """With enough steps the rate network classifies like the ANN (membrane decoding)."""
    ann = _ann(1)
    x = torch.rand(64, 1, 8, 8)
    params = RateParams(timesteps=512)
    blocks = parse_blocks(ann, "rate", POOLS)
    lams = calibrate_scales(blocks, x, "max", 100.0)
    layers = convert(blocks, lams, [1.0] * 3, params)
    preds = Simulator(layers).run(x, 512)
    agree = (preds[-1] == ann(x).argmax(-1)).float().mean()
    assert agree > 0.9
    assert (preds[-1] == ann(x).argmax(-1)).float().mean() >= (preds[3] == ann(x).argmax(-1)).float().mean()


@pytest.mark.parametrize("key,value,needle", [
    ("timesteps", "0", "timesteps=0 is out of range; valid range is [1, 1e+06]"),
    ("scale_firing_rates", "0", "scale_firing_rates=0 is out of range; valid range is (0, inf]"),
    ("synapse", "-0.1", "synapse=-0.1 is out of range"),
    ("synapse", "0", "synapse=0 is out of range"),
    ("percentile", "101", "percentile=101 is out of range; valid range is (0, 100]"),
    ("neuron", "lf", "Did you mean 'lif'"),
])
def test_bad_params(key, value, needle):
    with pytest.raises(HarnessError) as err:
        RateParams.from_strings({key: value})
    assert needle in str(err.value)


def test_unmappable_activation_is_named_before_work(quick, tmp_path):
    with pytest.raises(ConfigError, match=r"rate: layer '1' \(Sigmoid\) cannot be converted"):
        parse_blocks(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)), "rate", POOLS)
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
    assert res.metrics["macs"] > 0  # the analog input layer


def test_layer_scaling_table(quick):
    from harness.runner import run

    res = run(quick(method="layer-scaling", model="dnn5", sets=("timesteps=12", "eval_samples=100")))
    for i in range(1, 6):
        assert f"layer_scaling/relu_fc{i}/gain_per_extra_spike" in res.metrics
        assert res.metrics[f"layer_scaling/relu_fc{i}/extra_spikes"] > 0  # a boost adds spikes
    assert "layer_scaling.csv" in res.artifacts


def test_layer_scaling_pairs_are_valid_mlflow_keys(quick):
    from mlflow.tracking import MlflowClient

    from harness.runner import run

    res = run(quick(method="layer-scaling", model="dnn5", track=True,
                    sets=("timesteps=8", "eval_samples=50", "pairs=true")))
    run_ = MlflowClient(res.tracking["tracking_uri"]).get_run(res.tracking["run_id"])
    assert "layer_scaling/relu_fc1:relu_fc2/accuracy" in run_.data.metrics
    assert len(res.step_metrics["test/accuracy_at_t"]) == 8
