"""TTFS evaluators on the same converted ttfs-cnn and the same batch of mnist-5k test images.

Targets (reported, not asserted): closed form ≥ 20× faster than the time-stepped simulation at
t_max = 64; closed form ≤ 2× the ANN's own forward pass.
"""

import pytest
import torch

from benchmarks.conftest import declare_ratio
from harness.datasets import load_dataset
from harness.methods.ttfs import TTFSNetwork
from harness.models import build_model

declare_ratio("ttfs stepped / closed form (t_max=64)", "ttfs-stepped", "ttfs-closed", ">= 20x")
declare_ratio("ttfs closed form / ANN forward", "ttfs-closed", "ann-forward", "<= 2x")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = load_dataset("mnist-5k")
    ann = build_model("ttfs-cnn", ds.input_shape, ds.num_classes).eval()
    net = TTFSNetwork(ann, t_max=64)
    net.calibrate(torch.from_numpy(ds.x["train"][:500]), 99.9)
    x = torch.from_numpy(ds.x["test"][:64])
    return ann, net, x


def test_ann_forward(benchmark, record, setup):
    ann, _, x = setup
    with torch.no_grad():
        benchmark.pedantic(ann, args=(x,), rounds=30, warmup_rounds=3)
    record("ann-forward")


def test_ttfs_closed_form(benchmark, record, setup):
    _, net, x = setup
    benchmark.pedantic(net.closed_form, args=(x,), rounds=30, warmup_rounds=3)
    record("ttfs-closed")


def test_ttfs_stepped(benchmark, record, setup):
    _, net, x = setup
    benchmark.pedantic(net.stepped, args=(x,), rounds=3, warmup_rounds=1)
    record("ttfs-stepped")
