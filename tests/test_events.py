"""Event data: tonic's sets read from files written in their own formats, the simulated sensor of
``mnist-5k-dvs`` checked against its definition, the binning and its cache, refusals, and the
methods that take events, run the way users run them (tracked)."""

from __future__ import annotations

import json
import logging
import os
import shutil

import numpy as np
import pytest
from harness.errors import ConfigError, DataError

from event_files import frames_by_hand, nmnist_record, write_gesture, write_nmnist, write_shd


def _load(name, root, **binning):
    from harness.datasets import load_dataset
    from harness.datasets.events import Binning

    return load_dataset(name, str(root), download=False, binning=Binning(**binning))


def test_nmnist_files_are_read_and_binned_as_tonic_defines(tmp_path):
    write_nmnist(tmp_path)
    x, y = np.array([0, 33, 5, 5, 12, 7]), np.array([0, 33, 6, 6, 3, 20])
    p = np.array([1, 0, 1, 1, 0, 1])
    t = np.array([10, 400, 77_000, 77_001, 150_000, 299_990])
    (tmp_path / "NMNIST/Test/0/00000.bin").write_bytes(nmnist_record(x, y, p, t))
    ds = _load("nmnist", tmp_path, time_bins=4)
    assert ds.is_events and ds.time_bins == 4 and ds.input_shape == (2, 34, 34)
    assert len(ds.y["train"]) + len(ds.y["val"]) == 30 and len(ds.y["test"]) == 20
    assert list(ds.y["test"][:2]) == [0, 0] and sorted(set(ds.y["test"].tolist())) == list(range(10))
    want = frames_by_hand(x, y, p, t, 4, (34, 34, 2))
    assert np.array_equal(ds.frames["test"][0], want)
    assert want.sum() == 5  # the last event ends the last window: tonic's windows exclude their end
    assert np.allclose(ds.x["test"][0], want.mean(0))  # what an ANN sees: the mean frame
    info = ds.describe()
    assert info["kind"] == "events" and info["events"]["binning"] == {"time_bins": 4}
    assert info["events"]["recorded_events_per_sample"] == pytest.approx((29 * 60 + 6 + 20 * 60) / 50)


def test_dvs_gesture_and_shd_take_their_defaults_and_their_shapes(tmp_path):
    write_gesture(tmp_path)
    write_shd(tmp_path)
    g = _load("dvs-gesture", tmp_path)
    assert g.input_shape == (2, 32, 32) and g.time_bins == 16 and g.num_classes == 11
    assert g.describe()["events"]["binning"] == {"time_bins": 16, "denoise_ms": 10.0, "downsample": 0.25}
    assert len(g.y["test"]) == 22
    s = _load("shd", tmp_path, time_bins=10)
    assert s.input_shape == (1, 1, 700) and s.time_bins == 10 and s.num_classes == 20
    assert len(s.y["test"]) == 20 and s.frames["test"].sum() == s.describe()["events"]["binned_events_per_test_sample"] * 20


