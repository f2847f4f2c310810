"""The fx graph IR: what it accepts, how it names ops, BatchNorm folding, fingerprints, and spike
events through pooling, adds and concatenations against a brute-force count."""

import pytest
import torch
import torch.nn.functional as F
from harness.errors import ConfigError
from harness.graph import Kind, TraceFailure, event_counts, event_path, trace
from torch import nn


class UserNet(nn.Module):
    """How people write networks: F.relu, torch.flatten, BatchNorm, a residual add, cat, pooling."""

    def __init__(self, pool: str = "avg"):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.side = nn.Conv2d(4, 2, 1)
        self.pool = nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.conv2(h) + h)
        h = torch.cat([self.pool(h), self.pool(F.relu(self.side(h)))], 1)
        return self.fc(torch.flatten(self.gap(h), 1))


def _randomise_bn(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_a_class_with_its_own_forward_is_classified_and_named():
    g = trace(UserNet(), (1, 8, 8))
    kinds = {op.name: op.kind for op in g}
    assert kinds["conv1"] == kinds["conv2"] == kinds["side"] == kinds["fc"] == Kind.SYNAPSE
    assert kinds["bn1"] == Kind.NORM
    assert [op.name for op in g.neurons] == ["relu", "relu_1", "relu_2"]
    assert kinds["add"] == Kind.ADD and kinds["cat"] == Kind.CAT
    assert kinds["pool"] == kinds["pool_1"] == Kind.AVGPOOL  # one module called twice: two ops
    assert kinds["gap"] == Kind.ADAPTIVE_AVGPOOL and kinds["flatten"] == Kind.FLATTEN
    assert g["cat"].shape == (6, 4, 4) and g["fc"].shape == (3,)
    assert g.depth() == 3


def test_functions_in_submodules_are_named_by_their_module_path():
    from harness.models import build_model

    g = trace(build_model("resnet-small", (1, 8, 8), 10), (1, 8, 8))
    names = [op.name for op in g]
    assert "layer1.0.conv1" in names and "layer2.0.shortcut.0" in names
    adds = [op.name for op in g.of(Kind.ADD)]
    assert adds == ["layer1.0.add", "layer2.0.add", "layer3.0.add"]
    relus = [op.name for op in g.neurons]
    assert relus[:3] == ["relu", "layer1.0.relu", "layer1.0.relu_1"]  # a ReLU module called twice


def test_batch_norm_folds_exactly_enough_and_leaves_no_norm_op():
    model = _randomise_bn(UserNet())
    g = trace(model, (1, 8, 8))
    folded = g.folded()
    assert not folded.of(Kind.NORM)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded.gm(x), model(x), atol=1e-5)
    assert [op.name for op in folded] == [op.name for op in g if op.kind != Kind.NORM]


def test_a_batch_norm_after_a_relu_cannot_be_folded_and_is_named():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    g = trace(_randomise_bn(net), (1, 8, 8))
    from harness.methods.rate import Rate

    problems = Rate.graph_problems(g)
    assert problems[0][0].name == "2" and "does not directly follow" in problems[0][1]
    with pytest.raises(ConfigError, match=r"node `2` \(BatchNorm2d\) cannot be converted by rate"):
        g.check("rate", problems)


def test_tracing_failure_names_the_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(TraceFailure) as err:
        trace(Branchy(), (4,), name="branchy")
    msg = str(err.value)
    assert "branchy (Branchy) cannot be traced by torch.fx at" in msg
    assert "test_graph.py" in msg and "if x.sum() > 0:" in msg


def test_fingerprint_follows_the_architecture_not_the_weights():
    a, b = trace(UserNet(), (1, 8, 8)), trace(UserNet(), (1, 8, 8))  # different random weights
    assert a.fingerprint() == b.fingerprint()
    assert trace(UserNet(pool="max"), (1, 8, 8)).fingerprint() != a.fingerprint()
    assert trace(UserNet(), (1, 16, 16)).fingerprint() != a.fingerprint()


def test_unsupported_ops_are_named_with_the_methods_that_accept_them():
    from harness.graph import UnsupportedOps
    from harness.methods import with_alternatives
    from harness.methods.ttfs import TTFS
    from harness.models import build_model

    g = trace(build_model("resnet-small", (1, 8, 8), 10), (1, 8, 8))
    with pytest.raises(UnsupportedOps) as err:
        g.check("ttfs", TTFS.graph_problems(g))
    assert err.value.op.name == "layer1.0.add" and err.value.method == "ttfs"  # the graph reports data ...
    assert "accept" not in str(err.value)  # ... and does not know the methods
    msg = str(with_alternatives(err.value, g))  # the methods layer words it
    assert msg.startswith("node `layer1.0.add` (operator.add) cannot be converted by ttfs: add of two spike trains")
    assert "; rate, layer-scaling, qcfs, surrogate and sharpen accept it" in msg  # the adds join currents


class Joins(nn.Module):
    def __init__(self):
        super().__init__()
        self.ca, self.cb = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)
        self.fc = nn.Linear(2 * 2 * 2 + 2 * 2 * 2 + 2 * 2 * 2, 5)

    def forward(self, x):
        a, b = F.relu(self.ca(x)), F.relu(self.cb(x))
        z = torch.cat([F.avg_pool2d(a, 2), F.max_pool2d(b, 2), F.avg_pool2d(a + b, 2)], 1)
        return self.fc(torch.flatten(z, 1))


