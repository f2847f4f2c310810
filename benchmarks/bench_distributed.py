"""One evaluation over 1 and 2 processes (``harness run --nproc``) on a CIFAR-sized network: VGG-16
(random weights given with ``--weights``: no training) on 128 images of 3×32×32 in batches of 16,
``rate`` at T = 32 and 128, whole processes timed side by side. Each process computes the
calibration itself, so the whole-run ratio stays below the evaluation's (``evaluation_s`` of the
records, noted); the records of both runs must agree."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
IMAGES = 128
RATIOS = [(f"VGG-16 3x32x32, rate T={T}: whole-run time, 1 process / 2 processes (> 1: 2 are faster)", f"vgg16/T{T}/nproc1",
           f"vgg16/T{T}/nproc2", "reported") for T in (32, 128)]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    sys.path.insert(0, str(HERE))
    from cifar_shaped import vgg16

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg16") / "vgg16.pt"
    torch.save(vgg16((3, 32, 32), 10).state_dict(), path)
    return path


@pytest.mark.parametrize("T", [32, 128])
def test_sharded_evaluation_throughput(T, weights, side_by_side, note, tmp_path):
    def run(nproc: int):
        out = tmp_path / f"T{T}-n{nproc}.json"
        cmd = [sys.executable, "-m", "harness.cli", "run", "--method", "rate", "--model",
               f"{HERE / 'cifar_shaped.py'}:vgg16", "--dataset", f"{HERE / 'cifar_shaped.py'}:images",
               "--weights", str(weights), "--no-baseline", "--no-track", "--no-progress", "--set", f"timesteps={T}",
               "--eval-batch-size", "16", "--nproc", str(nproc), "-o", str(out)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, timeout=1800)
        return time.perf_counter() - t0, json.loads(out.read_text())

    results = {}

    def timed(nproc):
        def f():
            results[nproc] = run(nproc)
        return f

    medians = side_by_side({f"vgg16/T{T}/nproc{n}": timed(n) for n in (1, 2)}, rounds=2, warmup=0)
    one, two = results[1][1]["metrics"], results[2][1]["metrics"]
    assert one["synops"] == two["synops"] and one["test/accuracy"] == two["test/accuracy"]
    evals = {n: results[n][1]["provenance"]["evaluation_s"] for n in (1, 2)}
    note(f"VGG-16 3x32x32 rate T={T}, {IMAGES} images: whole run 1 process {IMAGES / medians[f'vgg16/T{T}/nproc1']:.2f} "
         f"images/s, 2 processes {IMAGES / medians[f'vgg16/T{T}/nproc2']:.2f} images/s; evaluation alone (last round) "
         f"{IMAGES / evals[1]:.2f} vs {IMAGES / evals[2]:.2f} images/s ({evals[1] / evals[2]:.2f}x)")
