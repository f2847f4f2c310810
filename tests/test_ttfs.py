"""TTFS: the closed form agrees exactly with the time-stepped two-stage simulation written from the
paper's equations (``harness.methods.ttfs.reference``, which shares no code with it but the graph).

Exactly, on any CPU: the networks compared have dyadic weights and biases (multiples of 1/64),
thresholds that are powers of two, t_max a power of two and inputs between codes, so every sum
either evaluator forms is exact in float64 whatever order a CPU's kernels add in. (With arbitrary
floats the two summation orders differ in the last bit, and a potential within one ulp of a step
boundary fires a step apart: under ATen's ``default`` kernels that happened to the concatenation
network below.)"""

import math

import pytest
import torch
from harness.errors import ConfigError
from harness.graph import trace
from harness.methods.ttfs import TTFSNetwork, encode, fire_codes, layer_rmse_grid, ttfs_problems
from harness.methods.ttfs.reference import simulate
from torch import nn


def net_of(model, t_max, in_shape, **kw):
    return TTFSNetwork(trace(model, in_shape).folded(), t_max, **kw)


def set_thresholds(net, values):
    net.u_th = dict(zip(net.neuron_names, values))


def _dyadic(model: nn.Module) -> nn.Module:
    """Weights and biases rounded to multiples of 1/64: every sum of them (× integer codes) is exact."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 64) / 64)
    return model


def _cnn(seed: int):
    torch.manual_seed(seed)
    return _dyadic(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(6 * 2 * 2, 12), nn.ReLU(), nn.Linear(12, 5),
    ).double().eval())


def _between_codes(shape, t_max, seed):
    """Inputs (k + ½)/t_max: no product t_max·x lies near an integer, so both encodings agree."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.randint(0, t_max, shape, generator=gen).double()
    return (k + 0.5) / t_max


def _powers_of_two(net: TTFSNetwork) -> None:
    """Calibrated thresholds rounded to the nearest power of two (scales stay exact)."""
    net.u_th = {n: float(2.0 ** round(math.log2(u))) for n, u in net.u_th.items()}


def _agree(net: TTFSNetwork, x: torch.Tensor):
    logits_c, codes_c = net.closed_form(x, keep_codes=True)
    logits_s, codes_s = simulate(net.graph, net.u_th, net.t_max, x, net.x_max)
    assert len(codes_c) == len(codes_s) == net.n_hidden
    for a, b in zip(codes_c, codes_s):
        assert torch.equal(a, b)  # identical spike times, layer by layer
    assert torch.equal(logits_c.argmax(-1), logits_s.argmax(-1))
    assert torch.allclose(logits_c, logits_s, rtol=1e-12, atol=1e-12)
    return codes_c


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("t_max", [1, 8, 16])
def test_random_networks_agree(seed, t_max):
    net = net_of(_cnn(seed), t_max, (1, 8, 8), dtype=torch.float64)
    x = _between_codes((6, 1, 8, 8), t_max, 100 + seed)
    net.calibrate(x, percentile=90.0 + seed)
    _powers_of_two(net)
    codes = _agree(net, x)
    assert any(c.sum() > 0 for c in codes)  # something spiked
    for c in codes:
        assert c.min() >= 0 and c.max() <= t_max and torch.equal(c, c.round())


def _one_layer(weights, bias=0.0):
    lin = nn.Linear(len(weights[0]), len(weights)).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(weights, dtype=torch.float64))
        lin.bias.fill_(bias)
    readout = nn.Linear(len(weights), 1).double()
    with torch.no_grad():
        readout.weight.fill_(1.0)
        readout.bias.zero_()
    return nn.Sequential(lin, nn.ReLU(), readout)


