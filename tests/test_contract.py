"""Every registered method passes the same contract (parametrised over the registry), the harness's
invariants catch a method that miscounts, and SynOps equal Σ spikes × non-zero fan-out counted
here, from spikes caught by hooks and fan-outs computed with transposed convolutions (no meter code)."""

import math

import pytest
import torch
import torch.nn.functional as F
from harness.api import Method, Preparation
from harness.errors import InvariantError
from harness.methods import METHODS
from harness.runner import run

REQUIRED = ("test/accuracy", "ann/test/accuracy", "test/accuracy_drop", "timesteps", "spikes_per_neuron",
            "activation_sparsity", "connection_sparsity", "synops", "macs", "ann/macs", "neuron_updates",
            "energy_nJ/cmos45-fp32", "ann/energy_nJ/cmos45-fp32", "energy_ratio/cmos45-fp32")


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, quick):
    cls = METHODS.get(name)
    assert cls.name == name
    assert cls.__module__ == f"harness.methods.{name.replace('-', '_')}"  # file name = key
    assert issubclass(cls, Method)
    params = cls.Params()
    assert set(params.as_dict()) == set(cls.Params.keys())
    smoke = cls.smoke_sets
    res = run(quick(method=name, sets=tuple(f"{k}={v}" for k, v in smoke.items())))
    m = res.metrics
    for key in REQUIRED:
        assert key in m, f"{name}: missing {key}"
        assert math.isfinite(m[key]), f"{name}: {key} = {m[key]}"
    assert 0.0 <= m["test/accuracy"] <= 1.0
    assert m["test/accuracy"] > 0.15, "better than chance on digits after training"
    # the baseline is the trained ANN's own forward pass on the same test images, computed here
    from harness.datasets import load_dataset
    from harness.models import build_model

    ds, n = load_dataset("digits"), int(m["samples"])
    ann = build_model(res.model, ds.input_shape, ds.num_classes)
    ann.load_state_dict(torch.load(res.provenance["ann_cache_file"], weights_only=True)["state_dict"])
    with torch.no_grad():
        own = (ann.eval()(torch.from_numpy(ds.x["test"][:n])).argmax(-1) == torch.from_numpy(ds.y["test"][:n]))
    assert m["ann/test/accuracy"] == pytest.approx(float(own.double().mean()))
    assert m["test/accuracy_drop"] == pytest.approx(float(own.double().mean()) - m["test/accuracy"])
    assert res.layers and all("layer" in row for row in res.layers)
    if cls.spiking:
        assert m["synops"] > 0 and m["spikes_per_neuron"] > 0
        assert m["spikes_per_neuron"] <= m["timesteps"]
    assert m["synops"] <= m["synop_capacity"] * max(m["timesteps"], 1) + 1e-9


def test_a_method_without_prepare_fails_when_defined():
    with pytest.raises(TypeError, match="does not implement prepare"):
        class Broken(Method):
            name = "broken"


def test_a_transform_metric_cannot_silently_win_a_key(quick, monkeypatch):
    from harness.methods.prune import Prune

    original = Prune.prepare

    def clashing(self, ctx, ann, params):
        prep = original(self, ctx, ann, params)
        return Preparation(prep.model, metrics={**prep.metrics, "synops": 0.0}, step_metrics=prep.step_metrics)

    monkeypatch.setattr(Prune, "prepare", clashing)
    with pytest.raises(InvariantError, match="'synops', which is already set"):
        run(quick(method="prune", sets=("epochs=2", "start_epoch=0", "ramp_epochs=1")))


def test_doubled_synops_break_an_invariant(quick, monkeypatch):
    """A method that records every synaptic event twice is stopped by the harness, not reported."""
    from harness.meters import Meters

    original = Meters.record_synapse

    def doubled(self, name, layer, x, *, spikes, rows=None, reads_input=None):
        return original(self, name, layer, 2 * x if spikes else x, spikes=spikes, rows=rows, reads_input=reads_input)

    monkeypatch.setattr(Meters, "record_synapse", doubled)
    with pytest.raises(InvariantError, match="more than its largest fan-out"):
        run(quick(method="rate", model="dnn5", sets=("timesteps=8",)))


def test_miscounted_neurons_break_an_invariant(quick, monkeypatch):
    from harness.meters import Meters

    original = Meters.record_neuron_counts

    def half(self, name, *, spikes, entries, zeros, kind="", per_neuron=None):
        return original(self, name, spikes=spikes, entries=entries / 2, zeros=zeros, kind=kind, per_neuron=per_neuron)

    monkeypatch.setattr(Meters, "record_neuron_counts", half)
    with pytest.raises(InvariantError, match="metered with .* neurons, the traced network has"):
        run(quick(method="ttfs", sets=("t_max=8", "t_max_sweep=", "fig2=false")))


def test_needs_trained_ann_false_skips_training_without_a_baseline(quick, monkeypatch):
    import harness.ann_cache as cache

    monkeypatch.setattr(cache, "train_ann", lambda ctx: pytest.fail("the ANN was trained"))
    res = run(quick(method="surrogate", model="dnn5", baseline=False, sets=("epochs=1", "timesteps=2")))
    assert "ann/test/accuracy" not in res.metrics and "energy_ratio/cmos45-fp32" not in res.metrics
    assert res.metrics["energy_nJ/cmos45-fp32"] > 0


# ---- SynOps counted independently ------------------------------------------------------------


