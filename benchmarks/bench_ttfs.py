"""TTFS evaluators on the same converted ttfs-cnn and the same batch of mnist-5k test images.

Targets (reported, not asserted): closed form ≥ 20× faster than the time-stepped simulation at
t_max = 64; closed form ≤ 2× the ANN's own forward pass.
"""

import pytest
import torch
from harness.datasets import load_dataset
from harness.methods.ttfs import TTFSNetwork
from harness.models import build_model

RATIOS = [
    ("ttfs stepped / closed form (t_max=64)", "ttfs-stepped", "ttfs-closed", ">= 20x"),
    ("ttfs closed form / ANN forward", "ttfs-closed", "ann-forward", "<= 2x"),
]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    ds = load_dataset("mnist-5k")
    ann = build_model("ttfs-cnn", ds.input_shape, ds.num_classes).eval()
    net = TTFSNetwork(ann, t_max=64)
    net.calibrate(torch.from_numpy(ds.x["train"][:500]), 99.9)
    x = torch.from_numpy(ds.x["test"][:64])
    return ann, net, x


def test_ttfs_side_by_side(side_by_side, setup):
    ann, net, x = setup

    def ann_forward():
        with torch.no_grad():
            ann(x)

    side_by_side({"ann-forward": ann_forward, "ttfs-closed": lambda: net.closed_form(x),
                  "ttfs-stepped": lambda: net.stepped(x)}, rounds=5)
