"""The network a run evaluated is kept (``network.pt``) and exported to NIR (``network.nir``) where NIR
can express it; the export is proven by running it elsewhere.

* ``surrogate`` (LIF, hard reset): the NIR graph is loaded into snnTorch (a simulator nobody here
  wrote) and run on the same test images: the same predictions and, layer by layer, the same spike
  counts as the harness's evaluation.
* ``rate`` (IF, reset by subtraction, membranes starting at 0.5): snnTorch cannot read NIR's IF (its
  importer asserts r = 1 and builds a leaky neuron); the graph is read with ``nir`` and simulated by a
  reference written here from the IF formula: with the harness's reset and start it reproduces the
  run's accuracy and spike counts exactly; with NIR's own (reset to 0, start at rest) the agreement
  is measured.
* ``ttfs`` has no NIR neuron: the run keeps network.pt and says why there is no network.nir.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from harness.runner import run


def _artifacts(res, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    names = {a.path for a in client.list_artifacts(res.tracking["run_id"])}
    out = tmp_path / "artifacts"
    out.mkdir(exist_ok=True)
    return names, lambda name: client.download_artifacts(res.tracking["run_id"], name, str(out))


def _test_images(n):
    from harness.datasets import load_dataset

    ds = load_dataset("digits")
    return torch.from_numpy(ds.x["test"][:n]), torch.from_numpy(ds.y["test"][:n])


def _neuron_spikes(res) -> list[float]:
    """Spikes per test image of each neuron layer, in forward order, as the run metered them."""
    return [row["spikes"] for row in res.layers if "spikes" in row and row.get("neurons")]


@pytest.mark.slow
def test_a_surrogate_network_runs_in_snntorch_with_the_same_predictions_and_spikes(quick, tmp_path):
    import nir
    import snntorch
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    n, T = 100, 4
    res = run(quick(method="surrogate", model="dnn5", track=True, baseline=False, eval_limit=n,
                    sets=("epochs=2", f"timesteps={T}")))
    names, fetch = _artifacts(res, tmp_path)
    assert {"network.pt", "network.nir"} <= names
    assert res.provenance["nir_export"].startswith("exported")

    net = import_from_nir(nir.read(fetch("network.nir")))
    spikes: dict[str, float] = {}
    for name, m in net.named_modules():
        if isinstance(m, snntorch.Leaky):
            m.register_forward_hook(lambda _m, _i, out, name=name: spikes.__setitem__(
                name, spikes.get(name, 0.0) + float((out[0] if isinstance(out, tuple) else out).sum())))
    x, y = _test_images(n)
    preds = []
    with torch.no_grad():
        for i in range(n):  # snnTorch's NIR Flatten flattens from dim 0: one unbatched image at a time
            snntorch.utils.reset(net)
            total = sum(net(x[i])[0] for _ in range(T))  # the mean readout: the output current over T steps
            preds.append(int(total.argmax()))
    assert int((torch.tensor(preds) == y).sum()) == round(res.metrics["test/accuracy"] * n)
    theirs = [v / n for v in spikes.values()]
    assert len(theirs) == len(_neuron_spikes(res)) == 5
    assert theirs == pytest.approx(_neuron_spikes(res), rel=1e-6)

    # network.pt: the same network as a single-step SpikingJelly Sequential, and its tensors
    saved = torch.load(fetch("network.pt"), weights_only=False)
    assert saved["meta"]["method"] == "surrogate" and saved["meta"]["params"]["timesteps"] == T
    from spikingjelly.activation_based import functional

    seq = saved["sequential"]
    with torch.no_grad():
        functional.reset_net(seq)
        seq_preds = sum(seq(x) for _ in range(T)).argmax(-1)
    assert seq_preds.tolist() == preds
    assert any(k.endswith("fc1.weight") for k in saved["state_dict"])


def _if_reference(graph, x: torch.Tensor, T: int, *, soft: bool, v0: float):
    """IF neurons as the formula says, on the NIR graph's own layers (read with ``nir``):
    v ← v + I; s = [v ≥ θ]; v ← v − θ·s (soft) or v·(1 − s) + v_reset·s (NIR's reset). The input
    is a constant current; the output current is summed over the steps. Returns (predictions,
    spikes per image of each IF layer)."""
    import nir

    order = [graph.nodes[k] for k in _topological(graph)]
    v: list[torch.Tensor | None] = [None] * len(order)
    counts = [0.0] * len(order)
    total = 0
    for _ in range(T):
        h = x
        for i, node in enumerate(order):
            if isinstance(node, nir.Affine):
                h = h @ torch.as_tensor(node.weight).T + torch.as_tensor(node.bias)
            elif isinstance(node, nir.Flatten):
                h = h.reshape(h.shape[0], -1)
            elif isinstance(node, nir.IF):
                theta = torch.as_tensor(node.v_threshold)
                if v[i] is None:
                    v[i] = torch.full_like(h, v0) * theta
                vi = v[i] + h
                s = (vi >= theta).to(h.dtype)
                v[i] = vi - theta * s if soft else vi * (1 - s) + torch.as_tensor(node.v_reset) * s
                counts[i] += float(s.sum())
                h = s
        total = total + h
    per_layer = [c / len(x) for c, node in zip(counts, order) if isinstance(node, nir.IF)]
    return total.argmax(-1), per_layer


def _topological(graph) -> list[str]:
    nxt = {}
    for a, b in graph.edges:
        nxt.setdefault(a, []).append(b)
    start = next(k for k, n in graph.nodes.items() if type(n).__name__ == "Input")
    order, k = [], start
    while k in nxt:
        (k,) = nxt[k]
        order.append(k)
    return [k for k in order if type(graph.nodes[k]).__name__ != "Output"]


@pytest.mark.slow
def test_a_rate_network_in_nir_reproduces_the_run_under_the_harness_reset_and_says_what_nir_changes(quick, tmp_path):
    import nir

    n, T = 150, 16
    res = run(quick(method="rate", model="dnn5", track=True, eval_limit=n, sets=(f"timesteps={T}",)))
    names, fetch = _artifacts(res, tmp_path)
    assert "network.nir" in names
    note = res.provenance["nir_export"]
    assert "NIR's IF/LIF reset to v_reset = 0" in note and "v_init = 0.5" in note
    graph = nir.read(fetch("network.nir"))
    kinds = [type(graph.nodes[k]).__name__ for k in _topological(graph)]
    assert kinds == ["Flatten"] + ["Affine", "IF"] * 5 + ["Affine"]
    ifs = [graph.nodes[k] for k in _topological(graph) if kinds[_topological(graph).index(k)] == "IF"]
    assert all(np.all(np.asarray(node.v_reset) == 0) and np.all(np.asarray(node.v_threshold) == 1) for node in ifs)

    x, y = _test_images(n)
    with torch.no_grad():
        preds, spikes = _if_reference(graph, x, T, soft=True, v0=0.5)  # the harness's neuron
        nir_preds, nir_spikes = _if_reference(graph, x, T, soft=False, v0=0.0)  # NIR's own IF
    assert int((preds == y).sum()) == round(res.metrics["test/accuracy"] * n)
    assert spikes == pytest.approx(_neuron_spikes(res), rel=1e-5)
    agreement = float((nir_preds == preds).float().mean())
    print(f"\nrate dnn5 T={T}: NIR semantics (reset to 0, start at rest) agree with the harness on "
          f"{agreement:.3f} of predictions; spikes per image per layer {np.round(nir_spikes, 2).tolist()} vs "
          f"{np.round(spikes, 2).tolist()}")
    assert agreement > 0.5  # a different neuron, not a different network: a broken export agrees ~0.1


@pytest.mark.slow
def test_networks_nir_cannot_express_are_kept_and_the_run_says_why(quick, tmp_path):
    res = run(quick(method="ttfs", model="dnn5", track=True, eval_limit=50, sets=("t_max_sweep=", "fig2=false")))
    names, fetch = _artifacts(res, tmp_path)
    assert "network.pt" in names and "network.nir" not in names
    assert res.provenance["nir_export"] == ("not exported: ttfs: its two-stage neuron (silent integration, then a "
                                            "ramp to a single spike) has no NIR primitive")
    state = torch.load(fetch("network.pt"), weights_only=False)["state_dict"]
    assert any(k.endswith("weight") for k in state) and any(k.startswith("u_th.") for k in state)

    from harness.errors import NirUnsupported
    from harness.evaluation import AnnEvaluable

    with pytest.raises(NirUnsupported, match="an ANN has no spiking neurons to export"):
        AnnEvaluable.__new__(AnnEvaluable).single_step()


@pytest.mark.slow
def test_nir_nodes_are_named_after_the_ops_whose_metrics_the_run_logged(quick, tmp_path):
    """network.nir's nodes carry the harness's op names (the exporter's own were _0 … _11), so each
    node can be matched with its ``layer/<op>/…`` metrics."""
    import nir

    res = run(quick(method="rate", model="dnn5", track=True, eval_limit=30, sets=("timesteps=4",)))
    _, fetch = _artifacts(res, tmp_path)
    nodes = set(nir.read(fetch("network.nir")).nodes)
    layers = {k.split("/")[1] for k in res.metrics if k.startswith("layer/") and not k.endswith("/lambda")}
    assert layers == {f"fc{i}" for i in range(1, 6)} | {"fc_out"} | {f"relu_fc{i}" for i in range(1, 6)}
    assert nodes == layers | {"flatten", "input", "output"}


@pytest.mark.slow
def test_a_failure_while_keeping_the_network_or_an_artifact_is_a_note_and_the_run_finishes(quick, tmp_path,
                                                                                         monkeypatch):
    """Writing network.pt, exporting network.nir or writing a method's artifact can fail (a full
    disk, a bug in one writer): the run still finishes with its metrics, the file is left out and
    the run says why."""
    import harness.export
    import harness.firing
    from mlflow.tracking import MlflowClient

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    save = torch.save

    def save_but_network_pt(obj, f, *a, **k):  # the ANN cache is written; network.pt finds the disk full
        if str(f).endswith("network.pt"):
            disk_full()
        return save(obj, f, *a, **k)

    def broken_fit(name, rates):
        raise RuntimeError("the distribution fit broke")

    monkeypatch.setattr(harness.export.torch, "save", save_but_network_pt)
    monkeypatch.setattr(harness.firing, "summarize", broken_fit)
    monkeypatch.setattr("spikingjelly.activation_based.nir_exchange.export_to_nir", disk_full)
    res = run(quick(method="rate", model="dnn5", track=True, eval_limit=30, sets=("timesteps=4",)))
    names, _ = _artifacts(res, tmp_path)
    assert MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(res.tracking["run_id"]).info.status == "FINISHED"
    assert res.metrics["test/accuracy"] > 0.2 and "layer/fc1/synops" in res.metrics
    assert {"network.pt", "network.nir", "firing_rates_summary.csv"}.isdisjoint(names)
    assert {"firing_rates.npz", "layers.csv", "result.json"} <= names  # the other files are kept
    prov = res.provenance
    assert prov["network_pt"] == "not written: OSError: [Errno 28] No space left on device"
    assert prov["nir_export"].startswith("not exported: SpikingJelly's NIR export failed (OSError")
    assert prov["artifact_notes"] == ("not written: firing_rates_summary.csv: RuntimeError: the distribution fit "
                                      "broke")


@pytest.mark.slow
def test_a_plugin_methods_network_is_saved_and_exported_through_the_same_path(quick, tmp_path, monkeypatch):
    """A method from outside the package returns its own evaluable (here a one-step IF network made
    of the trained ANN, SpikingJelly's IFNode for every ReLU, through the public GraphSNN): the
    harness saves and exports it as it does the built-ins', asking it, not guessing."""
    import copy

    import nir
    from harness.api import Method, Outputs, Preparation
    from harness.evaluation import GraphSNN
    from harness.graph import Kind, build, register_module_kind, set_module, symbolic_trace
    from harness.methods import METHODS
    from spikingjelly.activation_based import neuron

    class StepNet(Method):
        name = "step-net"
        smoke_sets = {}

        def prepare(self, ctx, ann, params):
            register_module_kind(neuron.IFNode, Kind.NEURON)
            gm = symbolic_trace(copy.deepcopy(ann), "ann")
            g = build(gm, ctx.dataset.input_shape)
            for op in g.neurons:
                set_module(gm, op.node, op.name, neuron.IFNode(v_threshold=0.5, v_reset=0.0, step_mode="s"))
            gm.recompile()
            ev = GraphSNN(build(gm, ctx.dataset.input_shape), 1, lambda out, T, B: Outputs(logits=out))
            ev.label = "step-net"
            return Preparation(ev)

    monkeypatch.setitem(METHODS._entries, "step-net", type(next(iter(METHODS._entries.values())))(
        "step-net", "a plug-in", target=StepNet, origin="tests"))
    res = run(quick(method="step-net", model="dnn5", track=True, eval_limit=30))
    names, fetch = _artifacts(res, tmp_path)
    assert {"network.pt", "network.nir"} <= names and res.provenance["nir_export"].startswith("exported")
    saved = torch.load(fetch("network.pt"), weights_only=False)
    assert saved["meta"]["method"] == "step-net" and "fc1.weight" in saved["state_dict"]
    graph = nir.read(fetch("network.nir"))
    assert isinstance(graph.nodes["relu_fc1"], nir.IF) and isinstance(graph.nodes["fc1"], nir.Affine)
