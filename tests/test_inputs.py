"""What users bring — weights, data, labels, factories, plug-ins — is checked before any MLflow run
opens and before any training: bad input gets exit 2 and one line that names the tensor or split
and an index, and no run is left behind (``harness.inputs``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from harness.cli import main


def _cli(argv, capsys) -> tuple[int, str]:
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("harness: error:")]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def _no_run_left() -> None:
    from mlflow.tracking import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    if not os.path.exists(uri[len("sqlite:///"):]):
        return
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("snn-harness")
    assert exp is None or not client.search_runs([exp.experiment_id]), "a refused input left an MLflow run"


def _data_factory(tmp_path, body: str, name: str = "data.py") -> str:
    """A ``--dataset file.py:make`` factory returning what ``body`` builds (digits as numpy arrays)."""
    (tmp_path / name).write_text(textwrap.dedent('''
        import numpy as np
        from sklearn.datasets import load_digits

        def _digits():
            d = load_digits()
            x = (d.images / 16.0).astype(np.float32)[:, None]
            return x, d.target.astype(np.int64)

        def make():
            x, y = _digits()
    ''') + textwrap.indent(textwrap.dedent(body), "    "))
    return f"{tmp_path / name}:make"


RUN = ["run", "--method", "ann", "--model", "dnn5", "--epochs", "1", "--no-progress"]


# ---- weights -----------------------------------------------------------------------------------


def _dnn5_state(tmp_path):
    from harness.models import build_model

    torch.manual_seed(0)
    return build_model("dnn5", (1, 8, 8), 10).state_dict()


def test_weights_with_a_nan_are_refused_naming_the_tensor_and_index_before_any_run(tmp_path, capsys):
    state = _dnn5_state(tmp_path)
    state["fc2.weight"][3, 7] = float("nan")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    rc, err = _cli([*RUN, "--dataset", "digits", "--weights", str(path)], capsys)
    assert rc == 2
    assert _one_line(err) == (f"harness: error: --weights {path}: 'fc2.weight' holds NaN at index (3, 7) (1 non-finite "
                              "of 16384); the file cannot give a meaningful network")
    _no_run_left()


def test_a_file_that_is_not_a_torch_file_is_named_as_such(tmp_path, capsys):
    path = tmp_path / "w.pt"
    path.write_text("epoch,loss\n1,0.5\n")  # a CSV saved under a .pt name
    rc, err = _cli([*RUN, "--dataset", "digits", "--weights", str(path)], capsys)
    assert rc == 2 and _one_line(err).startswith(f"harness: error: --weights {path} is not a torch file (")
    _no_run_left()


def test_weights_of_another_network_are_refused_before_the_run_opens(tmp_path, capsys):
    state = _dnn5_state(tmp_path)
    state["fc1.weight"] = torch.zeros(3, 3)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    rc, err = _cli([*RUN, "--dataset", "digits", "--weights", str(path)], capsys)
    assert rc == 2 and "'fc1.weight' has shape (3, 3), the model's has (128, 64)" in _one_line(err)
    _no_run_left()  # the file was checked after the run opened: a FAILED run was left behind


# ---- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,needle", [
    ("x[2, 0, 3, 4] = np.nan\nreturn (x[:1400], y[:1400]), (x[1400:], y[1400:])",
     "/train: input 2 holds NaN at index (2, 0, 3, 4); 1 non-finite value in this split"),
    ("x[1412, 0, 0, 1] = np.inf\nreturn (x[:1400], y[:1400]), (x[1400:], y[1400:])",
     "/test: input 12 holds inf at index (12, 0, 0, 1)"),
    ("return (x[:1400] * 1e30, y[:1400]), (x[1400:] * 1e30, y[1400:])",
     "/train: inputs span [0, 1e+30], beyond ±10000; scale the images"),
])
@pytest.mark.slow
def test_non_finite_or_absurd_pixels_are_refused_naming_the_split(body, needle, tmp_path, capsys):
    rc, err = _cli([*RUN, "--dataset", _data_factory(tmp_path, body)], capsys)
    assert rc == 2 and needle in _one_line(err), err
    _no_run_left()


def test_images_without_a_channel_axis_get_one_and_uint8_images_are_scaled(tmp_path):
    from harness.datasets import load_dataset

    float_ds = load_dataset(_data_factory(tmp_path, "return (x[:1400], y[:1400]), (x[1400:], y[1400:])", "a.py"))
    flat = load_dataset(_data_factory(tmp_path, "return (x[:1400, 0], y[:1400]), (x[1400:, 0], y[1400:])", "b.py"))
    assert flat.input_shape == (1, 8, 8) and np.array_equal(flat.x["test"], float_ds.x["test"])
    raw = load_dataset(_data_factory(tmp_path, "u = np.round(x * 255).astype(np.uint8)\n"
                                               "return (u[:1400], y[:1400]), (u[1400:], y[1400:])", "c.py"))
    assert raw.x["test"].dtype == np.float32 and raw.x["test"].max() == 1.0
    assert np.allclose(raw.x["test"], float_ds.x["test"], atol=0.5 / 255)


def test_ttfs_refuses_data_outside_its_encoding_before_training(tmp_path, capsys, monkeypatch):
    import harness.ann_cache

    monkeypatch.setattr(harness.ann_cache, "train_ann", lambda ctx: pytest.fail("trained before refusing"))
    factory = _data_factory(tmp_path, "return (2 * x[:1400], y[:1400]), (2 * x[1400:], y[1400:])")
    rc, err = _cli(["run", "--method", "ttfs", "--dataset", factory, "--no-progress"], capsys)
    assert rc == 2 and "inputs span [0, 2], outside the encoding's [0, x_max=1]; set x_max (--set x_max=2)" in \
        _one_line(err)
    _no_run_left()


# ---- labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,needle", [
    ("return (x, y * 0), (x[:100], y[:100] * 0)", "every label is 0: 1 class; a classifier needs at least 2"),
    ("y = y.copy(); y[5] = 10\nreturn (x[:1400], y[:1400]), (x[1400:], y[1400:])",
     "class 10 has 1 training sample where the median class has 140: a stray label?"),
    ("return (x[:1400], y[:1400] + 1), (x[1400:], y[1400:] + 1)",
     "labels run from 1 to 10 and no sample has label 0: they look 1-based"),
    ("keep = y[:1400] != 3\nreturn (x[:1400][keep], y[:1400][keep]), (x[1400:], y[1400:])",
     "class 3 appears in the evaluation splits but in no training sample"),
    ("return {'train': (x[:1400], y[:1400]), 'test': (x[1400:], y[1400:]), 'num_classes': 5}",
     "/train: label 5 at index 5 is outside 0 … 4 (5 classes)"),
])
@pytest.mark.slow
def test_labels_that_would_score_nonsense_are_refused(body, needle, tmp_path, capsys):
    rc, err = _cli([*RUN, "--dataset", _data_factory(tmp_path, body)], capsys)
    assert rc == 2 and needle in _one_line(err), err
    _no_run_left()


def test_a_declared_class_count_is_used(tmp_path):
    from harness.datasets import load_dataset

    ds = load_dataset(_data_factory(tmp_path, "keep = y < 9\nreturn {'train': (x[keep][:1200], y[keep][:1200]), "
                                              "'test': (x[keep][1200:], y[keep][1200:]), 'num_classes': 10}"))
    assert ds.num_classes == 10  # class 9 has no sample: declared, so it is the caller's choice


# ---- factories and plug-ins --------------------------------------------------------------------


def test_a_model_factory_that_raises_is_named_in_one_line_before_any_run(tmp_path, capsys):
    (tmp_path / "nets.py").write_text("def make(input_shape, num_classes):\n"
                                      "    raise RuntimeError('\\x1b[31mno GPU here\\x1b[0m')\n")
    rc, err = _cli(["run", "--method", "ann", "--model", f"{tmp_path / 'nets.py'}:make", "--dataset", "digits"],
                   capsys)
    assert rc == 2
    assert _one_line(err) == (f"harness: error: model '{tmp_path / 'nets.py'}:make': calling the factory failed: "
                              "RuntimeError: no GPU here")  # the colour codes it raised with are gone
    _no_run_left()


ENERGY_PLUGINS = '''
from harness.energy import EnergyModel

GOOD = EnergyModel("tiny-good", 1e-12, 1e-13, 0.0, "a test plug-in")
NOT_A_MODEL = {"e_mac": 1e-12}
'''


@pytest.mark.slow
def test_a_broken_energy_plugin_is_left_out_with_a_warning_and_marked_by_ls(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "energyplug.py").write_text(ENERGY_PLUGINS)
    (site / "crashplug.py").write_text("raise RuntimeError('this plug-in is broken')\n")
    info = site / "energyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: energyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[snn_harness.energy]\ntiny-good = energyplug:GOOD\n"
                                           "tiny-crash = crashplug:MODEL\ntiny-dict = energyplug:NOT_A_MODEL\n")
    env = {**os.environ, "PYTHONPATH": str(site), "HARNESS_CACHE_DIR": str(tmp_path / "cache")}
    cli = [sys.executable, "-m", "harness.cli"]
    ls = subprocess.run(cli + ["ls", "energy"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert ls.returncode == 0, ls.stderr
    rows = {ln.split()[0]: ln for ln in ls.stdout.splitlines()}
    assert "BROKEN" not in rows["tiny-good"] and "BROKEN" not in rows["cmos45-fp32"]
    assert "[BROKEN: energy model 'tiny-crash' from energyplug 0.1 cannot be loaded from crashplug:MODEL: " \
           "RuntimeError: this plug-in is broken]" in rows["tiny-crash"]
    assert "not a harness.energy.EnergyModel or LemaireModel" in rows["tiny-dict"]
    out = tmp_path / "r.json"
    proc = subprocess.run(cli + ["run", "--method", "ann", "--model", "dnn5", "--dataset", "digits", "--epochs", "1",
                                 "--no-track", "--no-progress", "--output-json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("tiny-crash") == 1 and "it is left out" in proc.stderr  # one warning, not a traceback
    import json

    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["energy_nJ/tiny-good"] > 0 and "energy_nJ/tiny-crash" not in metrics


# ---- the same rules, called directly (fast: what make mutation runs) -------------------------------


def _y(train, test):
    return {"train": np.asarray(train, np.int64), "test": np.asarray(test, np.int64)}


@pytest.mark.parametrize("train,test,needle", [
    ([0] * 6, [0, 0], "every label is 0: 1 class; a classifier needs at least 2"),
    ([0, 1, 2] * 150 + [3], [0, 1], "class 3 has 1 training sample where the median class has 150: a stray label?"),
    ([1, 2, 3] * 5, [1, 2], "labels run from 1 to 3 and no sample has label 0: they look 1-based"),
    ([0, 1, 2] * 5, [3, 0], "class 3 appears in the evaluation splits but in no training sample"),
    ([0, 2] * 5 + [3] * 5, [0, 3], "no sample has label 1"),
])
def test_label_rules_by_hand(train, test, needle):
    """Stray: at most 5 samples and under 1 % of the median class (1 < 1.5). Wrong variants: an
    absent class looked for where there are samples, no median, the checks in another order."""
    from harness.errors import DataError
    from harness.inputs import check_labels

    with pytest.raises(DataError, match=re.escape(needle)):
        check_labels("d", _y(train, test), None)


def test_labels_that_pass_give_the_class_count_and_a_declared_count_allows_empty_classes():
    from harness.inputs import check_labels

    assert check_labels("d", _y([0, 1, 2] * 5, [2, 1]), None) == 3
    assert check_labels("d", _y([0, 2] * 5, [0, 2]), 4) == 4  # declared: classes 1 and 3 may be absent


def test_a_factorys_splits_become_the_data_sets_splits_with_their_labels():
    """Wrong variants: the labels dropped, the three splits named otherwise."""
    from harness.datasets.base import from_factory_result

    rng = np.random.default_rng(0)
    x = rng.random((30, 1, 4, 4)).astype(np.float32)
    y = np.arange(30) % 3
    ds = from_factory_result(((x[:20], y[:20]), (x[20:25], y[20:25]), (x[25:], y[25:])), "mine", "f.py:make")
    assert ds.split_sizes == {"train": 20, "val": 5, "test": 5} and ds.num_classes == 3
    assert np.array_equal(ds.y["val"], y[20:25]) and np.array_equal(ds.y["train"], y[:20])
    assert ds.name == "mine" and ds.source == "f.py:make"


def test_an_unknown_data_set_name_gets_did_you_mean_not_a_factory_error():
    """Wrong variant: a name without ':' taken for ``module:factory`` when it is not registered."""
    from harness.datasets import load_dataset
    from harness.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="digits"):
        load_dataset("digitz")
