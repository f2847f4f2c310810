"""The rate simulator on a converted cnn7 and a batch of mnist-5k test images, side by side with
(a) the plain SpikingJelly single-step loop a user would write from its tutorial (target: the
harness ≥ 2× faster) and (b) T × the ANN's own forward pass, the floor of dense simulation
(target: ≤ 1.3×). Peak memory at T = 256 on a 1 000-image batch is measured in a fresh process
(target: < 2 GiB)."""

import json
import subprocess
import sys

import pytest
import torch
from harness.datasets import load_dataset
from harness.methods.rate import POOLS, RateParams, calibrate_scales, convert
from harness.models import build_model
from harness.netparse import parse_blocks
from harness.simulate import Simulator
from torch import nn

T = 64
RATIOS = [
    ("(a) SpikingJelly single-step loop / harness simulator", "sj-loop", "harness-sim", ">= 2x"),
    ("(b) harness simulator / T x ANN forward", "harness-sim", "ann-x-T", "<= 1.3x"),
]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("mnist-5k")
    ann = build_model("cnn7", ds.input_shape, ds.num_classes).eval()
    x_train = torch.from_numpy(ds.x["train"][:500])
    params = RateParams(timesteps=T)
    blocks = parse_blocks(ann, "rate", POOLS)
    lams = calibrate_scales(blocks, x_train, "percentile", 99.99)
    layers = convert(blocks, lams, [1.0] * len(lams), params)
    return ann, layers, torch.from_numpy(ds.x["test"][:256])


def tutorial_loop(layers, x, steps):
    """What SpikingJelly's conversion tutorial does: a single-step network called T times."""
    from spikingjelly.activation_based import functional, neuron

    mods = []
    for sl in layers:
        mods += [m for _, m in sl.pre] + [sl.layer]
        if sl.neuron is not None:
            mods.append(neuron.IFNode(v_threshold=1.0, v_reset=None))
    net = nn.Sequential(*mods)
    functional.reset_net(net)
    out = 0
    with torch.no_grad():
        for _ in range(steps):
            out = out + net(x)
    return out


def test_simulator_side_by_side(side_by_side, setup):
    ann, layers, x = setup
    sim = Simulator(layers, time_chunk=T, batch_chunk=len(x))

    def ann_t():
        with torch.no_grad():
            for _ in range(T):
                ann(x)

    side_by_side({"ann-x-T": ann_t, "harness-sim": lambda: sim.run(x, T),
                  "sj-loop": lambda: tutorial_loop(layers, x, T)}, rounds=5)


PEAK = r"""
import json, resource, torch
from harness.datasets import load_dataset
from harness.methods.rate import POOLS, RateParams, calibrate_scales, convert
from harness.models import build_model
from harness.netparse import parse_blocks
from harness.simulate import Simulator
from harness.meters import Meters
ds = load_dataset("mnist-5k")
ann = build_model("cnn7", ds.input_shape, ds.num_classes).eval()
blocks = parse_blocks(ann, "rate", POOLS)
lams = calibrate_scales(blocks, torch.from_numpy(ds.x["train"][:500]), "percentile", 99.99)
layers = convert(blocks, lams, [1.0] * len(lams), RateParams(timesteps=256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
Simulator(layers, time_chunk=64, batch_chunk=1000).run(torch.from_numpy(ds.x["test"][:1000]), 256,
                                                       Meters(timesteps=256, keep_per_neuron=True))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mib": after / 1024, "baseline_rss_mib": before / 1024}))
"""


def test_peak_memory_T256_batch1000(benchmark):
    def measure():
        out = subprocess.run([sys.executable, "-c", PEAK], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    res = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    print(f"\npeak RSS at T=256, 1000 images: {res['peak_rss_mib']:.0f} MiB "
          f"(process before simulating: {res['baseline_rss_mib']:.0f} MiB; target < 2048 MiB)")
