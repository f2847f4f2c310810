"""The evaluation invariants (``harness.evaluation.check_invariants``), each on its edge: a count
exactly on its bound passes, one just past it fails, naming what broke.

The network: ``Linear(2, 3) → ReLU → Linear(3, 2)``, T = 4; the first layer reads the analog input
(2 samples, one pass each), the ReLU is 3 spiking neurons, the second layer is fed their spikes.
The counts are recorded by hand into the meters, as an evaluable would.
"""

from __future__ import annotations

import pytest
import torch
from harness.api import Evaluable, Outputs
from harness.errors import InvariantError
from harness.evaluation import check_invariants
from harness.graph import trace
from harness.meters import Meters
from torch import nn

T, N = 4, 2  # time steps, samples


class Fake(Evaluable):
    timesteps = T
    max_spikes_per_neuron = float(T)

    def __init__(self, graph):
        self.graph = graph

    def run_batch(self, x, meters):  # pragma: no cover - the counts are recorded by hand
        return Outputs()


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))  # fan-outs 2, 1, 1
    return model, Fake(trace(model, (2,)))


def _meters(model, *, spikes_per_neuron=(1.0, 2.0, 0.0), neurons=3, spike_input_counts=None, macs_rows=None,
            first_as_spikes=False, skip=()):
    """Counts of one evaluation of ``N`` samples: the neurons fire ``spikes_per_neuron`` each per
    inference (summed over samples: × N); the second layer receives exactly those spikes."""
    m = Meters(timesteps=T)
    if "0" not in skip:
        x = torch.ones(macs_rows or N, 2)
        m.record_synapse("0", model[0], x, spikes=first_as_spikes, reads_input=True)
    per = torch.tensor(spikes_per_neuron) * N
    if "1" not in skip:
        m.record_neuron_counts("1", spikes=float(per.sum()), entries=float(neurons * T * N),
                               zeros=float(neurons * T * N - per.sum()))
    counts = per if spike_input_counts is None else torch.tensor(spike_input_counts) * N
    if "2" not in skip:
        m.record_synapse("2", model[2], counts.unsqueeze(0), spikes=True, rows=T * N, reads_input=False)
    m.record_predictions(torch.zeros(N), torch.zeros(N))
    return m


def _check(ev, m):
    metrics, _ = m.summary()
    check_invariants(ev, m, metrics)


def test_consistent_counts_pass(net):
    model, ev = net
    _check(ev, _meters(model))


def test_a_neuron_firing_exactly_t_times_passes_and_one_spike_more_fails(net):
    """Bound: spikes per neuron per inference ≤ T (``>`` vs ``>=``: at T it must pass)."""
    model, ev = net
    _check(ev, _meters(model, spikes_per_neuron=(4.0, 4.0, 4.0)))  # every neuron at its maximum
    with pytest.raises(InvariantError, match=r"`1` fired 4\.16667 spikes per neuron per inference, above the bound 4"):
        _check(ev, _meters(model, spikes_per_neuron=(4.0, 4.0, 4.5), spike_input_counts=(4.0, 4.0, 4.0)))


def test_neurons_are_metered_with_exactly_the_graphs_count(net):
    model, ev = net
    with pytest.raises(InvariantError, match="`1` was metered with 4 neurons, the traced network has 3"):
        _check(ev, _meters(model, spikes_per_neuron=(1.0, 2.0, 0.0, 0.0), neurons=4, spike_input_counts=(1, 2, 0)))
    with pytest.raises(InvariantError, match="the neuron op `1` was never metered"):
        _check(ev, _meters(model, skip=("1",)))


def test_every_synaptic_layer_is_metered_with_its_weights(net):
    model, ev = net
    with pytest.raises(InvariantError, match="the synaptic op `2` was never metered"):
        _check(ev, _meters(model, skip=("2",)))
    m = _meters(model)
    with torch.no_grad():
        ev.graph["2"].layer.weight[0, 0] = 0.0  # the network changed after it was metered
    with pytest.raises(InvariantError, match=r"`2` was metered with 6 weights \(2 zero\), the network's layer has "
                                             r"6 \(3 zero\)"):
        _check(ev, m)


def test_synops_exactly_at_capacity_pass_and_above_fail(net):
    """Capacity of the second layer: every source neuron firing T times, each spike reaching its
    non-zero fan-out (2, 1, 1): 4 × (2 + 1 + 1) = 16 SynOps per inference."""
    model, ev = net
    m = _meters(model, spikes_per_neuron=(4.0, 4.0, 4.0))
    assert m.summary()[0]["layer/2/synops"] == 16.0
    _check(ev, m)
    over = _meters(model, spikes_per_neuron=(4.0, 4.0, 4.0), spike_input_counts=(4.5, 4.0, 4.0))
    with pytest.raises(InvariantError, match=r"`2`: 17 SynOps per inference exceed its capacity 16"):
        _check(ev, over)


def test_synops_above_the_largest_fanout_times_the_sources_spikes_fail(net):
    """The sources fire 1 + 2 + 0 = 3 spikes; the largest fan-out is 2: at most 6 SynOps. Spikes
    arriving from the busiest neuron only (3 on neuron 0) give exactly 6; one more is a bug."""
    model, ev = net
    _check(ev, _meters(model, spike_input_counts=(3.0, 0.0, 0.0)))
    with pytest.raises(InvariantError, match=r"`2`: 7 SynOps per inference, more than its largest fan-out 2 x the "
                                             r"3 spikes of its sources"):
        _check(ev, _meters(model, spike_input_counts=(3.0, 1.0, 0.0)))


def test_a_layer_reading_the_analog_input_as_spikes_fails(net):
    model, ev = net
    with pytest.raises(InvariantError, match="`0` reads the analog input but was metered as fed by spikes"):
        _check(ev, _meters(model, first_as_spikes=True))


def test_dense_macs_of_an_input_layer_equal_its_shapes(net):
    model, ev = net
    with pytest.raises(InvariantError, match=r"`0`: 9 dense MACs per inference metered, its shapes give 6"):
        _check(ev, _meters(model, macs_rows=3))  # 3 passes for 2 samples: 1.5 passes x 6 MACs


def test_an_accuracy_outside_0_1_fails(net):
    model, ev = net
    m = _meters(model)
    metrics, _ = m.summary()
    metrics["test/accuracy"] = 1.0000001
    with pytest.raises(InvariantError, match=r"test/accuracy = 1\.0000001"):
        check_invariants(ev, m, metrics)


def test_a_first_layer_metered_as_spike_fed_does_not_hide_a_later_layers_excess(net):
    """Both problems are reported: the check goes on past the input layer. Wrong variant: ``break``
    where the input layer is skipped (every later layer's capacity unchecked)."""
    model, ev = net
    bad = _meters(model, first_as_spikes=True, spikes_per_neuron=(4.0, 4.0, 4.0), spike_input_counts=(4.5, 4.0, 4.0))
    with pytest.raises(InvariantError) as e:
        _check(ev, bad)
    assert any("`0` reads the analog input" in p for p in e.value.problems)
    assert any("`2`: 17 SynOps per inference exceed its capacity 16" in p for p in e.value.problems)