def test_bad_event_files_are_named(tmp_path):
    root = tmp_path / "a"
    write_nmnist(root)
    bad = root / "NMNIST/Train/3/00001.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    with pytest.raises(DataError, match=r"00001\.bin: 298 bytes is not a whole number"):
        _load("nmnist", root)
    bad.write_bytes(nmnist_record([40], [1], [0], [5]))  # x beyond the 34-pixel sensor
    with pytest.raises(DataError, match=r"00001\.bin \(sample \d+\): event 0 has x 40, outside the sensor's 0 … 33"):
        _load("nmnist", root)
    write_gesture(tmp_path / "g")
    f = tmp_path / "g/DVSGesture/ibmGestureTest/user01_fluorescent/4.npy"
    np.save(f, np.array([[1, 1, 0, 5], [2, 2, 1, -3]]))
    # the test split's files in name order: 0, 1, 10, 2, 3, 4 …: 4.npy is sample 5
    with pytest.raises(DataError, match=r"4\.npy \(sample 5\): event 1 has the negative timestamp -3000"):
        _load("dvs-gesture", tmp_path / "g")
    np.save(f, np.array([[65_570, 1, 0, 5]]))  # int16 would wrap 65 570 to 34, inside the 128-pixel sensor
    with pytest.raises(DataError, match=r"4\.npy \(sample 5\): event 0 has x 65570, outside any sensor"):
        _load("dvs-gesture", tmp_path / "g")
    np.save(f, np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"4\.npy: expected an \(N, 4\) numeric array"):
        _load("dvs-gesture", tmp_path / "g")
    write_shd(tmp_path / "s")
    (tmp_path / "s/SHD/shd_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match=r"shd_test\.h5: not a readable SHD file"):
        _load("shd", tmp_path / "s")
    with pytest.raises(DataError, match=r"nmnist: the N-MNIST folders .* not found\. Looked in: .*--data-dir"):
        _load("nmnist", tmp_path / "empty")


def test_binning_options_are_refused_where_they_cannot_apply(tmp_path):
    from harness.datasets import load_dataset
    from harness.datasets.events import Binning

    with pytest.raises(ConfigError, match=r"digits is not an event data set.*mnist-5k-dvs, nmnist, dvs-gesture, shd"):
        load_dataset("digits", binning=Binning(time_bins=8))
    with pytest.raises(ConfigError, match="--time-bins and --time-window both given"):
        Binning(time_bins=8, time_window_ms=10)
    with pytest.raises(ConfigError, match=r"--downsample 2.0: valid range \(0, 1\]"):
        Binning(downsample=2.0)


def test_a_binning_of_mostly_empty_frames_is_warned_about_with_the_fraction(tmp_path, caplog):
    write_nmnist(tmp_path, events=5)
    with caplog.at_level(logging.WARNING):
        ds = _load("nmnist", tmp_path, time_bins=40)
    empty = ds.describe()["events"]["empty_frame_fraction"]
    assert empty > 0.8
    assert f"{100 * empty:.0f} % of the frames hold no event" in caplog.text


def test_frames_are_cached_per_binning_and_a_bad_cache_file_is_rebuilt(tmp_path, monkeypatch, caplog):
    from harness.datasets import neuromorphic
    from harness.datasets.events import Binning, frames_cache

    write_nmnist(tmp_path)
    first = _load("nmnist", tmp_path, time_bins=4)
    with monkeypatch.context() as m:
        m.setattr(neuromorphic, "read_nmnist", lambda files: pytest.fail("the cached frames were re-read"))
        again = _load("nmnist", tmp_path, time_bins=4)
    assert np.array_equal(first.frames["test"], again.frames["test"]) and first.version == again.version
    other = _load("nmnist", tmp_path, time_bins=2)
    assert other.time_bins == 2 and other.version != first.version
    cache = frames_cache("nmnist", first.version.rsplit("/", 1)[0], Binning(time_bins=4))
    assert cache.is_file()
    cache.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        rebuilt = _load("nmnist", tmp_path, time_bins=4)
    assert str(cache) in caplog.text and "binning again" in caplog.text
    assert np.array_equal(rebuilt.frames["test"], first.frames["test"])


# ---------------------------------------------------------------------------------------------
# the simulated sensor


def _digits(n):
    from harness.datasets import load_dataset

    ds = load_dataset("mnist-5k")
    return np.round(ds.x["test"][:n, 0] * 255).astype(np.uint8)


def _events_of_pixel(img, X, Y, C, floor, saccades, steps, saccade_us):
    """ESIM written out for one pixel: the pixel's log intensity at every rendered position
    (bilinear between image pixels; the dark floor outside the image), an event each time it moves
    C away from the level of the last event, at the time interpolated linearly between positions."""
    import math

    def log_at(u, v):  # image pixel (u, v) = (column, row), integers
        if 0 <= u < 28 and 0 <= v < 28:
            val = int(img[v, u])
        else:
            val = 0
        return round(math.log(val / 255.0 + floor) * 2**20) / 2**20

    def seen(dx, dy):
        u, v = X - dx, Y - dy
        u0, v0 = math.floor(u), math.floor(v)
        a, b = u - u0, v - v0  # sensor pixel X sees image column X - dx: weights of the neighbours
        return ((1 - a) * (1 - b) * log_at(u0, v0) + a * (1 - b) * log_at(u0 + 1, v0)
                + (1 - a) * b * log_at(u0, v0 + 1) + a * b * log_at(u0 + 1, v0 + 1))

    times, levels = [0.0], [seen(*saccades[0])]
    for k in range(len(saccades) - 1):
        (x0, y0), (x1, y1) = saccades[k], saccades[k + 1]
        for s in range(1, steps + 1):
            f = s / steps
            times.append(k * saccade_us + f * saccade_us)
            levels.append(seen(x0 + f * (x1 - x0), y0 + f * (y1 - y0)))
    ref, out = levels[0], []
    for k in range(1, len(times)):
        while abs(levels[k] - ref) >= C:
            sign = 1.0 if levels[k] > ref else -1.0
            ref += sign * C
            frac = (ref - levels[k - 1]) / (levels[k] - levels[k - 1])
            out.append((math.floor(times[k - 1] + frac * (times[k] - times[k - 1])), int(sign > 0)))
    return out


def test_the_simulated_sensor_follows_its_definition_pixel_by_pixel():
    from harness.datasets import sensor

    imgs = _digits(3)
    rec = sensor.simulate(imgs)
    assert rec.events["x"].max() < 34 and rec.events["y"].max() < 34 and rec.events["t"].min() >= 0
    assert rec.events["t"].max() <= 3 * sensor.SACCADE_US
    checked = 0
    for i in range(3):
        ev = rec.sample(i)
        for X, Y in ((14, 14), (10, 20), (20, 8), (3, 30), (30, 3), (17, 9)):
            mine = ev[(ev["x"] == X) & (ev["y"] == Y)]
            want = _events_of_pixel(imgs[i], X, Y, sensor.CONTRAST, sensor.LOG_FLOOR, sensor.SACCADES, sensor.STEPS,
                                    sensor.SACCADE_US)
            got = sorted(zip(mine["t"].tolist(), mine["p"].tolist()))
            assert got == sorted(want), (i, X, Y)
            checked += len(want)
    assert checked > 50


def test_every_pixel_sends_as_many_on_as_off_events_since_the_scene_returns_to_its_start():
    """The saccades end where they start, so each pixel's log intensity ends where it began: its ON
    and OFF events cancel exactly (the reference level ends within C of where it started)."""
    from harness.datasets import sensor

    rec = sensor.simulate(_digits(20))
    for i in range(20):
        ev = rec.sample(i)
        pix = ev["y"].astype(np.int64) * 34 + ev["x"]
        on = np.bincount(pix[ev["p"] == 1], minlength=34 * 34)
        off = np.bincount(pix[ev["p"] == 0], minlength=34 * 34)
        assert np.array_equal(on, off) and on.sum() > 1000
        assert np.all(np.diff(ev["t"]) >= 0)  # time-ordered within a sample


# ---------------------------------------------------------------------------------------------
# methods on events, run as users run them


def _cli(argv, capsys):
    from harness.cli import main

    code = main(argv)
    return code, capsys.readouterr()


def _runs():
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("snn-harness")
    return client, [] if exp is None else client.search_runs([exp.experiment_id])


def test_surrogate_trains_on_the_frames_and_meters_the_input_events(tmp_path, capsys):
    from harness.datasets import load_dataset

    write_nmnist(tmp_path, per_class=(6, 2))
    code, out = _cli(["run", "--method", "surrogate", "--model", "dnn5", "--dataset", "nmnist", "--data-dir",
                      str(tmp_path), "--time-bins", "5", "--epochs", "1", "--set", "epochs=1", "--no-progress",
                      "-o", "r.json"], capsys)
    assert code == 0, out.err
    rec = json.loads((tmp_path / "r.json").read_text())
    m = rec["metrics"]
    assert rec["params"]["encoding"] == "events" and rec["params"]["timesteps"] == 5 and m["timesteps"] == 5
    frames = load_dataset("nmnist", str(tmp_path), binning=__import__("harness.datasets.events", fromlist=["x"])
                          .Binning(time_bins=5)).frames["test"]
    events = frames.reshape(len(frames), -1).sum(1).mean()
    assert m["input_events"] == pytest.approx(events, rel=1e-12)
    first = rec["layers"][0]
    assert first["input"] == "spikes"
    # dnn5's first layer is Linear(2312, 128): every event reaches its 128 non-zero weights
    assert m["input_synops"] == pytest.approx(events * 128, rel=1e-12) == first["synops"]
    assert rec["dataset"]["kind"] == "events" and rec["dataset"]["events"]["time_bins"] == 5
    _client, runs = _runs()
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.metrics["input_events"] == pytest.approx(events)
    from harness.analysis.runs import load_runs

    table = load_runs(os.environ["MLFLOW_TRACKING_URI"]).df
    assert table["dataset"].tolist() == ["nmnist [time_bins=5]"] and table["data_kind"].tolist() == ["events"]


def test_the_leaderboard_keeps_event_data_apart_from_images():
    import pandas as pd
    from harness.analysis.report import leaderboard
    from harness.analysis.runs import RunTable

    def row(r, dataset, kind, acc, energy):
        return {"run_id": r, "method": "rate", "model": r, "dataset": dataset, "data_kind": kind, "test/accuracy": acc,
                "eval_limit": 0, "start_time": 0, "energy_nJ/cmos45-fp32": energy}

    rows = [row("a", "nmnist [time_bins=8]", "events", 0.99, 1.0), row("b", "digits", "static", 0.90, 5.0),
            row("c", "nmnist [time_bins=16]", "events", 0.95, 9.0), row("d", "digits", "static", 0.80, 1.0)]
    lb = leaderboard(RunTable(pd.DataFrame(rows), "e", "sqlite://"), ["cmos45-fp32"], "cmos45-fp32")
    assert lb["model"].tolist() == ["b", "d", "a", "c"]  # images first, each block by accuracy
    assert lb["data"].tolist() == ["static", "static", "events", "events"]
    # each binning is its own data set: c is on its own front although a beats it on both counts
    assert lb["pareto"].tolist() == ["★", "★", "★", "★"]


@pytest.mark.parametrize("method,sets,refusal", [
    ("ttfs", (), "ttfs cannot take event data"),
    ("sharpen", (), "sharpen cannot take event data"),
    ("rate", ("timesteps=64",), r"T is the 4 frames of nmnist; --set timesteps=64 differs.*--time-bins 64"),
    ("surrogate", ("encoding=poisson",), "nmnist is event data, which enters as its frames"),
])
def test_a_method_that_cannot_take_the_events_says_so_before_any_run_opens(method, sets, refusal, tmp_path, capsys):
    write_nmnist(tmp_path)
    argv = ["run", "--method", method, "--dataset", "nmnist", "--data-dir", str(tmp_path), "--time-bins", "4"]
    for s in sets:
        argv += ["--set", s]
    code, out = _cli(argv, capsys)
    assert code == 2 and "Traceback" not in out.err
    assert __import__("re").search(refusal, out.err), out.err
    assert _runs()[1] == []


def test_events_on_static_data_are_refused(capsys):
    code, out = _cli(["run", "--method", "surrogate", "--dataset", "digits", "--set", "encoding=events"], capsys)
    assert code == 2 and "encoding=events needs event data" in out.err
    code, out = _cli(["run", "--method", "rate", "--dataset", "digits", "--time-bins", "8"], capsys)
    assert code == 2 and "digits is not an event data set" in out.err


def test_prune_then_rate_runs_on_the_frames(tmp_path, capsys):
    write_nmnist(tmp_path, per_class=(6, 2))
    code, out = _cli(["run", "--method", "prune+rate", "--model", "dnn5", "--dataset", "nmnist", "--data-dir",
                      str(tmp_path), "--time-bins", "6", "--epochs", "1", "--set", "prune.epochs=1",
                      "--no-progress", "-o", "r.json"], capsys)
    assert code == 0, out.err
    m = json.loads((tmp_path / "r.json").read_text())["metrics"]
    assert m["timesteps"] == 6 and m["input_events"] > 0
    assert 0 < m["input_synops"] <= m["input_events"] * 128 and m["connection_sparsity"] > 0.3


@pytest.fixture(scope="module")
def dvs_cache(tmp_path_factory):
    """mnist-5k-dvs's frames, simulated and binned once for the module."""
    root = tmp_path_factory.mktemp("dvs-cache")
    old = os.environ.get("HARNESS_CACHE_DIR")
    os.environ["HARNESS_CACHE_DIR"] = str(root)
    try:
        from harness.datasets import load_dataset

        ds = load_dataset("mnist-5k-dvs")
    finally:
        if old is None:
            del os.environ["HARNESS_CACHE_DIR"]
        else:
            os.environ["HARNESS_CACHE_DIR"] = old
    return root, ds


def test_rate_on_the_offline_event_set_is_driven_by_its_events(dvs_cache, tmp_path, capsys):
    root, ds = dvs_cache
    shutil.copytree(root / "frames", os.path.join(os.environ["HARNESS_CACHE_DIR"], "frames"))
    assert ds.split_sizes == {"train": 3600, "val": 400, "test": 1000} and ds.time_bins == 8
    (tmp_path / "run.yaml").write_text("eval_limit: 200\n")
    code, out = _cli(["run", "--config", "run.yaml", "--method", "rate", "--dataset", "mnist-5k-dvs", "--model", "dnn5",
                      "--epochs", "2", "--no-progress", "-o", "r.json"], capsys)
    assert code == 0, out.err
    rec = json.loads((tmp_path / "r.json").read_text())
    m = rec["metrics"]
    events = ds.frames["test"][:200].reshape(200, -1).sum(1, dtype=np.int64).mean()
    assert m["timesteps"] == 8 and m["input_events"] == pytest.approx(events, rel=1e-12)
    assert m["input_synops"] == pytest.approx(events * 128, rel=1e-12) and m["macs"] == 0
    assert m["test/accuracy"] > 0.5  # ten classes: far above chance after two epochs
    assert rec["dataset"]["version"] == ds.version


def test_a_study_on_event_data_leaves_t_to_the_binning():
    import optuna
    from harness.methods import resolve
    from harness.studies.trial import trial_sets

    classes = resolve("surrogate")
    trial = optuna.trial.FixedTrial({"timesteps": 3, "surrogate": "arctan", "width": 0.5, "height": 2.0, "tau": 3.0})
    assert trial_sets(trial, classes, {}, {})["timesteps"] == "3"
    sets = trial_sets(trial, classes, {}, {}, events=True)
    assert "timesteps" not in sets and sets["surrogate"] == "arctan" and sets["tau"] == "3.0"


def test_ls_datasets_lists_the_event_sets(capsys):
    code, out = _cli(["ls", "datasets"], capsys)
    listed = {line.split()[0]: line for line in out.out.splitlines()}
    assert code == 0
    for name in ("mnist-5k-dvs", "nmnist", "dvs-gesture", "shd"):
        assert "events:" in listed[name]