def test_edge_cases_exact_threshold_negative_saturation_zero():
    T = 8
    # inputs as exact codes: x = k/T with k = (8, 4, 2)  ->  u_i = Σ_j W_ij k_j  (dyadic: exact sums)
    x = torch.tensor([[1.0, 0.5, 0.25]], dtype=torch.float64)
    weights = [
        [0.5, 0.0, 0.0],     # u = 4   = u_th exactly       -> fires at τ = 0, code 8
        [0.25, 0.0, 0.0],    # u = 2   = u_th / 2 exactly   -> τ = 4, code 4
        [-1.0, -0.5, -0.25],  # u < 0                        -> never fires
        [0.0, 0.0, 0.0],     # u = 0                        -> never fires (no spike at t_max)
        [2.0, 1.0, 0.0],     # u = 20 > u_th                -> saturates at τ = 0
        [0.0, 0.0, 0.0625],  # u = 0.125 = u_th / 32        -> below one step: silent
        [0.0, 0.0, 0.25],    # u = 0.5 = u_th / 8           -> τ = 7, code 1 (last step)
    ]
    net = net_of(_one_layer(weights), T, (3,), dtype=torch.float64)
    set_thresholds(net, [4.0])
    codes = _agree(net, x)[0]
    assert codes.tolist() == [[8.0, 4.0, 0.0, 0.0, 8.0, 0.0, 1.0]]


def test_all_negative_layer_is_silent_and_bias_still_reaches_readout():
    net = net_of(_one_layer([[-1.0, -1.0], [-0.5, -2.0]]), 16, (2,), dtype=torch.float64)
    set_thresholds(net, [3.0])
    x = torch.rand(4, 2, dtype=torch.float64)
    codes = _agree(net, x)[0]
    assert codes.sum() == 0
    net2 = net_of(_one_layer([[-1.0, 0.0]], bias=0.5), 16, (2,), dtype=torch.float64)
    set_thresholds(net2, [8.0])  # bias potential 16 * 0.5 = 8 = u_th  ->  fires at τ = 0 with no input at all
    assert _agree(net2, torch.zeros(1, 2, dtype=torch.float64))[0].tolist() == [[16.0]]


def test_closed_form_is_a_clipped_quantised_relu_network():
    """Decoded hidden values equal λ · clip(floor(t_max z / λ), 0, t_max) / t_max of the ANN's z."""
    T = 32
    model = _cnn(3)
    net = net_of(model, T, (1, 8, 8), dtype=torch.float64)
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    net.calibrate(x, 99.0)
    _, codes = net.closed_form(x, keep_codes=True)
    lam = net.scales()
    k0 = torch.floor(x * T).clamp(0, T)  # eq. 1 with x_max = 1
    z1 = model[0](k0 / T)
    expected = torch.clamp(torch.floor(z1 * T / lam["1"] + 1e-9), 0, T)
    assert torch.equal(expected, codes[0])


def test_fire_codes_matches_the_definition():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(2000, generator=gen, dtype=torch.float64) * 10
    u_th, T = torch.tensor(7.3, dtype=torch.float64), 13
    codes = fire_codes(u, u_th, T)
    for ui, ci in zip(u.tolist(), codes.tolist()):
        c = (float(u_th) - ui) * T / float(u_th)  # u + τ·I_ext ≥ u_th  ⇔  τ ≥ (u_th − u) / I_ext
        taus = [t for t in range(T) if t >= c]
        assert ci == (T - taus[0] if taus else 0)


def _problems(model, shape):
    return [(op.name, why) for op, why in ttfs_problems(trace(model, shape).folded())]


def test_unsupported_layers_are_named():
    assert _problems(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)), (3,)) == [
        ("1", "a non-linearity other than ReLU")]
    assert _problems(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)), (3,)) == [
        ("0", "a layer whose output is not the input of exactly one ReLU (nor the readout)")]
    assert _problems(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))[-1][1].startswith(
        "the network must end in a linear readout")
    from harness.models import build_model

    problems = _problems(build_model("cnn7", (1, 8, 8), 10), (1, 8, 8))
    assert problems[0] == ("pool1", "average pooling: a mean of spike times is not one spike")


