"""surrogate: the width/height surrogate, the LIF twin of a network, its meters and its errors."""

import math

import pytest
import torch
from harness.errors import ConfigError, DivergedError, HarnessError
from harness.evaluation import evaluate
from harness.methods.surrogate import FAMILIES, SpikingNet, SurrogateParams, WidthHeightSurrogate, surrogate_shape
from harness.runner import run
from torch import nn


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_peaks_at_one_and_decays(family):
    z = torch.linspace(-3, 3, 601)
    phi = surrogate_shape(family, z)
    assert float(surrogate_shape(family, torch.tensor(0.0))) == pytest.approx(1.0)
    assert torch.allclose(phi, phi.flip(0), atol=1e-6)  # symmetric
    right = phi[300:]
    assert bool((right[1:] <= right[:-1] + 1e-7).all())  # non-increasing away from threshold
    assert float(phi[-1]) < 0.2


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("width,height", [(0.5, 2.0), (2.0, 0.3)])
def test_forward_is_heaviside_backward_is_height_times_shape(family, width, height):
    fn = WidthHeightSurrogate(family, width, height)
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    y = fn(x)
    assert torch.equal(y.detach(), (x.detach() >= 0).float())
    y.sum().backward()
    expected = height * surrogate_shape(family, x.detach() / width)
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_width_and_height_are_independent():
    """Doubling β doubles the gradient everywhere; widening γ keeps the peak and spreads it."""
    x = torch.tensor([0.0, 0.75], requires_grad=True)
    grads = {}
    for w, h in [(1.0, 1.0), (1.0, 2.0), (2.0, 1.0)]:
        x.grad = None
        WidthHeightSurrogate("triangle", w, h)(x).sum().backward()
        grads[(w, h)] = x.grad.clone()
    assert torch.allclose(grads[(1.0, 2.0)], 2 * grads[(1.0, 1.0)])
    assert grads[(2.0, 1.0)][0] == grads[(1.0, 1.0)][0] == 1.0
    assert grads[(2.0, 1.0)][1] == pytest.approx(0.625) and grads[(1.0, 1.0)][1] == pytest.approx(0.25)


def _tiny(pool: bool) -> nn.Sequential:
    torch.manual_seed(0)
    if pool:
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(8, 3))
    else:
        net = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        net[0 if pool else 1].weight.abs_()  # excitatory first layer: the hidden layer spikes
    return net


@pytest.mark.parametrize("pool", [False, True])
@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_meters_count_every_spike_times_its_fanout(pool, encoding):
    """SynOps of the readout = hidden spikes × 3 outputs, also through average pooling (each spike
    before the pool reaches the same 3 weights); direct input costs MACs once, Poisson input SynOps."""
    p = SurrogateParams(timesteps=5, threshold=0.3, batch_norm=False, encoding=encoding)
    net = SpikingNet(_tiny(pool), (1, 4, 4), p).eval()
    ev = net.evaluable()
    seen = []
    lif = "1" if pool else "2"
    net.net.get_submodule(lif).register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    x = torch.rand(7, 1, 4, 4)
    metrics = evaluate(ev, [(x, torch.zeros(7, dtype=torch.long))]).metrics
    assert len(seen) == 1 and seen[0].shape == (5 * 7, *((2, 4, 4) if pool else (6,)))
    hidden_spikes = float(seen[0].sum())
    assert hidden_spikes > 0
    first = "0" if pool else "1"
    readout = "4" if pool else "3"
    assert metrics[f"layer/{readout}/synops"] == pytest.approx(hidden_spikes * 3 / 7)
    if encoding == "direct":
        dense = (2 * 16 * 9 if pool else 16 * 6)  # one pass of the first layer per image
        assert metrics[f"layer/{first}/macs"] == dense
        assert metrics[f"layer/{first}/synops"] == 0
    else:
        assert metrics[f"layer/{first}/macs"] == 0 and metrics[f"layer/{first}/synops"] > 0
    assert metrics["spikes"] == pytest.approx(hidden_spikes / 7)
    assert metrics["timesteps"] == 5


