"""qcfs: the activation and its gradients by hand, the conversion identity of the paper (T = L,
constant input: spikes = L·QCFS(x)/λ exactly), the SNN approaching its QCFS ANN as T grows, max
pools replaced by average pools of the same window, and a tracked run. Numbers are dyadic (λ and L
powers of two, inputs and weights multiples of 1/8), so float32 holds every sum exactly on any CPU."""

import numpy as np
import pytest
import torch
from harness.graph import Kind, trace
from harness.meters import Meters
from harness.methods.qcfs import QCFS, QCFSParams, install_qcfs, replace_maxpools
from harness.methods.rate import RateModel
from harness.simulate import Simulator
from torch import nn


def qcfs_by_hand(x, lam, L):
    """The paper's formula, in NumPy: λ · clip(floor(x·L/λ + 1/2) / L, 0, 1)."""
    return lam * np.clip(np.floor(np.asarray(x, np.float64) * L / lam + 0.5) / L, 0.0, 1.0)


# pre-activations on the edges for λ = 2, L = 8: x·L/λ + ½ = 4x + ½
EDGES = np.array([-0.5, 0.0, 0.125 - 1 / 128, 0.125, 0.75, 1.875 - 1 / 128, 1.875, 2.0, 2.5])
COUNTS = np.array([0, 0, 0, 1, 3, 7, 8, 8, 8])  # floor(4x + ½) clipped to [0, 8], by hand


def test_the_activation_is_the_papers_formula_on_its_edges():
    """Wrong variants: no ½ shift (floor), round instead of floor at a half, clip before the shift
    at 0, the top level missing (clip to (L−1)/L)."""
    assert np.array_equal(qcfs_by_hand(EDGES, 2.0, 8), 2.0 * COUNTS / 8)
    out = QCFS(2.0, 8)(torch.tensor(EDGES, dtype=torch.float32))
    assert np.array_equal(out.detach().numpy(), (2.0 * COUNTS / 8).astype(np.float32))


def test_gradients_pass_the_floor_straight_through_and_train_lambda_as_the_paper():
    """∂/∂x = 1 inside [0, λ], 0 outside; ∂/∂λ = q − x/λ inside, 1 above, 0 below. Wrong variants:
    the floor's zero gradient (nothing trains), λ getting no gradient inside the range."""
    x = torch.tensor([-1.0, 0.25, 0.75, 3.0], requires_grad=True)
    act = QCFS(2.0, 8)
    act(x).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    q = np.floor(np.array([0.25, 0.75]) * 4 + 0.5) / 8  # 1/8, 3/8
    want = 0.0 + (q[0] - 0.125) + (q[1] - 0.375) + 1.0
    assert act.lam.grad.item() == pytest.approx(want, abs=1e-6)


def _one_layer(pre):
    """Linear (its output = ``pre`` for the input [1, 0, 0, 0]) → QCFS(λ 2, L 8) → Linear."""
    net = nn.Sequential(nn.Linear(4, len(pre)), nn.ReLU(), nn.Linear(len(pre), 3))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[:, 0] = torch.tensor(pre, dtype=torch.float32)
        net[0].bias.zero_()
        net[2].weight.fill_(0.125)
        net[2].bias.zero_()
    graph = trace(net, (4,))
    install_qcfs(graph.gm, graph, {op.name: 2.0 for op in graph.neurons}, 8)
    return graph.gm


def test_with_T_equal_L_each_neuron_fires_L_times_its_activation_over_lambda():
    """The paper's identity, on the edges of every level: IF, reset by subtraction, threshold λ,
    membrane from λ/2, T = L = 8. Wrong variants: v_init 0 (floor, not round: the half-levels fire
    one less), a threshold that fires only above θ (the edges fire one less)."""
    gm = _one_layer(EDGES)
    converted = trace(gm, (4,)).folded()
    (neuron,) = converted.neurons
    assert isinstance(neuron.module, QCFS)
    net = RateModel(converted, {neuron.name: neuron.module.threshold}).convert(QCFSParams(timesteps=8))
    meters = Meters(timesteps=8, keep_per_neuron=True)
    Simulator(net).run(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), 8, meters)
    counts = meters.neurons[neuron.name].per_neuron.reshape(-1).numpy()
    assert np.array_equal(counts, COUNTS) and np.array_equal(counts, 8 * qcfs_by_hand(EDGES, 2.0, 8) / 2.0)


