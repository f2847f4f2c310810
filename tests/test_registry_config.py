from dataclasses import dataclass
from typing import Literal

import pytest
from harness.config import Params, RunConfig, param, parse_sets
from harness.errors import ConfigError, UnknownNameError
from harness.registry import Registry


def test_registry_lazy_and_decorator():
    reg = Registry("thing")
    reg.lazy("json-dumps", "json:dumps", "serialise")

    @reg.register("double", "times two")
    def double(x):
        return 2 * x

    assert reg.names() == ["json-dumps", "double"]
    assert reg.get("double")(3) == 6
    assert reg.get("json-dumps")([1]) == "[1]"
    assert dict(reg.items()) == {"json-dumps": "serialise", "double": "times two"}
    from harness.registry import RegistryError

    with pytest.raises(RegistryError, match="'double' is registered twice"):
        reg.register("double")(double)


def test_unknown_name_suggests_close_matches():
    reg = Registry("method")
    for n in ("ttfs", "rate", "layer-scaling"):
        reg.lazy(n, "json:dumps", "")
    with pytest.raises(UnknownNameError) as err:
        reg.get("tfs")
    msg = str(err.value)
    assert "unknown method 'tfs'" in msg and "Did you mean 'ttfs'" in msg
    assert "Valid: layer-scaling, rate, ttfs" in msg


@dataclass(frozen=True)
class Demo(Params):
    timesteps: int = param(32, "T", low=1)
    percentile: float = param(99.9, "calibration percentile", low=0, low_open=True, high=100)
    synapse: float | None = param(None, "tau", low=0)
    mode: Literal["max", "percentile"] = param("max", "normalisation")
    scales: tuple[float, ...] = param((), "per-layer scales", low=0, low_open=True)
    flag: bool = param(False, "a switch")


def test_params_parse_and_validate():
    p = Demo.from_strings({"timesteps": "64", "synapse": "0.005", "mode": "percentile",
                           "scales": "1,2.5", "flag": "yes"})
    assert (p.timesteps, p.synapse, p.mode, p.scales, p.flag) == (64, 0.005, "percentile", (1.0, 2.5), True)
    assert Demo.from_strings({"synapse": "none"}).synapse is None


@pytest.mark.parametrize("key,value,expect", [
    ("timesteps", "0", "timesteps=0 is out of range; valid range is [1, inf)"),
    ("percentile", "0", "valid range is (0, 100]"),
    ("percentile", "100.5", "valid range is (0, 100]"),
    ("synapse", "-1", "synapse=-1 is out of range"),
    ("timesteps", "abc", "expected int"),
    ("scales", "1,0", "valid range is (0, inf)"),
    ("scales", "1,inf", "scales=inf: must be finite; valid range is (0, inf)"),
    ("percentile", "-inf", "percentile=-inf: must be finite"),
    ("synapse", "inf", "synapse=inf: must be finite; valid range is [0, inf)"),
])
def test_params_errors_name_parameter_and_range(key, value, expect):
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        Demo.from_strings({key: value})


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UnknownNameError) as err:
        Demo.from_strings({"timestep": "3"}, owner="rate")
    assert "Did you mean 'timesteps'" in str(err.value)
    assert "flag, mode, percentile, scales, synapse, timesteps" in str(err.value)
    with pytest.raises(UnknownNameError, match="Did you mean 'percentile'"):
        Demo.from_strings({"mode": "percentil"})


def test_describe_rows():
    rows = {r["key"]: r for r in Demo.describe()}
    assert rows["percentile"]["range"] == "(0, 100]"
    assert rows["mode"]["type"] == "max|percentile"


def test_parse_sets():
    assert parse_sets(["a=1", " b = x=y "]) == {"a": "1", "b": "x=y"}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_sets(["novalue"])


