"""export.py without training: the chain an evaluable describes (chain_sequential), the neuron
nodes (spikingjelly_node), the NIR names (rename_nodes, to_nir) and save_network's promise that a
failure costs a file, never the run. Networks are built by hand; each test names the wrong
variant it fails on. The trained, tracked runs are in test_export.py."""

import pytest
import torch
from harness.api import SingleStep
from harness.errors import NirUnsupported
from harness.export import FORMAT, chain_sequential, rename_nodes, save_network, spikingjelly_node, to_nir
from harness.graph import Kind, trace
from spikingjelly.activation_based import neuron
from torch import nn


class _Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * 3 * 3, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act(self.conv(x))), 1))


def _if(op):
    return neuron.IFNode(v_threshold=2.0, step_mode="s")


def test_a_chain_becomes_its_layers_and_neurons_in_order_with_the_op_names():
    """Fails if a layer is skipped or shared with the network (a deepcopy dropped: resetting the
    export would touch the run's own layers), the flatten is lost, or the names do not follow the
    modules."""
    net = _Chain().eval()
    graph = trace(net, (1, 8, 8))
    form = chain_sequential(graph, "m", lambda op: op.module, _if)
    kinds = [type(m) for m in form.sequential]
    assert kinds == [nn.Conv2d, neuron.IFNode, nn.AvgPool2d, nn.Flatten, nn.Linear]
    assert form.names == ["conv", "act", "pool", "flatten", "fc"]
    assert form.sequential[0] is not net.conv and torch.equal(form.sequential[0].weight, net.conv.weight)
    assert form.notes == []


def test_a_batchnorm_left_unfolded_is_fused_into_the_layer_before_it():
    """Fails if the BatchNorm is dropped (its scale lost) instead of fused as torch's eval fusion
    does."""
    net = _Chain().eval()
    net.bn.running_mean.fill_(0.5)
    net.bn.running_var.fill_(4.0)

    class WithBN(_Chain):
        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.act(self.bn(self.conv(x)))), 1))

    bn_net = WithBN().eval()
    bn_net.load_state_dict(net.state_dict())
    graph = trace(bn_net, (1, 8, 8))  # unfolded: the graph keeps the norm op
    assert graph.of(Kind.NORM)
    form = chain_sequential(graph, "m", lambda op: op.module, _if)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(form.sequential[0](x), bn_net.bn(bn_net.conv(x)), atol=1e-5)
    assert len(form.sequential) == 5


@pytest.mark.parametrize("body,needle", [
    (lambda m, x: m.fc(torch.flatten(torch.nn.functional.max_pool2d(m.act(m.conv(x)), 2), 1)), "no max pooling"),
    (lambda m, x: m.fc(torch.flatten(m.pool(m.act(m.conv(x)) + m.conv(x)), 1)), "joins branches"),
])
def test_what_nir_cannot_hold_is_refused_naming_the_method_and_op(body, needle):
    class Net(_Chain):
        def forward(self, x):
            return body(self, x)

    graph = trace(Net().eval(), (1, 8, 8))
    with pytest.raises(NirUnsupported, match=rf"^mymethod: .*{needle}"):
        chain_sequential(graph, "mymethod", lambda op: op.module, _if)


def test_a_batchnorm_after_a_linear_layer_is_fused_into_it():
    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.bn, self.act, self.fc2 = nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)

        def forward(self, x):
            return self.fc2(self.act(self.bn(self.fc1(x))))

    net = Dense().eval()
    with torch.no_grad():
        net.bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        net.bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
    graph = trace(net, (4,))
    form = chain_sequential(graph, "m", lambda op: op.module, _if)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(form.sequential[0](x), net.bn(net.fc1(x)), atol=1e-5)
    assert [type(m) for m in form.sequential] == [nn.Linear, neuron.IFNode, nn.Linear]


def test_a_chain_without_a_spiking_neuron_is_refused():
    graph = trace(_Chain().eval(), (1, 8, 8))
    with pytest.raises(NirUnsupported, match="no spiking neuron"):
        chain_sequential(graph, "m", lambda op: op.module, lambda op: nn.ReLU())


def test_a_layer_that_is_not_linear_or_conv_is_refused():
    graph = trace(_Chain().eval(), (1, 8, 8))
    with pytest.raises(NirUnsupported, match="is not a Linear or Conv2d layer"):
        chain_sequential(graph, "m", lambda op: nn.Identity(), _if)


