"""The rules of the harness's smaller modules, each pinned on its edge (``docs/testing.md`` lists
every module's rules and the test of each). Each test's docstring names the wrong variants it
catches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

# ---- metrics: the schema's ranges --------------------------------------------------------------


def test_a_metric_exactly_on_its_range_passes_and_nan_or_inf_only_where_documented():
    """Ranges are closed; NaN never passes; +inf only for a spec that allows it, −inf never.
    Wrong variants: open bounds, NaN let through (NaN compares false both ways), −inf allowed."""
    from harness.metrics import SCHEMA

    acc, be = SCHEMA.spec("test/accuracy"), SCHEMA.spec("break_even_spikes_per_neuron/loihi")
    assert acc.check("test/accuracy", 0.0) is None and acc.check("test/accuracy", 1.0) is None
    assert "outside its valid range [0, 1]" in acc.check("test/accuracy", 1.0 + 1e-12)
    assert acc.check("test/accuracy", math.nan) == "test/accuracy is NaN"
    assert "not finite" in acc.check("test/accuracy", math.inf)
    assert be.check("x", math.inf) is None and "not finite" in be.check("x", -math.inf)
    assert "is not a number" in acc.check("test/accuracy", True)  # a bool is no number


def test_placeholders_match_one_path_segment_and_layers_any_name():
    """``{model}`` is one segment (no slash), ``{layer}`` any op name (dots, colons); exact keys
    win over patterns. Wrong variants: a model matching across slashes, a layer name cut at a dot."""
    from harness.metrics import SCHEMA

    assert SCHEMA.spec("energy_nJ/loihi").key == "energy_nJ/{model}"
    assert SCHEMA.spec("energy_nJ/loihi/extra") is None
    assert SCHEMA.spec("layer/layer1.0.conv1/synops").key == "layer/{layer}/synops"
    assert SCHEMA.spec("test/accuracy").key == "test/accuracy"


# ---- io, errors ----------------------------------------------------------------------------------


def test_an_atomic_write_that_fails_leaves_neither_a_file_nor_a_temporary(tmp_path):
    from harness.io import write_atomic

    target = tmp_path / "out.txt"
    target.write_text("old")

    def fail(f):
        f.write("half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("url,shown", [
    ("postgresql://user:secret@host:5432/db", "postgresql://user:***@host:5432/db"),
    ("postgresql://user@host/db", "postgresql://user@host/db"),  # no password: unchanged
    ("sqlite:///a/b.db", "sqlite:///a/b.db"),
    ("mysql://u:p:q@h/d", "mysql://u:***@h/d"),  # a colon in the password
])
def test_a_url_is_shown_without_its_password(url, shown):
    from harness.io import redact_url

    assert redact_url(url) == shown


def test_did_you_mean_offers_close_names_only():
    from harness.errors import UnknownNameError

    msg = str(UnknownNameError("method", "tffs", ["ttfs", "rate", "ann"]))
    assert msg == "unknown method 'tffs'. Did you mean 'ttfs'? Valid: ann, rate, ttfs."
    assert "Did you mean" not in str(UnknownNameError("method", "zzzz", ["ttfs", "rate"]))


# ---- graph: naming and what counts as what ----------------------------------------------------------


class Names(nn.Module):
    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.act(self.fc1(x))
        h = self.act(h + h)  # the same module called again; a function at the top level
        return self.fc2(torch.relu(h))


def test_op_names_follow_module_paths_and_number_later_calls():
    """A module called twice gets ``_1`` on its second call; a top-level function keeps fx's node
    name. Wrong variants: numbering from the first call, two ops with one name."""
    from harness.graph import trace

    names = [op.name for op in trace(Names(), (4,))]
    assert names == ["x", "fc1", "act", "add", "act_1", "relu", "fc2", "output"]


class Reshapes(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        h = torch.relu(self.c(x))
        a = h.view(h.size(0), -1)        # a flatten from dim 1
        b = torch.flatten(h, 0)          # not: it mixes the batch in
        _ = b
        return self.fc(a * 2.0)          # scaling by a constant


def test_view_and_flatten_count_as_flatten_only_from_dim_1():
    """Wrong variants: any view taken as a flatten, torch.flatten from dim 0 accepted."""
    from harness.graph import Kind, trace

    g = trace(Reshapes(), (1, 4, 4))
    kinds = {op.what: op.kind for op in g if op.kind not in (Kind.INPUT, Kind.OUTPUT, Kind.SHAPE)}
    assert kinds["Tensor.view"] == Kind.FLATTEN
    assert kinds["torch.flatten (not a flatten from dim 1)"] == Kind.OTHER
    assert kinds["operator.mul"] == Kind.SCALE


def test_free_target_numbers_names_already_taken():
    from harness.graph import free_target, install

    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(2, 2)))
    assert free_target(gm, "extra") == "extra"
    install(gm, "extra", nn.Identity())
    install(gm, "extra_1", nn.Identity())
    assert free_target(gm, "extra") == "extra_2" and free_target(gm, "0") == "0_1"


# ---- models: the seeds' networks adapted to small images -------------------------------------------


@pytest.mark.parametrize("side,kernel", [(28, 11), (32, 11), (8, 3), (16, 6), (12, 5)])
def test_stpu_cnn_keeps_its_kernels_share_of_the_image(side, kernel):
    """The seed's 11x11 kernel spans 11/28 of an MNIST image; smaller images keep that share,
    rounded, at least 3. Wrong variants: floor for round, the kernel clipped to the image."""
    from harness.models import build_model

    assert build_model("stpu-cnn", (1, side, side), 10).conv1.kernel_size == (kernel, kernel)


def test_pooling_is_skipped_where_it_would_leave_less_than_2x2():
    """cnn7 pools a map only while it is at least 4x4: 8x8 digits keep a 2x2 map (3 pools would
    leave 1x1). Wrong variant: ``> 4`` for ``>= 4``."""
    from harness.models import build_model

    net = build_model("cnn7", (1, 8, 8), 10)
    pools = [n for n, _ in net.named_children() if n.startswith("pool")]
    assert pools == ["pool1", "pool2"] and net.fc_out.in_features == 64 * 2 * 2


# ---- datasets: the fixed stratified split -------------------------------------------------------------


def test_a_stratified_split_holds_out_the_rounded_fraction_of_every_class():
    """round(n_c · fraction) per class, disjoint, covering everything, fixed by the seed. Wrong
    variants: floor for round, the fraction taken of the whole set (classes unbalanced)."""
    from harness.datasets.base import stratified_split

    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    keep, held = stratified_split(y, 0.5, seed=0)
    assert sorted(np.bincount(y[held]).tolist()) == [2, 2, 5]  # round(5), round(2.5) = 2, round(1.5) = 2
    assert sorted(np.concatenate([keep, held]).tolist()) == list(range(18))
    again, _ = stratified_split(y, 0.5, seed=0)
    assert np.array_equal(keep, again)


# ---- runner: routing parameters, merging results ------------------------------------------------------


def test_set_values_go_to_the_last_method_unless_addressed():
    from harness.errors import UnknownNameError
    from harness.methods import resolve
    from harness.runner import split_sets

    classes = resolve("prune+ttfs")
    assert split_sets({"t_max": "8", "prune.epochs": "2"}, classes) == [{"epochs": "2"}, {"t_max": "8"}]
    with pytest.raises(UnknownNameError, match="unknown method in --set 'rate.timesteps'"):
        split_sets({"rate.timesteps": "8"}, classes)


def test_a_metric_written_twice_is_an_invariant_broken_not_an_overwrite():
    from harness.errors import InvariantError
    from harness.runner import merge

    into = {"a": 1.0}
    merge(into, {"b": 2.0}, "x", "run")
    assert into == {"a": 1.0, "b": 2.0}
    with pytest.raises(InvariantError, match="y wrote 'a', which is already set"):
        merge(into, {"a": 3.0}, "y", "run")
    assert into["a"] == 1.0


def test_a_test_limit_caps_what_a_method_asks_for():
    """``eval_limit`` is a cap: a method asking for fewer test images gets fewer, for more gets the
    cap. Wrong variants: max for min, the method's request ignored."""
    from types import SimpleNamespace

    from harness.api import RunContext
    from harness.config import RunConfig

    seen = {}
    ds = SimpleNamespace(loader=lambda split, bs, shuffle, seed, limit: seen.update(split=split, limit=limit))
    ctx = RunContext(RunConfig(eval_limit=50), ds, "m", "cpu", RunConfig().train_config(), None, None, None,
                     None, None)
    for asked, got in ((None, 50), (20, 20), (80, 50)):
        ctx.loader("test", limit=asked)
        assert seen["limit"] == got
    ctx.loader("train", limit=80)
    assert seen["limit"] == 80  # the cap is for the test split only