def test_at_T_equal_L_the_snn_is_its_qcfs_ann_and_as_T_grows_the_clipped_relu_ann():
    """What conversion of a QCFS network converges to: at T = L the SNN agrees with its QCFS ANN
    best; as T grows the spike rates approach λ·clip(x/λ, 0, 1) — the *unquantised* clipped ReLU,
    not the quantised QCFS — so agreement moves to the clipped-ReLU network (measured, seed 1:
    QCFS 0.92 at T = 4, 0.71 at T = 1024; clipped ReLU 0.69 → 0.996). Bounded, not pinned."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    clipped = nn.Sequential(net[0], nn.Hardtanh(0.0, 1.0), net[2], nn.Hardtanh(0.0, 1.0), net[4])
    graph = trace(net, (16,))
    install_qcfs(graph.gm, graph, {op.name: 1.0 for op in graph.neurons}, 4)
    x = torch.rand(256, 16)
    with torch.no_grad():
        qcfs_ann, clip_ann = graph.gm(x).argmax(-1), clipped(x).argmax(-1)
    converted = trace(graph.gm, (16,)).folded()
    lams = {op.name: op.module.threshold for op in converted.neurons}
    agree = {}
    for T in (4, 1024):
        preds = Simulator(RateModel(converted, lams).convert(QCFSParams(timesteps=T))).run(x, T)[-1]
        agree[T] = ((preds == qcfs_ann).float().mean().item(), (preds == clip_ann).float().mean().item())
    assert agree[4][0] >= agree[1024][0] + 0.1
    assert agree[1024][1] >= 0.98 and agree[1024][1] >= agree[4][1] + 0.1


def test_max_pools_become_average_pools_of_the_same_window():
    """Module and functional max pools alike. Wrong variants: another window or stride, padding
    counted in the average, a pool left as max."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.pool = nn.MaxPool2d(2, ceil_mode=True)
            self.fc = nn.Linear(2 * 2 * 2, 2)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv(x)))
            x = nn.functional.max_pool2d(x, 3, 2, 1)
            return self.fc(torch.flatten(x, 1))

    graph = trace(Net().eval(), (1, 8, 8))
    replaced = replace_maxpools(graph.gm, graph)
    assert len(replaced) == 2
    after = trace(graph.gm, (1, 8, 8))
    assert not after.of(Kind.MAXPOOL) and len(after.of(Kind.AVGPOOL)) == 2
    pools = [op.module for op in after.of(Kind.AVGPOOL)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode, p.count_include_pad) for p in pools] == [
        (2, 2, 0, True, False), (3, 2, 1, False, False)]
    x = torch.rand(1, 2, 4, 4)
    want = x[..., 0:2, 0:2].mean(dim=(-1, -2))  # the top-left 3×3 window covers rows/cols −1..1: padding left out
    assert torch.allclose(pools[1](x)[..., 0, 0], want)


def test_prepare_installs_qcfs_from_calibrated_lambdas_and_converts_with_them():
    """Without fine-tuning (epochs 0) the thresholds are the calibrated λ of the ReLU ANN, the max
    pool is counted as replaced, and the evaluable simulates T steps of IF neurons with those
    thresholds. Wrong variants: λ not from the calibration, the replaced pools not counted, the
    QCFS ANN's accuracy not the one its evaluation gave."""
    from types import SimpleNamespace

    from harness.calibration import calibrate_scales
    from harness.methods.qcfs import Qcfs

    torch.manual_seed(0)
    ann = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 3))
    x = np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32)
    evaluated = []
    ctx = SimpleNamespace(
        dataset=SimpleNamespace(input_shape=(1, 4, 4), subset=lambda split, n: (x[:n], None), is_events=False), seed=0,
        evaluate=lambda net, desc, what: evaluated.append(what) or SimpleNamespace(metrics={"test/accuracy": 0.625}))
    prep = Qcfs().prepare(ctx, ann, QCFSParams(epochs=0, timesteps=4, calibration_samples=10))
    avg = nn.Sequential(ann[0], ann[1], nn.AvgPool2d(2), ann[3], ann[4])
    want = calibrate_scales(trace(avg, (1, 4, 4)).folded(), torch.from_numpy(x[:10]), "percentile", 99.9)
    assert prep.metrics["layer/1/lambda"] == pytest.approx(want["1"])
    assert prep.metrics["qcfs/maxpool_replaced"] == 1.0 and prep.metrics["qcfs/ann/test/accuracy"] == 0.625
    assert evaluated == ["the QCFS ANN"] and prep.model.timesteps == 4


