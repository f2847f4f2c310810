"""The rate simulator on trained, converted networks (cnn7 and resnet-small, mnist-5k) and 1 000
test images at T = 64, side by side with

(a) itself without meters — metering must cost at most 20 % (target: metered ≤ 1.2× unmetered);
(b) SpikingJelly 2.x's own converted network (``ann2snn.Converter`` with ``RateCodingRecipe`` on the
    same trained ANN, multistep mode, ``[T, B, ...]`` input) — target: the metered harness ≥ 2.5×
    faster;
(c) sinabs, when it is installed (it is not a dependency): ``from_model`` on the same weights.

Both simulators run 1 000 images in batches of 250. Peak memory at T = 256 on 1 000 images is
measured in a fresh process (target: < 2 GiB).
"""

import json
import subprocess
import sys

import pytest
import torch

from harness.datasets import load_dataset
from harness.graph import trace
from harness.meters import Meters
from harness.methods.rate import RateModel, RateParams, calibrate_scales
from harness.simulate import Simulator

T = 64
BATCH = 250
RATIOS = []
for _m in ("cnn7", "resnet-small"):
    RATIOS += [
        (f"{_m}: (a) metered / unmetered harness simulator", f"{_m}/harness-metered", f"{_m}/harness", "<= 1.2x"),
        (f"{_m}: (b) SpikingJelly multistep converted net / metered harness", f"{_m}/spikingjelly",
         f"{_m}/harness-metered", ">= 2.5x"),
    ]
RATIOS.append(("cnn7: (c) sinabs / metered harness", "cnn7/sinabs", "cnn7/harness-metered", "reported"))


def _data():
    ds = load_dataset("mnist-5k")
    return torch.from_numpy(ds.x["train"][:1000]), torch.from_numpy(ds.x["test"][:1000]), torch.from_numpy(
        ds.y["test"][:1000])


def _spikingjelly(ann, x_cal):
    from spikingjelly.activation_based import ann2snn, functional
    from spikingjelly.activation_based.ann2snn.recipes import RateCodingRecipe

    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_cal, torch.zeros(len(x_cal))),
                                         batch_size=250)
    snn = ann2snn.Converter(RateCodingRecipe(loader, mode="99.99%")).convert(ann)
    functional.set_step_mode(snn, "m")

    def run(x):
        outs = []
        with torch.no_grad():
            for b in range(0, len(x), BATCH):
                functional.reset_net(snn)
                xb = x[b:b + BATCH]
                outs.append(snn(xb.unsqueeze(0).expand(T, *xb.shape)).sum(0).argmax(-1))
        return torch.cat(outs)

    return run


def _sinabs(ann, x_cal):
    sinabs = pytest.importorskip("sinabs")
    from sinabs.from_torch import from_model

    net = from_model(ann, input_shape=tuple(x_cal.shape[1:]), batch_size=BATCH, add_spiking_output=False).spiking_model

    def run(x):
        outs = []
        with torch.no_grad():
            for b in range(0, len(x), BATCH):
                sinabs.reset_states(net)
                xb = x[b:b + BATCH]
                seq = xb.unsqueeze(1).expand(len(xb), T, *xb.shape[1:]).reshape(-1, *xb.shape[1:])
                outs.append(net(seq).reshape(len(xb), T, -1).sum(1).argmax(-1))
        return torch.cat(outs)

    return run


@pytest.mark.parametrize("model", ["cnn7", "resnet-small"])
def test_simulator_side_by_side(side_by_side, note, model):
    from conftest import trained_ann

    ann, ann_acc = trained_ann(model)
    x_cal, x, y = _data()
    graph = trace(ann, tuple(x.shape[1:])).folded()
    lams = calibrate_scales(graph, x_cal, "percentile", 99.99)
    params = RateParams(timesteps=T, v_init=0.0)  # SpikingJelly's settings: membranes start at 0
    net = RateModel(graph, lams).convert(params)
    sim = Simulator(net, batch_chunk=BATCH)
    snn_acc = float((sim.run(x, T)[-1] == y).float().mean())
    sj = _spikingjelly(ann, x_cal)
    sj_acc = float((sj(x) == y).float().mean())
    contenders = {f"{model}/harness": lambda: sim.run(x, T),
                  f"{model}/harness-metered": lambda: sim.run(x, T, Meters(timesteps=T, keep_per_neuron=True)),
                  f"{model}/spikingjelly": lambda: sj(x)}
    sinabs_note = ""
    if model == "cnn7":  # sinabs's from_model swaps ReLU modules; a forward() with F.relu keeps its ReLUs
        try:
            sin = _sinabs(ann, x_cal)
        except pytest.skip.Exception:
            pass
        else:
            contenders[f"{model}/sinabs"] = lambda: sin(x)
            sinabs_note = f", sinabs from_model SNN (no weight normalisation) {float((sin(x) == y).float().mean()):.3f}"
    side_by_side(contenders, rounds=3)
    note(f"{model} on mnist-5k (1 000 test images, T = {T}): ANN {ann_acc:.3f}, harness rate SNN {snn_acc:.3f}, "
         f"SpikingJelly ann2snn SNN {sj_acc:.3f}{sinabs_note}")


PEAK = r"""
import json, resource, sys, torch
sys.path.insert(0, "benchmarks")
from conftest import trained_ann
from harness.datasets import load_dataset
from harness.graph import trace
from harness.meters import Meters
from harness.methods.rate import RateModel, RateParams, calibrate_scales
from harness.simulate import Simulator
ann, _ = trained_ann("cnn7")
ds = load_dataset("mnist-5k")
graph = trace(ann, (1, 28, 28)).folded()
if sys.argv[1] == "calibrate":  # its own process: calibration's peak must not hide the simulation's
    lams = calibrate_scales(graph, torch.from_numpy(ds.x["train"][:500]), "percentile", 99.99)
    print(json.dumps({"lams": lams, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    sys.exit()
lams = json.loads(sys.argv[1])
net = RateModel(graph, lams).convert(RateParams(timesteps=256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
Simulator(net, time_chunk=64, batch_chunk=1000).run(torch.from_numpy(ds.x["test"][:1000]), 256,
                                                    Meters(timesteps=256, keep_per_neuron=True))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_rss_mib": after / 1024, "baseline_rss_mib": before / 1024}))
"""


def test_peak_memory_T256_batch1000(benchmark, note):
    def child(arg):
        out = subprocess.run([sys.executable, "-c", PEAK, arg], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    cal = child("calibrate")
    res = benchmark.pedantic(child, args=(json.dumps(cal["lams"]),), rounds=1, iterations=1)
    benchmark.extra_info.update(res)
    note(f"peak RSS of the metered simulation of cnn7 at T = 256 on 1 000 images: {res['peak_rss_mib']:.0f} MiB "
         f"(before simulating: {res['baseline_rss_mib']:.0f} MiB; target < 2048 MiB); calibrating λ on 500 "
         f"images, in its own process: {cal['peak_rss_mib']:.0f} MiB")