def test_gradients_reach_the_first_layer_through_lif_and_batch_norm():
    net = SpikingNet(_tiny(True), (1, 4, 4), SurrogateParams(timesteps=3, surrogate="arctan", width=0.5, height=2.0))
    loss = nn.functional.cross_entropy(net(torch.rand(4, 1, 4, 4)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert float(net.net.get_submodule("0").weight.grad.abs().sum()) > 0
    order = [n.target for n in net.net.graph.nodes if n.op == "call_module"]
    # the first layer runs once; its current is expanded over time, then normalised over time and batch
    assert order[:4] == ["0", "0_expand_time", "0_snn_bn", "1"]
    assert isinstance(net.net.get_submodule("0_snn_bn"), nn.BatchNorm2d)


@pytest.mark.parametrize("readout", ["mean", "membrane", "spikes"])
def test_readouts_train_on_digits(quick, readout):
    res = run(quick(method="surrogate", model="dnn5",
                    sets=("epochs=2", "timesteps=3", "lr=3e-3", f"readout={readout}")))
    m, steps = res.metrics, res.step_metrics
    assert m["test/accuracy"] > 0.3  # chance: 0.1 (two short epochs)
    assert len(steps["test/accuracy_at_t"]) == 3
    assert steps["test/accuracy_at_t"][-1] == pytest.approx(m["test/accuracy"])
    assert len(steps["surrogate/train/loss"]) == 2
    assert len(steps["surrogate/grad_norm/fc1"]) == 2
    assert m["macs"] > 0 and m["synops"] > 0  # direct input: MACs for fc1, SynOps after it


@pytest.mark.parametrize("sets,needle", [
    (("timesteps=0",), "timesteps"), (("width=0",), "width"), (("height=-1",), "height"),
    (("tau=1",), "tau"), (("surrogate=box",), "surrogate"),
])
def test_bad_parameters_are_named(quick, sets, needle):
    with pytest.raises(HarnessError, match=needle):
        run(quick(method="surrogate", sets=sets))


def test_non_finite_loss_stops_with_a_clear_message(quick, monkeypatch):
    import harness.methods.surrogate as sur

    original = sur.SpikingNet.forward
    monkeypatch.setattr(sur.SpikingNet, "forward", lambda self, x: original(self, x) * float("inf"))
    with pytest.raises(DivergedError, match="loss became nan.*lower the learning rate"):
        run(quick(method="surrogate", model="dnn5", sets=("epochs=1", "timesteps=2")))


def test_unsupported_layer_is_named_before_training(quick, monkeypatch):
    import harness.ann_cache as cache

    monkeypatch.setattr(cache, "train_ann", lambda ctx: pytest.fail("trained before checking"))

    def bad(shape, classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), 8), nn.Tanh(), nn.Linear(8, classes))

    from harness.models import MODELS

    monkeypatch.setattr(MODELS, "_entries", dict(MODELS._entries))
    MODELS.register("tanh-net", "test")(bad)
    with pytest.raises(ConfigError, match="Tanh"):
        run(quick(method="surrogate", model="tanh-net"))


@pytest.mark.parametrize("family,reference,width,height", [
    # SpikingJelly's ATan(α): α/2 / (1 + (π/2·α·x)²) = β·φ(x/γ) with φ(z) = 1/(1 + z²), γ = 2/(πα), β = α/2
    ("arctan", lambda a: __import__("spikingjelly.activation_based.surrogate", fromlist=["ATan"]).ATan(alpha=a),
     lambda a: 2 / (math.pi * a), lambda a: a / 2),
    # SpikingJelly's Sigmoid(α): α·σ(αx)(1 − σ(αx)) = β·4σ(4z)(1 − σ(4z)), z = x/γ, γ = 4/α, β = α/4
    ("sigmoid", lambda a: __import__("spikingjelly.activation_based.surrogate", fromlist=["Sigmoid"]).Sigmoid(alpha=a),
     lambda a: 4 / a, lambda a: a / 4),
    # SoftSign(α): α / (2(1 + |αx|)²) = β / (1 + |x/γ|)², γ = 1/α, β = α/2
    ("fast-sigmoid", lambda a: __import__("spikingjelly.activation_based.surrogate", fromlist=["SoftSign"]).SoftSign(
        alpha=a), lambda a: 1 / a, lambda a: a / 2),
    # PiecewiseQuadratic(α): α − α²|x| for |x| < 1/α = β·max(0, 1 − |x/γ|), γ = 1/α, β = α
    ("triangle", lambda a: __import__("spikingjelly.activation_based.surrogate", fromlist=["PiecewiseQuadratic"])
     .PiecewiseQuadratic(alpha=a), lambda a: 1 / a, lambda a: a),
])
@pytest.mark.parametrize("alpha", [1.0, 4.0])
def test_surrogate_gradients_equal_spikingjellys_own_at_the_matching_width_and_height(family, reference, width,
                                                                                      height, alpha):
    """An outside reference for the surrogate shapes: SpikingJelly's single-α surrogates are ours at
    the width and height that α ties together. Wrong variants: the width applied as a product, the
    height left out, another shape."""
    x = torch.linspace(-3, 3, 121, requires_grad=True)
    ours = WidthHeightSurrogate(family, width(alpha), height(alpha))
    ours(x).sum().backward()
    mine = x.grad.clone()
    x.grad = None
    sj = reference(alpha)
    assert torch.equal(sj(x).detach(), (x.detach() >= 0).float())
    sj(x).sum().backward()
    assert torch.allclose(mine, x.grad, rtol=1e-5, atol=1e-7)