@pytest.mark.slow
def test_a_tracked_qcfs_run_reports_its_ann_its_thresholds_and_the_replaced_pools(tmp_path, monkeypatch):
    import json
    import os

    from harness.cli import main
    from mlflow.tracking import MlflowClient

    out = tmp_path / "r.json"
    rc = main(["run", "--method", "qcfs", "--model", "vgg-small", "--dataset", "digits", "--epochs", "2", "--set",
               "epochs=1", "--set", "timesteps=4", "--no-progress", "-o", str(out)])
    assert rc == 0
    rec = json.loads(out.read_text())
    m = rec["metrics"]
    assert 0 <= m["qcfs/ann/test/accuracy"] <= 1 and m["qcfs/maxpool_replaced"] >= 1
    lams = {k: v for k, v in m.items() if k.startswith("layer/") and k.endswith("/lambda")}
    assert lams and all(v > 0 for v in lams.values())
    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(rec["tracking"]["run_id"])
    assert run.info.status == "FINISHED" and "qcfs/ann/test/accuracy" in run.data.metrics
    assert rec["provenance"]["qcfs_cache"] == "miss" and rec["provenance"]["ann_cache"] == "miss"
    # a second run takes the fine-tuned QCFS ANN from its own cache entry (not the ReLU ANN's):
    # the same numbers without fine-tuning again
    again = tmp_path / "r2.json"
    assert main(["run", "--method", "qcfs", "--model", "vgg-small", "--dataset", "digits", "--epochs", "2", "--set",
                 "epochs=1", "--set", "timesteps=4", "--no-progress", "-o", str(again)]) == 0
    rec2 = json.loads(again.read_text())
    assert rec2["provenance"]["qcfs_cache"] == "hit" and rec2["provenance"]["ann_cache"] == "hit"
    assert rec2["provenance"]["qcfs_cache_file"] != rec2["provenance"]["ann_cache_file"]
    assert rec2["metrics"]["test/accuracy"] == m["test/accuracy"] and rec2["metrics"]["spikes"] == m["spikes"]
    assert rec2["step_metrics"]["qcfs/train/loss"] == rec["step_metrics"]["qcfs/train/loss"]


def test_a_functional_pool_keeps_its_ceil_mode_and_a_dilated_one_is_refused():
    """``F.max_pool2d``'s window is read like a module's: ceil_mode kept (a 5×5 map pooled 2×2 is
    3×3 with it, 2×2 without), dilation refused. Wrong variants: ceil_mode dropped for function
    calls, a dilated pool averaged over a dense window."""
    from harness.config import ConfigError

    class Net(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.conv, self.kw = nn.Conv2d(1, 1, 1), kw

        def forward(self, x):
            return torch.flatten(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2, **self.kw), 1)

    graph = trace(Net(ceil_mode=True).eval(), (1, 5, 5))
    replace_maxpools(graph.gm, graph)
    (pool,) = [op.module for op in trace(graph.gm, (1, 5, 5)).of(Kind.AVGPOOL)]
    assert pool.ceil_mode is True and graph.gm(torch.rand(1, 1, 5, 5)).shape == (1, 9)
    graph = trace(Net(dilation=2).eval(), (1, 5, 5))
    with pytest.raises(ConfigError, match="dilated, or returning indices"):
        replace_maxpools(graph.gm, graph)


def test_a_relu_module_called_twice_gets_a_qcfs_and_a_lambda_per_call():
    """resnet-small's blocks call one ReLU module twice: each call is its own layer with its own λ.
    Wrong variant: one QCFS shared by both calls (one λ for two layers, trained as one)."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu, self.fc = nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.relu(self.b(self.relu(self.a(x)))))

    graph = trace(Twice(), (4,))
    names = [op.name for op in graph.neurons]
    install_qcfs(graph.gm, graph, {names[0]: 1.0, names[1]: 2.0}, 8)
    again = trace(graph.gm, (4,))
    mods = [op.module for op in again.neurons]
    assert len(mods) == 2 and mods[0] is not mods[1]
    assert [op.name for op in again.neurons] == names
    assert [m.threshold for m in mods] == [1.0, 2.0]
