import json
import subprocess
import sys

import pytest
from harness.cli import main


def _py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_and_ls_import_nothing_heavy():
    proc = _py(
        "import sys\n"
        "from harness.cli import main\n"
        "for kind in ('methods', 'datasets', 'models', 'energy'):\n"
        "    main(['ls', kind])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'mlflow', 'optuna', 'spikingjelly') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert "ttfs-cnn" in proc.stdout and "cmos45-fp32" in proc.stdout and "mnist-5k" in proc.stdout
    # every energy model is listed with its per-op costs and its source
    assert "45 nm CMOS, fp32: MAC 4.6 pJ, AC 0.9 pJ [Horowitz, 'Computing's energy problem', ISSCC 2014" \
        in proc.stdout
    assert "[Davies et al., IEEE Micro 2018" in proc.stdout


@pytest.mark.parametrize("argv,needle", [
    (["run", "--method", "annn"], "unknown method 'annn'. Did you mean 'ann'?"),
    (["run", "--method", "ann", "--dataset", "mnist5k"], "Did you mean 'mnist-5k'"),
    (["run", "--method", "ann", "--model", "cnn8"], "Did you mean 'cnn7'"),
    (["run", "--method", "ann", "--set", "bogus=1"], "unknown parameter of ann 'bogus'"),
    (["run", "--method", "ann", "--seed", "-3"], "seed=-3 is out of range"),
    (["run", "--method", "ann", "--set", "novalue"], "expected key=value"),
])
def test_bad_input_exits_2_before_work(argv, needle, capsys, tmp_path):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_run_ann_end_to_end_with_json_and_mlflow(tmp_path, capsys):
    out = tmp_path / "out" / "r.json"
    code = main(["run", "--method", "ann", "--dataset", "digits", "--epochs", "2", "--no-progress",
                 "--output-json", str(out)])
    assert code == 0
    rec = json.loads(out.read_text())
    assert rec["schema"] == "snn-harness/result/1"
    m = rec["metrics"]
    for key in ("test/accuracy", "ann/test/accuracy", "ann/macs", "ann/energy_nJ/cmos45-fp32",
                "energy_nJ/cmos45-fp32", "connection_sparsity", "activation_sparsity",
                "spikes_per_neuron", "synops", "layer/conv1/macs", "layer/relu1/activation_sparsity"):
        assert key in m, key
    assert 0.0 <= m["test/accuracy"] <= 1.0
    assert m["ann/macs"] > 0 and m["ann/energy_nJ/cmos45-fp32"] > 0
    assert rec["dataset"]["splits"]["test"] == 359
    assert rec["provenance"]["versions"]["torch"].startswith("2.")
    assert [r["layer"] for r in rec["layers"] if r.get("type") == "Conv2d"] == ["conv1", "conv2", "conv3"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(rec["tracking"]["tracking_uri"])
    run = client.get_run(rec["tracking"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["method"] == "ann" and run.data.params["dataset"] == "digits"
    # one param per knob that changes results: no duplicates of method/model/seed, no plumbing
    assert run.data.params["train.epochs"] == "2" and run.data.params["run.eval_limit"] == "0"
    assert not [k for k in run.data.params if k.startswith("run.") and k not in ("run.weights", "run.baseline",
                                                                                  "run.eval_limit")]
    assert run.data.metrics["test/accuracy"] == pytest.approx(m["test/accuracy"])
    assert "layer/conv1/macs" in run.data.metrics
    assert run.data.tags["seed"] == "0" and run.data.tags["device"] == "cpu"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"layers.csv", "result.json"}
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name.startswith("digits")
    history = client.get_metric_history(run.info.run_id, "ann/train/loss")
    assert [h.step for h in history] == [0, 1]
    assert "test/accuracy" in capsys.readouterr().out


def test_ls_params(capsys):
    assert main(["ls", "params", "--method", "ann"]) == 0
    assert "ann parameters" in capsys.readouterr().out
    assert main(["ls", "params", "--method", "rate"]) == 0
    out = capsys.readouterr().out
    assert "timesteps              int                default 64  range [1, 1e+06]" in out
    assert "neuron                 if|lif             default 'if'" in out
    assert main(["ls", "params", "--method", "prune+ttfs"]) == 0
    out = capsys.readouterr().out
    assert "prune parameters (--set prune.key=value):" in out and "prune.final_sparsity" in out
    assert "ttfs parameters (--set key=value):" in out and "\n  t_max " in out


@pytest.mark.slow
def test_redirected_output_carries_the_result_alone_and_no_progress_updates(tmp_path):
    # `harness run --method ttfs > out.txt` wrote 226 KB: Lightning's bar on stdout, tqdm's \r on stderr
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}
    base = [sys.executable, "-m", "harness", "run", "--method", "ann", "--dataset", "digits", "--epochs", "1",
            "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.run(base, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stdout and "\r" not in proc.stderr
    assert proc.stdout.splitlines()[0] == "ann on digits / cnn7 (seed 0)" and len(proc.stdout.splitlines()) <= 8
    proc = subprocess.run(base + ["--output-json", "-", "--no-track"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout)  # stdout is the record, for jq
    assert record["method"] == "ann" and 0 <= record["metrics"]["test/accuracy"] <= 1
    assert not (tmp_path / "-").exists()