def test_inputs_outside_range():
    net = net_of(_one_layer([[1.0, 1.0]]).float(), 8, (2,))
    set_thresholds(net, [1.0])
    with pytest.raises(ConfigError, match=r"inputs span \[-0.5, 1\], outside \[0, x_max=1\]"):
        net.closed_form(torch.tensor([[-0.5, 1.0]]))
    clip = net_of(_one_layer([[1.0, 1.0]]).float(), 8, (2,), out_of_range="clip")
    set_thresholds(clip, [1.0])
    clip.closed_form(torch.tensor([[-0.5, 3.0]]))


@pytest.mark.parametrize("sets,needle", [
    (["t_max=0"], "t_max=0 is out of range; valid range is [1, 100000]"),
    (["u_th=1,0,2"], "u_th=0 is out of range; valid range is (0, inf)"),
    (["percentile=0"], "percentile=0 is out of range; valid range is (0, 100]"),
    (["u_th=1,2"], "u_th has 2 values but ttfs-cnn has 3 spiking layers"),
    (["precision=float16"], "Valid: float32, float64"),
])
def test_bad_parameters_fail_before_training(sets, needle, quick, tmp_path):
    from harness.errors import HarnessError
    from harness.runner import run

    with pytest.raises(HarnessError) as err:
        run(quick(method="ttfs", sets=tuple(sets)))
    assert needle in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_fig2_grid_behaves():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1).double()
    x = torch.rand(8, 1, 8, 8, dtype=torch.float64)
    rows = layer_rmse_grid(conv, x, [8, 64], [0.1, 1.0])
    rmse = {(r["t_max"], r["u_th_fraction"]): r["rmse"] for r in rows}
    assert rmse[(64, 1.0)] < rmse[(8, 1.0)]  # finer clock, smaller error
    assert all(r["rmse"] >= 0 for r in rows)


def test_encode_is_the_floor_of_t_max_x_over_x_max():
    """Eq. 1 on the discrete clock, at the edges: a value on a code boundary gets that code."""
    x = torch.tensor([0.0, 0.0625, 0.124, 0.125, 0.5, 0.999, 1.0])
    assert encode(x, 8, 1.0, "error").tolist() == [0, 0, 0, 1, 4, 7, 8]
    assert encode(torch.tensor([1.0, 2.0, 0.25, 0.24]), 8, 2.0, "error").tolist() == [4, 8, 1, 0]
    assert encode(torch.tensor([-1.0, 3.0]), 8, 2.0, "clip").tolist() == [0, 8]