def _brute_force_events(a, b):
    """Events at fc's inputs, one step at a time: every spike of a pooled by averaging lands once on
    its window; max pooling passes one spike per window that has any; a + b carries both."""
    T, B = a.shape[:2]
    out = torch.zeros(B, 24, dtype=torch.float64)
    for t in range(T):
        for s in range(B):
            vals = []
            for part in ("avg_a", "max_b", "avg_ab"):
                for c in range(2):
                    for i in range(2):
                        for j in range(2):
                            win_a = a[t, s, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                            win_b = b[t, s, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2]
                            if part == "avg_a":
                                vals.append(float(win_a.sum()))
                            elif part == "max_b":
                                vals.append(float(win_b.max()))
                            else:
                                vals.append(float(win_a.sum() + win_b.sum()))
            out[s] += torch.tensor(vals, dtype=torch.float64)
    return out


def test_event_counts_through_pooling_add_and_cat_match_a_brute_force_count():
    g = trace(Joins(), (1, 4, 4))
    path = event_path(g, "fc")
    assert set(path.sources) == {"relu", "relu_1"} and path.per_step  # max pooling: step by step
    assert path.paths == {"relu": 2, "relu_1": 2}
    torch.manual_seed(0)
    T, B = 5, 3
    a = (torch.rand(T, B, 2, 4, 4) < 0.4).float()
    b = (torch.rand(T, B, 2, 4, 4) < 0.4).float()
    got = event_counts(g, path, {"relu": a.reshape(T * B, 2, 4, 4), "relu_1": b.reshape(T * B, 2, 4, 4)})
    got = got.reshape(T, B, -1).sum(0).double()
    assert torch.equal(got, _brute_force_events(a, b))


def test_linear_paths_may_sum_over_time_first():
    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 2, 1)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            a = F.relu(self.c(x))
            return self.fc(torch.flatten(F.avg_pool2d(a + a, 2), 1))

    g = trace(Linear(), (1, 4, 4))
    path = event_path(g, "fc")
    assert not path.per_step
    a = (torch.rand(6, 2, 2, 4, 4) < 0.5).float()
    step_by_step = event_counts(g, path, {"relu": a.reshape(12, 2, 4, 4)}).reshape(6, 2, -1).sum(0)
    summed_first = event_counts(g, path, {"relu": a.sum(0)})
    assert torch.equal(step_by_step, summed_first)
    assert torch.equal(summed_first, 2 * a.sum(0).reshape(2, 2, 2, 2, 2, 2).sum((3, 5)).reshape(2, -1))


def test_mixing_the_analog_input_with_spikes_before_a_layer_is_refused():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(1, 1, 1)
            self.fc = nn.Linear(16, 2)

        def forward(self, x):
            return self.fc(torch.flatten(F.relu(self.c(x)) + x, 1))

    g = trace(Mixed(), (1, 4, 4))
    with pytest.raises(ConfigError, match=r"node `x` \(placeholder\) lies between spikes and the synaptic layer `fc`"):
        event_path(g, "fc")


class Pools(nn.Module):
    """Pooling whose windows overlap, stick out into padding or past the map, or are uneven."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(27, 2)

    def forward(self, x):
        a = F.relu(self.c(x))  # 5 x 5 spikes
        p1 = F.avg_pool2d(a, 3, stride=2, padding=1, ceil_mode=True)  # 3 x 3, windows overlap, padded
        p2 = F.max_pool2d(a, 2, stride=2, ceil_mode=True)  # 3 x 3, the last windows half outside
        p3 = F.adaptive_avg_pool2d(a, 3)  # 3 x 3 windows of 2, 3, 2 rows/columns
        return self.fc(torch.cat([torch.flatten(p1, 1), torch.flatten(p2, 1), torch.flatten(p3, 1)], 1))


def _windows_by_hand():
    """Rows (or columns) each output of the three pools reads, written out from PyTorch's rules:
    avg 3/2/pad 1/ceil: starts at -1, 1, 3 (clipped to the map, padding is no spike); max 2/2/ceil:
    [0, 2), [2, 4), [4, 5); adaptive 5 -> 3: [floor(5i/3), ceil(5(i+1)/3)) = [0, 2), [1, 4), [3, 5)."""
    avg = [range(0, 2), range(1, 4), range(3, 5)]
    mx = [range(0, 2), range(2, 4), range(4, 5)]
    adaptive = [range(0, 2), range(1, 4), range(3, 5)]
    return avg, mx, adaptive


def test_events_through_overlapping_padded_ceil_and_uneven_pools_match_a_count_by_hand():
    """A spike reaches a layer once per window that holds it (average pools: overlapping windows
    count it twice, padding never), one per window and step through max pooling. Wrong variants:
    floor for ceil in the window count, padding counted, a window's size off by one, averaging
    instead of summing, max pooling passing every spike of its window."""
    g = trace(Pools(), (1, 5, 5))
    path = event_path(g, "fc")
    torch.manual_seed(3)
    T, B = 4, 2
    a = (torch.rand(T, B, 1, 5, 5) < 0.5).float()
    got = event_counts(g, path, {"relu": a.reshape(T * B, 1, 5, 5)}).reshape(T, B, -1).sum(0)
    avg, mx, adaptive = _windows_by_hand()
    want = torch.zeros(B, 27)
    for t in range(T):
        for s in range(B):
            m = a[t, s, 0]
            k = 0
            for rows_cols, how in ((avg, "sum"), (mx, "any"), (adaptive, "sum")):
                for r in rows_cols:
                    for c in rows_cols:
                        window = m[list(r)][:, list(c)]
                        want[s, k] += float(window.sum()) if how == "sum" else float(window.max())
                        k += 1
    assert torch.equal(got.float(), want)
