"""TTFS evaluators on the trained, converted ttfs-cnn (mnist-5k) and the same batch of test images.

Targets (reported, not asserted): closed form ≥ 20× faster than the time-stepped simulation at
t_max = 64; closed form ≤ 2× the ANN's own forward pass.
"""

import torch

from harness.datasets import load_dataset
from harness.graph import trace
from harness.methods.ttfs import TTFSNetwork
from harness.methods.ttfs.reference import simulate

RATIOS = [
    ("ttfs stepped / closed form (t_max=64)", "ttfs-stepped", "ttfs-closed", ">= 20x"),
    ("ttfs closed form / ANN forward", "ttfs-closed", "ann-forward", "<= 2x"),
]


def test_ttfs_side_by_side(side_by_side, note):
    from conftest import trained_ann

    ann, ann_acc = trained_ann("ttfs-cnn")
    ds = load_dataset("mnist-5k")
    net = TTFSNetwork(trace(ann, (1, 28, 28)).folded(), t_max=64)
    net.calibrate(torch.from_numpy(ds.x["train"][:1000]), 99.9)
    x, y = torch.from_numpy(ds.x["test"][:256]), torch.from_numpy(ds.y["test"][:256])
    acc = float((net.closed_form(x).argmax(-1) == y).float().mean())

    def ann_forward():
        with torch.no_grad():
            ann(x)

    side_by_side({"ann-forward": ann_forward, "ttfs-closed": lambda: net.closed_form(x),
                  "ttfs-stepped": lambda: simulate(net.graph, net.u_th, net.t_max, x, net.x_max)}, rounds=5)
    note(f"ttfs-cnn on mnist-5k (256 test images, t_max = 64): ANN {ann_acc:.3f}, TTFS closed form {acc:.3f}")