class CatNet(nn.Module):
    """Two branches of different scales concatenated, max-pooled, then one more layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(1, 3, 3, padding=1)
        self.c = nn.Conv2d(5, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        h = torch.relu(self.c(nn.functional.max_pool2d(h, 2)))
        return self.fc(torch.flatten(h, 1))


def test_concatenated_branches_keep_their_own_scales():
    model = _dyadic(CatNet().double().eval())
    net = net_of(model, 256, (1, 8, 8), dtype=torch.float64)
    x = _between_codes((16, 1, 8, 8), 256, 7)
    net.calibrate(x, 100.0)
    _powers_of_two(net)
    scales = net.scales()
    assert scales["relu"] != scales["relu_1"]  # two branches, two λ
    assert isinstance(scales["cat"], torch.Tensor) and scales["cat"].shape == (1, 5, 8, 8)
    _agree(net, x)  # closed form and stepped simulation agree with per-channel scales too
    with torch.no_grad():
        ann = model(x)
    logits = net.closed_form(x)
    assert (logits.argmax(-1) == ann.argmax(-1)).float().mean() > 0.9
    assert torch.allclose(logits, ann, atol=0.1 * float(ann.abs().max()))


def test_every_layer_is_checked_and_pooling_before_relu_gets_a_hint():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))  # 2nd layer: no ReLU
    assert _problems(net, (4,)) == [
        ("2", "a layer whose output is not the input of exactly one ReLU (nor the readout)")]
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(),
                           nn.Linear(2 * 4 * 4, 2))
    (op, why), *_ = _problems(pooled, (1, 8, 8))
    assert op == "2" and why.endswith("(put the ReLU first: pooling and ReLU commute)")
    flat = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.ReLU(), nn.Linear(2 * 8 * 8, 2))
    (op, why), *_ = _problems(flat, (1, 8, 8))
    assert op == "2" and why.endswith("rather than directly by a Conv/Linear layer")  # no pooling hint


def test_explicit_thresholds_are_used_as_given(quick):
    from harness.runner import run

    res = run(quick(method="ttfs", sets=("t_max=8", "t_max_sweep=", "fig2=false", "u_th=3,5,7")))
    m = res.metrics
    assert (m["layer/relu1/u_th"], m["layer/relu2/u_th"], m["layer/relu_fc1/u_th"]) == (3.0, 5.0, 7.0)
    assert m["layer/relu1/lambda"] == 3.0 * 1.0 / 8  # λ_1 = u_th · λ_0 / t_max
    assert m["layer/relu2/lambda"] == 5.0 * (3.0 / 8) / 8


def test_fig2_reads_the_first_layer_of_a_dense_network_through_its_flatten(quick):
    """A dense network's first layer reads the flattened image (before: StopIteration, a traceback)."""
    from harness.runner import run

    res = run(quick(method="ttfs", model="dnn5", eval_limit=50, sets=("t_max_sweep=",)))
    assert "ttfs_fig2_rmse.csv" in res.artifacts


def test_a_deeper_layers_bias_is_charged_in_its_own_input_scale():
    """x = 0.5, t_max = 8, two layers of one neuron (w = 1; biases 0 and 0.25), u_th = 4 then 16.
    Layer 1: k = floor(8·0.5) = 4, u = 4 = u_th: fires at τ = 0, code 8, λ1 = 4·1/8 = 0.5 (value 0.5).
    Layer 2: u = 1·8 + 8·0.25/λ1 = 12; fires at τ = ceil((16 − 12)·8/16) = 2, code 6, λ2 = 16·0.5/8 = 1:
    value 6/8 = 0.75 = ReLU(0.5 + 0.25). Wrong variants: the bias scaled by the network's input
    scale x_max (u = 10, code 5), or by the layer's own output scale."""
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        for layer, b in ((model[0], 0.0), (model[2], 0.25), (model[4], 0.0)):
            layer.weight.fill_(1.0)
            layer.bias.fill_(b)
    net = net_of(model, 8, (1,), dtype=torch.float64)
    set_thresholds(net, [4.0, 16.0])
    x = torch.tensor([[0.5]], dtype=torch.float64)
    logits, codes = net.closed_form(x, keep_codes=True)
    assert [c.item() for c in codes] == [8.0, 6.0]
    assert net.scales()["3"] == 1.0 and logits.item() == pytest.approx(0.75)
    assert simulate(net.graph, net.u_th, 8, x)[1][1].item() == 6.0  # the reference agrees
    assert net.latency == 8 * 3  # t_max x (2 neuron layers + the readout)