def _fanout(layer, in_shape):
    """Non-zero weights each input element reaches, by transposed convolution of the output grid."""
    mask = (layer.weight.detach() != 0).double()
    if isinstance(layer, torch.nn.Linear):
        return mask.sum(0)
    out = F.conv2d(torch.zeros(1, *in_shape, dtype=torch.float64), mask, None, layer.stride, layer.padding)
    return F.conv_transpose2d(torch.ones_like(out), mask, None, layer.stride, layer.padding,
                              output_padding=0)[0][:, :in_shape[1], :in_shape[2]]


def _rate_run_with_spike_hooks(quick, model, monkeypatch):
    """A rate run whose neuron pools report every spike tensor they emit: {op name: counts per neuron}."""
    from harness.simulate import NeuronPool

    counts: dict[int, torch.Tensor] = {}
    names: dict[int, str] = {}
    original = NeuronPool.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        self.register_forward_hook(lambda m, i, out: counts.__setitem__(id(m), counts.get(id(m), 0) + out.sum((0, 1)).double()))

    monkeypatch.setattr(NeuronPool, "__init__", init)
    import harness.methods.rate as rate_mod

    convert = rate_mod.RateModel.convert

    def tracking_convert(self, params, scales=None):
        net = convert(self, params, scales)
        for name, pool in net.neurons.items():
            names[id(pool)] = name
        return net

    monkeypatch.setattr(rate_mod.RateModel, "convert", tracking_convert)
    res = run(quick(method="rate", model=model, sets=("timesteps=12",)))
    per_op = {}
    for key, c in counts.items():
        if key in names:  # the headline simulation's pools (decode=membrane has no readout pool)
            per_op[names[key]] = per_op.get(names[key], 0) + c
    return res, per_op


def test_rate_synops_equal_spikes_times_fanout_dense(quick, monkeypatch):
    res, spikes = _rate_run_with_spike_hooks(quick, "dnn5", monkeypatch)
    n = res.metrics["samples"]
    from harness.ann_cache import load_cached

    state = load_cached(res.provenance["ann_cache_file"])["state_dict"]
    for src, dst in (("relu_fc1", "fc2"), ("relu_fc2", "fc3"), ("relu_fc5", "fc_out")):
        w = state[f"{dst}.weight"]
        # W was scaled by positive factors in conversion: its zeros are the ANN's
        expected = float((spikes[src] * (w != 0).double().sum(0)).sum()) / n
        assert res.metrics[f"layer/{dst}/synops"] == pytest.approx(expected, rel=1e-12)
        assert expected > 0


def test_rate_synops_count_every_spike_through_average_pooling(quick, monkeypatch):
    res, spikes = _rate_run_with_spike_hooks(quick, "cnn7", monkeypatch)
    n = res.metrics["samples"]
    from harness.ann_cache import load_cached

    state = load_cached(res.provenance["ann_cache_file"])["state_dict"]
    c = spikes["relu1"]  # [16, 8, 8]: every spike of relu1, summed over time and samples
    pooled = c.reshape(16, 4, 2, 4, 2).sum((2, 4))  # each spike lands on its window: a sum, not a mean
    conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
    conv2.weight.data = state["conv2.weight"].double()
    expected = float((pooled * _fanout(conv2, (16, 4, 4))).sum()) / n
    assert res.metrics["layer/conv2/synops"] == pytest.approx(expected, rel=1e-12)


def test_ttfs_synops_equal_spikes_times_fanout_through_max_pooling(quick):
    from harness.ann_cache import load_cached
    from harness.datasets import load_dataset

    res = run(quick(method="ttfs", sets=("t_max=16", "t_max_sweep=", "fig2=false"), output_json=None))
    n = res.metrics["samples"]
    state = load_cached(res.provenance["ann_cache_file"])["state_dict"]
    ds = load_dataset("digits")
    x = torch.from_numpy(ds.x["test"])  # float32, the evaluator's precision
    thresholds = [res.metrics[f"layer/{k}/u_th"] for k in ("relu1", "relu2", "relu_fc1")]
    # the closed form by hand: codes k = clip(floor(T·x), 0, T); potentials; first-spike codes
    T = 16
    k = torch.floor(x * T).clamp(0, T)
    conv = lambda k, name, pad: F.conv2d(k, state[f"{name}.weight"], None, 1, pad)
    events = {"conv1": (k > 0).double()}
    lam = 1.0
    u1 = conv(k, "conv1", 2) + T * state["conv1.bias"].view(-1, 1, 1) / lam
    k1 = torch.clamp(T - torch.ceil((thresholds[0] - u1) * T / thresholds[0]), 0, T)
    k1 = torch.where(u1 > 0, k1, torch.zeros_like(k1))
    p1 = F.max_pool2d(k1, 2)  # the earliest spike of each window passes: one event per window with a spike
    events["conv2"] = (p1 > 0).double()
    expected = {}
    for name, ev in events.items():
        layer = torch.nn.Conv2d(ev.shape[1], state[f"{name}.weight"].shape[0], 5, padding=2)
        layer.weight.data = state[f"{name}.weight"].double()
        expected[name] = float((ev.sum(0) * _fanout(layer, tuple(ev.shape[1:]))).sum()) / n
    assert res.metrics["layer/conv1/synops"] == pytest.approx(expected["conv1"], rel=1e-9)
    assert res.metrics["layer/conv2/synops"] == pytest.approx(expected["conv2"], rel=1e-9)
    assert expected["conv2"] > 0