# ---- tracking -----------------------------------------------------------------------------------------


def test_tracking_settings_come_from_the_environment_over_the_file_over_the_defaults(tmp_path, monkeypatch):
    from harness.tracking import TrackingSettings

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp_path / "mlflow.yaml"
    cfg.write_text("tracking_uri: sqlite:///from-file.db\nexperiment: from-file\n")
    s = TrackingSettings.load(cfg)
    assert (s.tracking_uri, s.experiment) == ("sqlite:///from-file.db", "from-file")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "env-exp")
    s = TrackingSettings.load(cfg)
    assert (s.tracking_uri, s.experiment) == ("sqlite:///from-env.db", "env-exp")
    assert TrackingSettings.load(cfg, experiment="flag").experiment == "flag"  # --experiment wins
    assert TrackingSettings.load(tmp_path / "none.yaml").artifact_location.startswith("file://")


# ---- firing-rate fits -----------------------------------------------------------------------------------


def test_the_firing_rate_summary_by_hand():
    """Percentiles, the silent fraction, and the fit left out of silent neurons; a layer too small
    to fit says so. Wrong variants: silent neurons fitted, the silent fraction of firing ones."""
    from harness.firing import fit_distribution, summarize

    rates = np.array([0.0, 0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    row = summarize("l", rates)
    assert row["silent_fraction"] == 0.25 and row["median_hz"] == 25.0 and row["max_hz"] == 60.0
    assert row["neurons"] == 8 and row["mean_hz"] == pytest.approx(26.25)
    assert fit_distribution(np.array([0.0, 1.0, 2.0]))["fit"] == "none"  # 2 firing neurons: no fit
    rng = np.random.default_rng(0)
    assert fit_distribution(rng.exponential(5.0, 4000))["fit"] in ("expon", "gamma")