def test_fig2_rmse_grid_equals_the_papers_formula_computed_here():
    """Fig. 2, one layer written out in NumPy from eqs. 1–5: codes k = floor(T·x/x_max), potential
    u = W·k + T·b/x_max, firing step τ = ceil((u_th − u)·T/u_th) ≥ 0, output code T − τ (0 if
    τ ≥ T), decoded value code·u_th·x_max/T², against ReLU(W·x + b); u_th a fraction of
    u_max = T·max_i(Σ_j W⁺_ij·x_max + b⁺_i)/x_max."""
    import numpy as np

    torch.manual_seed(1)
    lin = nn.Linear(5, 3).double()
    x = torch.rand(40, 5, dtype=torch.float64)
    rows = layer_rmse_grid(lin, x, [8, 32], [0.1, 0.5, 1.0])
    W, b, X = lin.weight.detach().numpy(), lin.bias.detach().numpy(), x.numpy()
    ann = np.maximum(X @ W.T + b, 0)
    for r in rows:
        T, f = r["t_max"], r["u_th_fraction"]
        u_max = T * float(np.max(np.clip(W, 0, None).sum(1) + np.clip(b, 0, None)))
        u_th = f * u_max
        u = np.floor(T * X) @ W.T + T * b
        tau = np.maximum(np.ceil((u_th - u) * T / u_th), 0)
        code = np.where(tau < T, T - tau, 0)
        rmse = float(np.sqrt(np.mean((code * u_th / T ** 2 - ann) ** 2)))
        assert r["u_max"] == pytest.approx(u_max) and r["rmse"] == pytest.approx(rmse, rel=1e-12)


def test_the_activity_penalty_is_the_neuron_weighted_smooth_fraction_of_positive_activations():
    """By hand on two ReLU layers of 3 and 1 neurons (N = 4): layer 1 outputs (2, 0, 1) → ε₁ = 0.5·1.5,
    mean of a/(a+ε₁) = (2/2.75 + 0 + 1/1.75)/3; layer 2 outputs 0 → its term is 0 (no positive
    activation: nothing to silence). Wrong variants: an unweighted mean over layers, ε from all
    activations (zeros included), a/(a+ε) on the pre-activations."""
    from harness.methods.ttfs.sparsity import ActivityPenalty

    lin1, lin2 = nn.Linear(2, 3), nn.Linear(3, 1)
    with torch.no_grad():
        lin1.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]))
        lin1.bias.zero_()
        lin2.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0]]))
        lin2.bias.zero_()
    model = nn.Sequential(lin1, nn.ReLU(), lin2, nn.ReLU())
    pen = ActivityPenalty(model, eps=0.5)
    model(torch.tensor([[2.0, 1.0]]))
    eps1 = 0.5 * 1.5
    want = 3 / 4 * (2 / (2 + eps1) + 0 + 1 / (1 + eps1)) / 3 + 1 / 4 * 0.0
    assert float(pen()) == pytest.approx(want, rel=1e-6)
    assert pen.outputs == []  # consumed: the next batch starts afresh
    pen.remove()
    model(torch.tensor([[2.0, 1.0]]))
    assert pen.outputs == []  # hooks removed


@pytest.mark.slow
def test_sparsity_fine_tuning_lowers_the_firing_fraction_keeps_the_baseline_and_is_cached(quick):
    """The sparsified ANN fires on fewer neurons than the ANN it starts from (a bound, not a pinned
    number: it is trained), the run's baseline is still the unmodified ANN (same ann/* as a run
    without sparsity), and a second run reads the fine-tuned ANN from its own cache entry."""
    from harness.runner import run

    sets = ("t_max=16", "t_max_sweep=", "fig2=false")
    plain = run(quick(method="ttfs", sets=sets)).metrics
    first = run(quick(method="ttfs", sets=(*sets, "sparsity=3", "sparsity_epochs=2")))
    m = first.metrics
    assert m["ann/test/accuracy"] == plain["ann/test/accuracy"]
    assert m["ann/spikes_per_neuron"] == plain["ann/spikes_per_neuron"]
    assert m["ttfs/sparse_ann/spikes_per_neuron"] < m["ann/spikes_per_neuron"]
    assert m["spikes_per_neuron"] < plain["spikes_per_neuron"]
    assert first.provenance["ttfs_sparse_cache"] == "miss" and len(first.step_metrics["ttfs_sparse/train/loss"]) == 2
    again = run(quick(method="ttfs", sets=(*sets, "sparsity=3", "sparsity_epochs=2")))
    assert again.provenance["ttfs_sparse_cache"] == "hit" and again.metrics == m
