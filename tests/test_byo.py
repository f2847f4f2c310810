"""Bring your own: a network class of your own (CLI path and Python API), your own data, trained
weights, plug-in packages, and a cache that knows what it trained."""

import json
import subprocess
import sys
import textwrap

import harness
import numpy as np
import pytest
import torch
from harness.cli import main
from harness.errors import ConfigError, DataError, HarnessError

USER_NET = '''
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """A residual network written the usual way: BatchNorm, F.relu, a skip connection."""

    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.{pool}(2)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(torch.flatten(self.pool(h), 1))


def make(input_shape, num_classes):
    return Net(input_shape[0], num_classes)
'''


def _user_file(tmp_path, pool="AvgPool2d", name="nets.py"):
    path = tmp_path / name
    path.write_text(USER_NET.replace("{pool}", pool))
    return path


@pytest.mark.parametrize("method,sets", [
    ("ann", []), ("rate", ["timesteps=16"]), ("surrogate", ["epochs=3", "timesteps=2", "lr=3e-3"]),
    ("prune+rate", ["prune.epochs=2", "prune.start_epoch=0", "prune.ramp_epochs=1", "timesteps=16"]),
])
@pytest.mark.slow
def test_own_network_class_from_the_cli(method, sets, tmp_path, capsys):
    path = _user_file(tmp_path)
    out = tmp_path / "r.json"
    argv = ["run", "--method", method, "--model", f"{path}:make", "--dataset", "digits", "--epochs", "2",
            "--no-track", "--no-progress", "--output-json", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    m = rec["metrics"]
    assert rec["model"] == f"{path}:make"
    assert m["test/accuracy"] > 0.3
    assert "layer/conv2/synops" in m and "layer/relu_1/spikes_per_neuron" in m
    if method != "ann":
        assert m["layer/conv2/synops"] > 0


def test_own_network_and_data_from_python(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        _user_file(tmp_path, name="mynets.py")
        import mynets
    finally:
        sys.path.remove(str(tmp_path))
    from harness.datasets import load_dataset

    ds = load_dataset("digits")
    train = (torch.from_numpy(ds.x["train"]), torch.from_numpy(ds.y["train"]))
    test = (ds.x["test"], ds.y["test"])  # numpy works too
    res = harness.run("rate", model=mynets.Net(1, 10), dataset=(train, test), track=False, progress=False,
                      settings={"epochs": 2}, timesteps=16)
    assert res.model == "Net" and res.dataset["splits"]["test"] == 359
    assert res.dataset["version"].startswith("user/")
    assert res.metrics["test/accuracy"] > 0.3 and res.metrics["synops"] > 0


def test_module_path_importable_from_the_working_directory(tmp_path, monkeypatch):
    _user_file(tmp_path, name="cwdnets.py")
    monkeypatch.chdir(tmp_path)
    res = harness.run("ann", model="cwdnets:make", dataset="digits", track=False, progress=False,
                      settings={"epochs": 1})
    assert res.metrics["test/accuracy"] > 0.1


@pytest.mark.parametrize("spec,needle", [
    ("no_such_module_xyz:make", "importing no_such_module_xyz failed: ModuleNotFoundError"),
    ("{file}:mkae", "Did you mean 'make'"),
    ("/nowhere/nets.py:make", "file /nowhere/nets.py not found"),
])
def test_bad_factory_paths_are_named(spec, needle, tmp_path, capsys):
    spec = spec.replace("{file}", str(_user_file(tmp_path)))
    assert main(["run", "--model", spec, "--dataset", "digits", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_weights_bring_a_trained_ann(tmp_path, quick):
    from harness.runner import run

    first = run(quick(method="ann", model="dnn5"))
    blob = torch.load(first.provenance["ann_cache_file"], weights_only=True)
    wfile = tmp_path / "dnn5.pt"
    torch.save(blob["state_dict"], wfile)
    res = run(quick(method="rate", model="dnn5", weights=str(wfile), sets=("timesteps=8",)))
    assert res.provenance["ann_cache"] == "bypassed (--weights)"
    import hashlib

    assert res.provenance["weights_sha256"] == hashlib.sha256(wfile.read_bytes()).hexdigest()
    assert res.metrics["ann/test/accuracy"] == first.metrics["test/accuracy"]
    bad = dict(blob["state_dict"])
    bad["fc2.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"'fc2.weight' has shape \(3, 3\), the model's has \(128, 128\)"):
        run(quick(method="ann", model="dnn5", weights=str(tmp_path / "bad.pt")))


def test_data_factory_with_wrong_shapes_is_named(tmp_path):
    (tmp_path / "baddata.py").write_text(textwrap.dedent('''
        import numpy as np
        def load():
            return (np.zeros((10, 1, 4, 4)), np.zeros(9)), (np.zeros((5, 1, 4, 4)), np.zeros(5))
        def strings():
            return (np.zeros((10, 1, 4, 4)), np.array(list("abcdefghij"))), (np.zeros((5, 1, 4, 4)), np.zeros(5))
    '''))
    with pytest.raises(DataError, match="10 inputs but 9 labels"):
        harness.run("ann", dataset=f"{tmp_path / 'baddata.py'}:load", track=False)
    with pytest.raises(DataError, match="labels must be integers"):
        harness.run("ann", dataset=f"{tmp_path / 'baddata.py'}:strings", track=False)


@pytest.mark.slow
def test_editing_a_model_under_the_same_name_misses_the_cache(tmp_path, quick):
    """The cache key holds the traced architecture: the same name with other code is another network."""
    from harness.runner import run

    path = _user_file(tmp_path)
    spec = f"{path}:make"
    assert run(quick(method="ann", model=spec)).provenance["ann_cache"] == "miss"
    assert run(quick(method="ann", model=spec)).provenance["ann_cache"] == "hit"
    path.write_text(USER_NET.replace("{pool}", "MaxPool2d"))  # average -> max pooling, same name
    again = run(quick(method="ann", model=spec))
    assert again.provenance["ann_cache"] == "miss"
    assert run(quick(method="ann", model="dnn5")).provenance["ann_cache"] == "miss"


def _write_idx(path, array):
    import gzip
    import struct

    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _idx_dir(root, seed):
    rng = np.random.default_rng(seed)
    root.mkdir()
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 8, 8))
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_other_images_of_the_same_sizes_miss_the_cache(tmp_path, quick):
    from harness.runner import run

    a, b = _idx_dir(tmp_path / "a", 0), _idx_dir(tmp_path / "b", 1)
    ra = run(quick(method="ann", dataset="mnist", data_dir=str(a), model="dnn5"))
    rb = run(quick(method="ann", dataset="mnist", data_dir=str(b), model="dnn5"))
    assert ra.dataset["splits"] == rb.dataset["splits"]
    assert ra.dataset["version"] != rb.dataset["version"]
    assert rb.provenance["ann_cache"] == "miss"
    assert run(quick(method="ann", dataset="mnist", data_dir=str(a), model="dnn5")).provenance["ann_cache"] == "hit"
    assert (a / ".snn-harness-digests.json").is_file()  # the digest is memoised beside the data


PLUGIN = '''
from dataclasses import dataclass

from torch import nn

from harness.api import Method, Preparation
from harness.config import Params, param


def tiny(input_shape, num_classes):
    n = 1
    for d in input_shape:
        n *= d
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 16), nn.ReLU(), nn.Linear(16, num_classes))


@dataclass(frozen=True)
class HalfParams(Params):
    factor: float = param(0.5, "weight factor", low=0, low_open=True)


class Halve(Method):
    """scales every weight: a transform of the ANN, evaluated as an ANN"""
    name = "halve"
    spiking = False
    Params = HalfParams

    def prepare(self, ctx, ann, params):
        import torch
        with torch.no_grad():
            for p in ann.parameters():
                p.mul_(params.factor)
        return Preparation(ann)
'''


@pytest.mark.slow
def test_a_plugin_package_adds_a_model_and_a_method(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "tinyplug.py").write_text(PLUGIN)
    info = site / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[snn_harness.models]\ntiny = tinyplug:tiny\n\n"
                                           "[snn_harness.methods]\nhalve = tinyplug:Halve\n")
    env = {"PYTHONPATH": str(site), "HARNESS_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    cli = [sys.executable, "-m", "harness.cli"]
    ls = subprocess.run(cli + ["ls", "models"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert ls.returncode == 0, ls.stderr
    assert "tiny" in ls.stdout and "[tinyplug 0.1]" in ls.stdout
    out = tmp_path / "r.json"
    proc = subprocess.run(cli + ["run", "--method", "halve", "--model", "tiny", "--dataset", "digits", "--epochs", "1",
                                 "--no-track", "--no-progress", "--output-json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rec = json.loads(out.read_text())
    assert rec["method"] == "halve" and rec["model"] == "tiny" and rec["params"] == {"factor": 0.5}
    assert rec["metrics"]["layer/1/macs"] == 64 * 16


def test_unknown_names_still_suggest():
    with pytest.raises(HarnessError, match="Did you mean 'resnet-small'"):
        harness.run("ann", model="resnet-smal", track=False)