def test_neuron_nodes_keep_the_dynamics_and_reset_to_zero():
    """Fails if tau, decay_input, the threshold or the reset is not carried over, a soft reset
    (v_reset None) is exported as anything but 0, or the node is not single-step."""
    op = trace(_Chain().eval(), (1, 8, 8))["act"]
    lif = spikingjelly_node(neuron.LIFNode(tau=3.0, decay_input=False, v_threshold=0.7, v_reset=None,
                                           step_mode="m"), op, "m")
    assert isinstance(lif, neuron.LIFNode) and lif.step_mode == "s"
    assert (lif.tau, lif.decay_input, lif.v_threshold, lif.v_reset) == (3.0, False, 0.7, 0.0)
    hard = spikingjelly_node(neuron.LIFNode(tau=2.0, v_reset=-0.5, step_mode="m"), op, "m")
    assert hard.v_reset == -0.5
    wrapped = nn.Module()
    wrapped.node = neuron.IFNode(v_threshold=1.5, v_reset=-0.25)
    node = spikingjelly_node(wrapped, op, "m")
    assert type(node) is neuron.IFNode and (node.v_threshold, node.v_reset, node.step_mode) == (1.5, -0.25, "s")
    with pytest.raises(NirUnsupported, match=r"^m: .*ReLU has no NIR neuron"):
        spikingjelly_node(nn.ReLU(), op, "m")


def _seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(1), nn.Linear(4, 3), neuron.IFNode(step_mode="s"), nn.Linear(3, 2)).eval()


def test_nir_nodes_take_the_op_names_and_the_ends_are_input_and_output():
    """Fails if a node keeps the exporter's position name, an edge still points at an old name,
    or a name clash with a node NIR adds goes through."""
    graph = to_nir(_seq(), (4,), ["flatten", "fc1", "lif1", "fc2"])
    assert set(graph.nodes) == {"input", "flatten", "fc1", "lif1", "fc2", "output"}
    assert set(graph.edges) == {("input", "flatten"), ("flatten", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"),
                                ("fc2", "output")}
    plain = to_nir(_seq(), (4,))
    with pytest.raises(NirUnsupported, match="two nodes would be named '_1'"):
        rename_nodes(plain, {"_0": "_1"})  # _1 keeps its name: the two would merge
    with pytest.raises(NirUnsupported, match="two nodes would be named 'input'"):
        to_nir(_seq(), (4,), ["input", "fc1", "lif1", "fc2"])  # an op named like NIR's own input node


class _Ev:
    """An evaluable as export sees it: its tensors and, maybe, its single-step form."""

    def __init__(self, form=None, fail=None, tensors_fail=False):
        self.form, self.fail, self.tensors_fail = form, fail, tensors_fail

    def tensors(self):
        if self.tensors_fail:
            raise RuntimeError("no tensors")
        return {"w": torch.ones(2)}

    def single_step(self):
        if self.fail:
            raise self.fail
        return self.form


META = {"method": "x", "input_shape": (4,)}


def test_a_network_with_a_single_step_form_is_saved_and_exported(tmp_path):
    """Fails if network.pt misses its format, metadata, tensors or runnable Sequential, or the NIR
    note drops the evaluable's caveats."""
    import nir

    files, notes = save_network(_Ev(SingleStep(_seq(), ["flatten", "fc1", "lif1", "fc2"], ["reset differs"])),
                                META, tmp_path)
    assert files == [tmp_path / "network.pt", tmp_path / "network.nir"]
    assert notes == {"nir_export": "exported (reset differs)"}
    saved = torch.load(tmp_path / "network.pt", weights_only=False)
    assert saved["meta"]["format"] == FORMAT and saved["meta"]["method"] == "x"
    assert saved["meta"]["nir_notes"] == ["reset differs"] and saved["meta"]["nir_unsupported"] is None
    assert torch.equal(saved["state_dict"]["w"], torch.ones(2)) and isinstance(saved["sequential"], nn.Sequential)
    assert "fc1" in nir.read(str(tmp_path / "network.nir")).nodes
    _, plain = save_network(_Ev(SingleStep(_seq(), ["flatten", "fc1", "lif1", "fc2"])), META, tmp_path / ".")
    assert plain == {"nir_export": "exported"}  # no caveats: nothing in brackets


@pytest.mark.parametrize("fail,note", [
    (NirUnsupported("m: max pooling"), "not exported: m: max pooling"),
    (ValueError("bug"), "not exported: describing the network failed (ValueError: bug)"),
])
def test_a_network_without_a_single_step_form_is_still_saved_with_the_reason(tmp_path, fail, note):
    """Fails if a method's failure to describe itself costs network.pt or raises into the run."""
    files, notes = save_network(_Ev(fail=fail), META, tmp_path)
    assert files == [tmp_path / "network.pt"] and notes == {"nir_export": note}
    assert torch.load(tmp_path / "network.pt", weights_only=False)["meta"]["nir_unsupported"] == note


def test_a_failed_write_leaves_no_half_file_and_becomes_a_note(tmp_path):
    """Fails if a half-written network.pt or network.nir is left behind or the failure raises."""
    files, notes = save_network(_Ev(tensors_fail=True), META, tmp_path)
    assert files == [] and notes["network_pt"] == "not written: RuntimeError: no tensors"
    assert not (tmp_path / "network.pt").exists()
    clash = SingleStep(_seq(), ["input", "fc1", "lif1", "fc2"])  # an op named like NIR's own input node
    files, notes = save_network(_Ev(clash), META, tmp_path)
    assert files == [tmp_path / "network.pt"] and not (tmp_path / "network.nir").exists()
    assert notes["nir_export"].startswith("not exported: SpikingJelly's NIR export failed (NirUnsupported")