def test_runconfig_sources(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("method: ann\ndataset: digits\nseed: 3\nset:\n  timesteps: 64\n")
    cfg = RunConfig.build(y, seed=5, model=None)
    assert (cfg.method, cfg.dataset, cfg.seed) == ("ann", "digits", 5)  # kwargs override YAML
    assert cfg.method_sets == {"timesteps": "64"}
    assert RunConfig(method="ann").dataset == "mnist-5k"
    with pytest.raises(UnknownNameError, match="Did you mean 'epochs'"):
        RunConfig.build(epoch=3)
    with pytest.raises(ConfigError, match="seed=-1 is out of range"):
        RunConfig.build(seed=-1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping of run settings"):
        RunConfig.build(bad)
    assert RunConfig.build(epochs=2, lr=0.01).train_config().as_dict()["epochs"] == 2


@pytest.mark.parametrize("method,key", [("rate", "scale_firing_rates"), ("ttfs", "x_max"), ("rate", "dt")])
def test_infinity_is_refused_where_a_range_is_open_ended(method, key):
    from harness.methods import METHODS

    with pytest.raises(ConfigError, match=f"{key}=inf: must be finite"):
        METHODS.get(method).Params.from_strings({key: "inf"})


@pytest.mark.parametrize("line,expect", [
    ("epochs: true", "epochs=True: expected int or none, got bool"),
    ("epochs: ten", "epochs='ten': expected int or none, got str"),
    ("epochs: 1.5", "epochs=1.5: expected int or none, got float"),
    ("seed: abc", "seed='abc': expected int, got str"),
    ("batch_size: 3.7", "batch_size=3.7: expected int, got float"),
    ("track: 1", "track=1: expected bool, got int"),
    ("lr: .inf", "lr=inf: must be finite"),
    ("set: 7", "set: expected a mapping"),
])
def test_yaml_values_are_type_checked_before_any_work(tmp_path, line, expect):
    y = tmp_path / "run.yaml"
    y.write_text(f"method: ann\ndataset: digits\n{line}\n")
    with pytest.raises(ConfigError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        RunConfig.build(y)


def test_yaml_set_as_one_string_is_one_setting(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text('method: rate\nset: "timesteps=8"\n')
    assert RunConfig.build(y).method_sets == {"timesteps": "8"}


def test_an_empty_test_split_is_refused():
    import numpy as np
    from harness.datasets.base import make_dataset
    from harness.errors import DataError

    x, y = np.zeros((20, 1, 4, 4), np.float32), np.arange(20) % 2
    with pytest.raises(DataError, match="the test split is empty"):
        make_dataset("tiny", "v", x, y, x[:0], y[:0], num_classes=2, source="test")


def test_yaml_set_and_set_flags_merge_key_by_key(tmp_path):
    # a --set flag used to replace the file's whole set: mapping (scale_firing_rates and neuron lost)
    y = tmp_path / "run.yaml"
    y.write_text("method: rate\nset: {timesteps: 32, scale_firing_rates: 2, neuron: lif}\n")
    cfg = RunConfig.build(y, sets=("timesteps=24",))
    assert cfg.method_sets == {"timesteps": "24", "scale_firing_rates": "2", "neuron": "lif"}
    assert len(cfg.sets) == 3  # one entry per key, not the file's and the flag's both
    assert RunConfig.build(y, sets=("timesteps=24", "timesteps=16")).method_sets["timesteps"] == "16"


def test_the_default_ann_training_takes_at_least_800_steps_on_a_small_split():
    from harness.config import default_epochs

    assert default_epochs(1295, 64) == 39  # digits: 21 batches per epoch, 39 x 21 = 819 >= 800 > 38 x 21
    assert default_epochs(1295, 32) == 20  # 41 batches: 20 x 41 = 820
    assert default_epochs(3600, 64) == 15  # mnist-5k: 15 x 57 = 855 steps already
    assert default_epochs(54000, 64) == 15
    assert default_epochs(64, 64) == 100  # one batch: capped


def test_a_run_without_epochs_trains_the_ann_for_the_data_sets_default(quick):
    from harness.runner import run

    res = run(quick(method="surrogate", model="dnn5", epochs=None, batch_size=64, baseline=False,
                    sets=("epochs=1", "timesteps=2")))
    assert res.config["train"]["epochs"] == 39  # digits; recorded, so the run name's digest and cache key see it
    assert run(quick(method="surrogate", model="dnn5", epochs=7, baseline=False,
                     sets=("epochs=1", "timesteps=2"))).config["train"]["epochs"] == 7


@dataclass(frozen=True)
class Edges(Params):
    closed_low: float = param(1.0, "", low=0)
    open_low: float = param(1.0, "", low=0, low_open=True)
    closed_high: float = param(0.0, "", high=1)
    open_high: float = param(0.0, "", high=1, high_open=True)
    count: int = param(2, "", low=1, high=3)


@pytest.mark.parametrize("key,value,ok", [
    ("closed_low", "0", True), ("closed_low", "-1e-9", False),      # [0, inf): the bound itself is in
    ("open_low", "0", False), ("open_low", "1e-12", True),          # (0, inf): the bound is out, just above in
    ("closed_high", "1", True), ("closed_high", "1.0000001", False),
    ("open_high", "1", False), ("open_high", "0.999999", True),
    ("count", "1", True), ("count", "3", True), ("count", "0", False), ("count", "4", False),
])
def test_a_value_exactly_on_a_bound_is_in_for_closed_ranges_and_out_for_open_ones(key, value, ok):
    """Wrong variants this catches: ``<=`` for ``<`` on either bound, an open flag ignored or applied
    to the other bound."""
    if ok:
        assert getattr(Edges.from_strings({key: value}), key) == float(value)
    else:
        with pytest.raises(ConfigError, match=f"{key}={float(value):g} is out of range"):
            Edges.from_strings({key: value})


def test_ranges_are_written_with_their_brackets():
    rows = {r["key"]: r["range"] for r in Edges.describe()}
    assert rows == {"closed_low": "[0, inf)", "open_low": "(0, inf)", "closed_high": "(-inf, 1]",
                    "open_high": "(-inf, 1)", "count": "[1, 3]"}


@pytest.mark.parametrize("n,batch,epochs", [
    (1295, 64, 39),   # 21 batches (the last one partial): ceil(800 / 21) = 39
    (1280, 64, 40),   # 20 batches exactly: 40
    (1281, 64, 39),   # one image more: a 21st batch
    (64, 64, 100),    # 1 batch: 800 epochs capped at 100
    (3600, 64, 15),   # 57 batches: 15 epochs are already 855 steps
    (12_000, 64, 15),
])
def test_default_ann_epochs_reach_800_steps_on_small_splits(n, batch, epochs):
    """ceil for batches (a partial batch is a step) and for epochs, at least 15 and at most 100;
    wrong variants: floor in either place, or the bounds swapped."""
    from harness.config import default_epochs

    assert default_epochs(n, batch) == epochs
