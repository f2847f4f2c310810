"""The default path is the tested path: every method and chain × every built-in model and networks
written as users write them (``tests/user_nets.py``), run the way users run them — the ``harness``
command, tracking ON (an MLflow store in a temporary folder), ``--output-json`` — on ``digits``
with one epoch of training.

Each cell ends either with exit 0, a FINISHED MLflow run holding the run's metrics, ``network.pt``
and the result record the JSON also holds, or with exit 2 and the method's one-line refusal naming
the node, before any MLflow run opens. Never a traceback: the expected refusals below are written
by hand from what each method cannot take (ttfs: average pooling, adds; sharpen: average pooling).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NETS = str(Path(__file__).parent / "user_nets.py")
BUILT_IN = ("dnn5", "cnn7", "ttfs-cnn", "stpu-dnn", "stpu-cnn", "cnn-restricted", "cnn-unrestricted", "vgg-small",
            "resnet-small")
USER = tuple(f"{NETS}:{f}" for f in ("readme_net", "vgg_nested", "resnet_stem", "two_branches"))
FAST = {  # the least work that still runs every stage of each method
    "ann": (),
    "rate": ("timesteps=4",),
    "layer-scaling": ("timesteps=4", "eval_samples=30"),
    "qcfs": ("epochs=1", "timesteps=4", "calibration_samples=100"),
    "ttfs": ("t_max=8", "t_max_sweep=4,8", "fig2_t_max=8", "fig2_fractions=0.5", "fig2_samples=20"),
    "surrogate": ("epochs=1", "timesteps=2"),
    "sharpen": ("epochs=1",),
    "sharpen:batchnorm": ("epochs=1", "batchnorm=true"),  # a BatchNorm before each spiking layer, folded
    # a layer at a time with a pause after each (6 layers at most here: ends by epoch 6), then fine-tuned
    "sharpen:staged": ("epochs=8", "start_epoch=0", "duration=1", "intermission=1", "finetune_epochs=1"),
    "prune": ("epochs=1",),
    "prune+rate": ("prune.epochs=1", "timesteps=4"),
    "prune+ttfs": ("prune.epochs=1", "t_max=8", "t_max_sweep=", "fig2=false"),
    # rate with every option for few time steps (label after the colon)
    "rate:few-steps": ("timesteps=4", "normalization=channel", "maxpool=gate", "calibration=light",
                       "calibration_samples=100"),
}
# (method, model) -> the node the method names when it refuses the network
REFUSED = {}
for _m in ("ttfs", "prune+ttfs"):
    REFUSED.update({(_m, "cnn7"): "pool1", (_m, "resnet-small"): "layer1.0.add", (_m, USER[0]): "add",
                    (_m, USER[2]): "blocks.0.add"})
for _m in ("sharpen", "sharpen:batchnorm", "sharpen:staged"):
    REFUSED.update({(_m, "cnn7"): "pool1", (_m, "resnet-small"): "pool", (_m, USER[0]): "pool",
                    (_m, USER[2]): "adaptive_avg_pool2d"})
CELLS = [(m, model) for m in FAST for model in BUILT_IN + USER]


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """One MLflow store and one ANN cache for the whole matrix (each model's ANN trains once)."""
    root = tmp_path_factory.mktemp("default-path")
    (root / "run.yaml").write_text("dataset: digits\nepochs: 1\neval_limit: 60\n")
    return root


def _runs(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("snn-harness")
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=10_000)


@pytest.mark.parametrize("method,model", CELLS, ids=[f"{m}-{Path(x).name}" for m, x in CELLS])
def test_every_method_runs_tracked_on_every_network_or_refuses_it_in_one_line(method, model, place, monkeypatch,
                                                                               capsys, tmp_path):
    from harness.cli import main
    from mlflow.tracking import MlflowClient

    label = method
    uri = f"sqlite:///{place / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    before = len(_runs(uri))
    out = tmp_path / "record.json"
    method = method.split(":")[0]
    argv = ["run", "--config", str(place / "run.yaml"), "--method", method, "--model", model,
            "--cache-dir", str(place / "cache"), "--no-progress", "--output-json", str(out)]
    for s in FAST[label]:
        argv += ["--set", s]
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if (label, model) in REFUSED:
        node = REFUSED[(label, model)]
        refusal = [ln for ln in err.splitlines() if ln.startswith("harness: error:")]
        assert rc == 2 and len(refusal) == 1, err[-2000:]
        assert refusal[0].startswith(f"harness: error: node `{node}` (") and \
            f"cannot be converted by {method.split('+')[-1]}" in refusal[0], refusal[0]
        assert len(_runs(uri)) == before and not out.exists()  # refused before any run opened
        return
    assert rc == 0, err[-3000:]
    record = json.loads(out.read_text())
    client = MlflowClient(uri)
    run = client.get_run(record["tracking"]["run_id"])
    assert run.info.status == "FINISHED"
    for key in ("test/accuracy", "spikes_per_neuron", "synops", "energy_nJ/cmos45-fp32", "ann/test/accuracy"):
        assert run.data.metrics[key] == pytest.approx(record["metrics"][key]), key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"network.pt", "result.json", "layers.csv"} <= artifacts, artifacts
    assert "network_pt" not in record["provenance"] and "artifact_notes" not in record["provenance"]
    assert len(_runs(uri)) == before + 1
