"""One evaluation over several processes (:mod:`harness.distributed`): the shards, the sum of the
meters, and whole runs of 2 CPU processes — started by ``--nproc`` and by ``torchrun``, tracked,
on an uneven split — against the single-process run of the same command; a rank killed mid-run and
Ctrl-C on the launcher."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from harness.config import ConfigError
from harness.meters import Meters, merge_meters
from torch import nn

NETS = str(Path(__file__).parent / "user_nets.py")
COUNTS = ("samples", "synops", "spikes", "macs", "macs_effective", "neuron_updates", "synops_if_spiking")


# ---------------------------------------------------------------------------------------------
# the pieces


def test_shards_are_the_single_loops_batches_dealt_out_contiguously():
    from harness.distributed import shard_bounds

    for n in range(0, 41):
        for batch in (1, 3, 7, 64):
            for size in (1, 2, 3, 5):
                bounds = [shard_bounds(n, batch, r, size) for r in range(size)]
                samples = [i for start, stop in bounds for i in range(start, stop)]
                assert samples == list(range(n)), (n, batch, size, bounds)  # each sample once, in order
                # every cut is a batch boundary of the single loop (or the end of the split)
                assert all(start % batch == 0 or start == n for start, _ in bounds)
                per_rank = [math.ceil((stop - start) / batch) for start, stop in bounds]
                assert sum(per_rank) == math.ceil(n / batch)
                assert max(per_rank) - min(per_rank) <= 1, (n, batch, size, per_rank)


def test_a_ranks_end_is_described_by_its_signal_or_exit_code():
    from harness.distributed import describe_exit

    assert describe_exit(1, 2, -signal.SIGKILL) == "rank 1 of 2 was killed by SIGKILL"
    assert describe_exit(3, 4, 128 + signal.SIGTERM) == "rank 3 of 4 was stopped by SIGTERM"  # its own handler's exit
    assert describe_exit(1, 2, 128 + signal.SIGINT) == "rank 1 of 2 was stopped by SIGINT"
    assert describe_exit(1, 2, 3) == "rank 1 of 2 exited with code 3 (its error is printed above)"
    assert describe_exit(1, 2, 128 + signal.SIGKILL).startswith("rank 1 of 2 exited with code 137")


def _record(meters: Meters, layer: nn.Linear, spikes: torch.Tensor) -> None:
    meters.record_synapse("fc", layer, spikes, spikes=True)
    meters.record_neurons("lif", spikes, shape=(spikes.shape[-1],))
    meters.record_predictions(spikes[:, :3].sum(1).long() % 2, torch.zeros(spikes.shape[0], dtype=torch.long))
    meters.count("ties", float(spikes[:, 0].sum()))


def test_merged_meters_of_two_slices_are_the_meters_of_the_whole():
    torch.manual_seed(0)
    layer = nn.Linear(12, 5)
    with torch.no_grad():
        layer.weight[0, :4] = 0.0  # zero weights: fan-outs below the dense count
    batches = [(torch.rand(7, 12) < 0.3).float() for _ in range(4)]
    whole = Meters(timesteps=1, keep_per_neuron=True)
    first, second = Meters(timesteps=1, keep_per_neuron=True), Meters(timesteps=1, keep_per_neuron=True)
    for i, b in enumerate(batches):
        _record(whole, layer, b)
        _record(first if i < 3 else second, layer, b)  # uneven: 3 batches and 1
    merged = merge_meters([first.portable(), second.portable()])
    assert merged.summary() == whole.summary()
    assert merged.counters == whole.counters == {"ties": float(sum(b[:, 0].sum() for b in batches))}
    assert torch.equal(merged.neurons["lif"].per_neuron, whole.neurons["lif"].per_neuron)
    assert merged.samples == 28 and merged.synapses["fc"].input_spikes == float(sum(b.sum() for b in batches))
    # the parts are left as they were (the merge copies what it starts from)
    assert first.samples == 21 and first.synapses["fc"].rows == 21.0
    # a slice with no batch (more ranks than batches) adds nothing
    empty = Meters(timesteps=1, keep_per_neuron=True)
    assert merge_meters([whole.portable(), empty]).summary() == whole.summary()


@pytest.mark.parametrize("env, needle", [
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 is outside"),
    ({"WORLD_SIZE": "2", "RANK": "x"}, "RANK='x' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "a launcher already started"),
])
def test_a_bad_process_environment_is_refused(env, needle, monkeypatch):
    from harness.distributed import world_for

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=needle):
        world_for(2, 60)


def test_nproc_with_python_objects_or_thread_trials_is_refused_before_any_work(quick, monkeypatch):
    from harness import ann_cache
    from harness.runner import run
    from harness.studies.spec import StudyConfig

    monkeypatch.setattr(ann_cache, "train_ann", lambda ctx: pytest.fail("trained before refusing"))
    with pytest.raises(ConfigError, match="must be given by name"):
        run(quick(method="rate", nproc=2), model=nn.Sequential(nn.Flatten(), nn.Linear(64, 10)))
    with pytest.raises(ConfigError, match="--nproc 2 with --n-jobs 2"):
        StudyConfig(quick(method="rate", nproc=2), n_jobs=2).validate([])
    with pytest.raises(ConfigError, match="nproc"):
        quick(nproc=0)


def test_an_evaluables_batch_is_capped_by_the_runs_evaluation_batch():
    from types import SimpleNamespace

    from harness.api import Evaluable, Outputs
    from harness.evaluation import evaluate_in
    from harness.graph import trace
    from harness.metrics import SCHEMA

    asked = []

    class Fixed(Evaluable):
        def __init__(self, batch):
            self.graph, self.batch_size = trace(nn.Sequential(nn.Linear(2, 2)), (2,)), batch

        def run_batch(self, x, meters):
            return Outputs(predictions=torch.zeros(len(x), dtype=torch.long))

    def loader(split, batch_size, limit):
        asked.append(batch_size)
        raise StopIteration  # the batch size is all this test reads

    ctx = SimpleNamespace(dataset=SimpleNamespace(input_shape=(2,)), loader=loader, device="cpu", progress=False,
                          schema=SCHEMA, world=None, main=True, config=SimpleNamespace(eval_batch_size=64))
    for batch in (500, 64, 16):
        with pytest.raises(StopIteration):
            evaluate_in(ctx, Fixed(batch))
    assert asked == [64, 64, 16]


# ---------------------------------------------------------------------------------------------
# whole runs


def _env() -> dict[str, str]:
    # one thread per process in both runs: the arithmetic of a batch does not depend on the run
    return dict(os.environ, OMP_NUM_THREADS="1")


def _harness(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [*(launcher or [sys.executable, "-m"]), "harness.cli", "run", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_same(single: dict, sharded: dict) -> None:
    m1, m2 = single["metrics"], sharded["metrics"]
    assert set(m1) == set(m2)
    for key in m1:
        if key in COUNTS or key.endswith(("/synops", "/macs")):
            assert m1[key] == m2[key], key  # counts: exactly
        else:
            assert m2[key] == pytest.approx(m1[key], rel=1e-9, abs=1e-12), key
    assert single["layers"] == sharded["layers"]
    assert set(single["step_metrics"]) == set(sharded["step_metrics"])
    for key, curve in single["step_metrics"].items():
        if key.startswith("test/"):
            assert sharded["step_metrics"][key] == pytest.approx(curve, rel=1e-9), key


def _mlflow_runs():
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])  # this test's store, whatever set before
    exp = client.get_experiment_by_name("snn-harness")
    return client.search_runs([exp.experiment_id]) if exp else []


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nproc", "torchrun"])
def test_two_processes_give_the_single_process_metrics_tracked(how, tmp_path):
    """rate on a nested user network through ``--nproc 2`` (6 batches of 64: 192 and 167 images);
    ttfs through ``torchrun`` (one batch of 500: rank 0 gets none, rank 1 all 359)."""
    if how == "nproc":
        args = ["--method", "rate", "--model", f"{NETS}:vgg_nested", "--set", "timesteps=8", "--eval-batch-size", "64"]
        extra, launcher = ["--nproc", "2"], None
    else:
        args = ["--method", "ttfs", "--set", "t_max=8", "--set", "t_max_sweep=4,8", "--set", "fig2=false"]
        extra, launcher = [], TORCHRUN
    common = ["--dataset", "digits", "--epochs", "2", "--no-progress", *args]
    _harness([*common, "-o", "single.json"])
    proc = _harness([*common, *extra, "-o", "sharded.json"], launcher)
    single = json.loads((tmp_path / "single.json").read_text())
    sharded = json.loads((tmp_path / "sharded.json").read_text())
    _assert_same(single, sharded)
    assert sharded["metrics"]["samples"] == 359.0
    # rank 0 alone tracked: one MLflow run per command, both finished, holding the record's numbers
    runs = _mlflow_runs()
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
    mine = next(r for r in runs if r.info.run_id == sharded["tracking"]["run_id"])
    assert mine.data.metrics["test/accuracy"] == pytest.approx(sharded["metrics"]["test/accuracy"], rel=1e-12)
    assert mine.data.tags["processes"] == "2" and sharded["provenance"]["processes"] == 2
    assert single["provenance"]["processes"] == 1
    assert "error" not in proc.stderr
    # both ranks simulate with --eval-batch-size 64; ttfs's one batch of 500 leaves a rank idle, said so
    assert ("1 of them have nothing to simulate" in proc.stderr) == (how == "torchrun"), proc.stderr[-2000:]


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            out.append(int(status.parent.name))
    return out


def _start_long_run(tmp_path) -> tuple[subprocess.Popen, int]:
    """A tracked ``--nproc 2`` rate run with a long evaluation, and the pid of its rank 1."""
    _harness(["--method", "ann", "--dataset", "digits", "--epochs", "2", "--no-progress", "--no-track"])  # the ANN, cached
    cmd = [sys.executable, "-m", "harness.cli", "run", "--method", "rate", "--dataset", "digits", "--epochs", "2",
           "--no-progress", "--set", "timesteps=2048", "--eval-batch-size", "16", "--nproc", "2",
           "--dist-timeout", "120", "-o", "r.json"]
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    for _ in range(600):
        kids = _children(launcher.pid)
        if kids or launcher.poll() is not None:
            break
        time.sleep(0.1)
    assert kids, launcher.communicate()[1][-3000:]
    time.sleep(3)  # rank 1 imports, loads the data and joins; then it simulates its slice
    return launcher, kids[0]


@pytest.mark.slow
def test_a_rank_killed_mid_run_fails_the_run_naming_it_and_leaves_no_record(tmp_path):
    launcher, rank1 = _start_long_run(tmp_path)
    os.kill(rank1, signal.SIGKILL)
    out, err = launcher.communicate(timeout=120)  # no hang: within the collective timeout
    assert launcher.returncode == 4, err[-3000:]
    assert "rank 1 of 2 was killed by SIGKILL" in err and "the run failed" in err
    assert not (tmp_path / "r.json").exists()
    runs = _mlflow_runs()
    assert [r.info.status for r in runs] == ["FAILED"]  # not left RUNNING


@pytest.mark.slow
def test_ctrl_c_on_the_launcher_stops_every_rank(tmp_path):
    launcher, rank1 = _start_long_run(tmp_path)
    launcher.send_signal(signal.SIGINT)
    out, err = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, err[-3000:]
    assert "harness: interrupted by SIGINT" in err
    assert not Path(f"/proc/{rank1}").exists()  # stopped and reaped by the launcher, not orphaned
    assert [r.info.status for r in _mlflow_runs()] == ["KILLED"]
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_a_studys_trials_take_nproc_processes_each():
    cmd = [sys.executable, "-m", "harness.cli", "study", "--method", "rate", "--dataset", "digits", "--epochs", "2",
           "--trials", "2", "--grid", "timesteps=4,8", "--nproc", "2", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = [r for r in _mlflow_runs() if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    assert all(r.info.status == "FINISHED" and r.data.tags["processes"] == "2" for r in trials)
    assert all(r.data.metrics["samples"] == 359.0 for r in trials)
