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
    with pytest.raises(UnknownNameError, match=r"unknown method in --set 'rate\.timesteps'"):
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


# ---- report text, run tables, config names, the contract's defaults ----------------------------


def test_markdown_text_from_runs_is_inert():
    """Wrong variants: an ampersand left raw (``&lt;`` typed by a user would render as ``<``), an
    escape applied twice, a Markdown special left active."""
    from harness.analysis.report import _md_escape

    assert _md_escape("a & b <i>x</i>") == "a &amp; b &lt;i&gt;x&lt;/i&gt;"
    assert _md_escape("&lt;") == "&amp;lt;"
    assert _md_escape("x|y*z_[l](u)#`\\") == "x\\|y\\*z\\_\\[l\\](u)\\#\\`\\\\"


def test_html_table_headers_say_the_better_direction_only_where_there_is_one():
    """Wrong variants: a column without a direction given an arrow or a title (``None`` or
    "better: lower" for a column nobody ranks), max and min swapped."""
    import pandas as pd
    from harness.analysis.report import _table_html

    out = _table_html(pd.DataFrame({"acc": [0.5], "energy": [2.0], "model": ["m"]}), "t",
                      directions={"acc": "max", "energy": "min"})
    assert '<th title="better: higher">acc ↑</th>' in out and '<th title="better: lower">energy ↓</th>' in out
    assert "<th>model</th>" in out and "None" not in out


def test_an_artifact_can_be_fetched_twice_from_one_run():
    """Wrong variant: the run's download folder made with exist_ok=False (the second figure of a
    run would find no file and be left out of the report)."""
    from pathlib import Path

    import pandas as pd
    from harness.analysis.runs import RunTable

    class Client:
        def download_artifacts(self, run_id, name, dst):
            p = Path(dst) / name
            p.write_text(f"{run_id}/{name}")
            return str(p)

    runs = RunTable(pd.DataFrame(), "e", "sqlite://", client=Client())
    a, b = runs.artifact("r1", "a.json"), runs.artifact("r1", "b.json")
    assert a is not None and b is not None and b.read_text() == "r1/b.json" and a.parent == b.parent


def test_config_type_names_say_tuples_literals_and_optionals():
    """Wrong variants: a tuple named without its item type, a Literal's choices lost, an optional
    not said to accept none."""
    from typing import Literal, Optional

    from harness.config import _type_name

    assert _type_name(tuple[int, ...]) == "int,..."
    assert _type_name(Optional[Literal["a", "b"]]) == "a|b or none"  # noqa: UP045 - what dataclasses hold
    assert _type_name(float) == "float"


def test_an_evaluable_without_a_single_step_form_says_which_one():
    """Wrong variant: the refusal without the class's name (the run's NIR note would say nothing)."""
    from harness.api import Evaluable
    from harness.errors import NirUnsupported

    class Mine(Evaluable):
        def run_batch(self, x, T, meters):  # pragma: no cover - not called
            raise AssertionError

        def tensors(self):  # pragma: no cover - not called
            return {}

    with pytest.raises(NirUnsupported, match=r"^Mine does not describe a single-step SpikingJelly form$"):
        object.__new__(Mine).single_step()


def test_the_study_command_prints_states_retries_and_the_front_and_exits_0(monkeypatch, capsys):
    """The CLI's study summary from a given StudySummary (no trials run). Wrong variants: a failed
    exit code for a finished study, a retry named without the trial it repeats, states miscounted,
    the single-objective label for a Pareto front."""
    import harness.studies
    from harness.cli import main
    from harness.studies.spec import StudySummary

    trials = [{"number": 0, "state": "COMPLETE"}, {"number": 1, "state": "FAIL"},
              {"number": 2, "state": "COMPLETE", "retry_of": 1}, {"number": 3, "state": "PRUNED"}]
    summary = StudySummary(study_name="s", storage="sqlite:///o.db", objectives=["test/accuracy", "spikes_per_neuron"],
                           trials=trials, best=[{"number": 2, "values": [0.5, 0.125], "params": {"t_max": 16}}],
                           reevaluated=[], parent_run_id="p1", tracking_uri="sqlite:///m.db", wall_s=3.25,
                           recovered=[1])
    monkeypatch.setattr(harness.studies, "run_study", lambda scfg: summary)
    assert main(["study", "--method", "ttfs", "--dataset", "digits", "--trials", "4", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "study s (sqlite:///o.db): 2 complete, 1 fail, 1 pruned; 3.2 s"
    assert out[1] == "  trials of a dead worker, failed and re-queued: [1]"
    assert out[2] == "  retries: #2 of #1 (complete)"
    assert out[3] == "  Pareto front (test/accuracy, spikes_per_neuron):"
    assert out[4] == "    #2    [0.5, 0.125]  t_max=16"


def test_the_python_api_passes_every_argument_on_as_the_cli_would(monkeypatch):
    """``harness.run`` / ``harness.study`` build the same configs as the command line (runner and
    study faked: nothing trains). Wrong variants: a dropped argument (seed, track, progress, a
    setting, the study's sampler, trials or re-evaluation), ``__`` not turned into a chain's ``.``,
    objects passed as names or names as objects, the grid's values not formatted like --set."""
    import harness
    import harness.runner
    import harness.studies

    seen = {}
    monkeypatch.setattr(harness.runner, "run", lambda cfg, model, dataset: seen.update(cfg=cfg, model=model,
                                                                                       dataset=dataset) or "res")
    net = nn.Linear(2, 2)
    assert harness.run("prune+rate", model=net, dataset="digits", seed=3, track=False, progress=False,
                       settings={"epochs": 2}, prune__final_sparsity=0.5, timesteps=16) == "res"
    cfg = seen["cfg"]
    assert (cfg.method, cfg.dataset, cfg.seed, cfg.track, cfg.progress, cfg.epochs) == ("prune+rate", "digits", 3,
                                                                                      False, False, 2)
    assert cfg.sets == ("prune.final_sparsity=0.5", "timesteps=16")
    assert seen["model"] is net and seen["dataset"] is None
    harness.run("ann", model="cnn7", weights="w.pt")
    assert seen["cfg"].model == "cnn7" and seen["model"] is None and seen["cfg"].weights == "w.pt"
    assert seen["cfg"].track is True and seen["cfg"].progress is True and seen["cfg"].seed == 0

    monkeypatch.setattr(harness.studies, "run_study", lambda scfg: seen.update(scfg=scfg) or "summary")
    data = (([0], [0]), ([0], [0]))
    assert harness.study("rate", trials=5, objectives=["test/accuracy:max", "spikes_per_neuron:min"],
                         model="cnn7", dataset=data, grid={"timesteps": [8, 16]}, storage="journal:j.log",
                         study_name="s", n_jobs=2, eval_limit=100, reevaluate=1, seed=4, progress=False,
                         v_init=0.5) == "summary"
    s = seen["scfg"]
    assert (s.trials, s.sampler, s.grid, s.storage, s.study_name, s.n_jobs, s.reevaluate, s.progress) == (
        5, "grid", {"timesteps": ["8", "16"]}, "journal:j.log", "s", 2, 1, False)
    assert [str(o) for o in s.objectives] == ["test/accuracy:max", "spikes_per_neuron:min"]
    assert (s.run.eval_limit, s.run.seed, s.run.track, s.run.sets, s.run.model) == (100, 4, True, ("v_init=0.5",),
                                                                                    "cnn7")
    assert s.model_obj is None and s.dataset_obj is data
    harness.study("rate", trials=2)
    assert seen["scfg"].sampler == "tpe" and seen["scfg"].grid == {}


SEARCH_SPACES = {  # what `harness study` samples per method (a change here changes every study): range or choices
    "rate": {"timesteps": (16, 32, 64, 128), "scale_firing_rates": (0.5, 100, "log"),
             "synapse": (1e-4, 0.05, "log"), "use_synapse": (False, True), "percentile": (99.0, 100.0),
             "v_init": (0.0, 0.5)},
    "prune": {"final_sparsity": (0.0, 0.95)},
    "surrogate": {"timesteps": (1, 8), "surrogate": ("triangle", "fast-sigmoid", "arctan", "sigmoid"),
                  "width": (0.1, 4.0, "log"), "height": (0.1, 4.0, "log"), "tau": (1.5, 10.0)},
    "sharpen": {"activation": ("brelu", "sigmoid"), "bottom_up": (True, False), "n_hot": (1, 4, 10),
                "optimizer": ("adam", "rmsprop"), "batchnorm": (False, True)},
    "ttfs": {"t_max": (8, 16, 32, 64, 128), "percentile": (99.0, 100.0), "threshold_scale": (0.5, 1.5)},
}
SEARCH_SPACES["layer-scaling"] = {**SEARCH_SPACES["rate"], "boost": (1.5, 16, "log")}
SEARCH_SPACES["qcfs"] = {"timesteps": (2, 4, 8, 16, 32), "levels": (2, 4, 8, 16), "lr": (1e-4, 3e-3, "log")}


class _Picking:
    """An Optuna trial that answers every suggestion with one end of its range (or choices) and
    records what was asked."""

    def __init__(self, end: int):
        self.end, self.asked = end, {}

    def suggest_float(self, name, low, high, log=False, step=None):
        self.asked[name] = (low, high, "log") if log else (low, high)
        return (low, high)[self.end]

    def suggest_int(self, name, low, high, log=False, step=1):
        self.asked[name] = (low, high)
        return (low, high)[self.end]

    def suggest_categorical(self, name, choices):
        self.asked[name] = tuple(choices)
        return choices[self.end]


@pytest.mark.parametrize("method", sorted(SEARCH_SPACES))
@pytest.mark.parametrize("end", [0, -1])
def test_each_method_searches_its_documented_space_and_uses_what_was_sampled(method, end):
    """Wrong variants: a parameter dropped from the space (its default used in every trial), a
    range or a log scale changed, a sampled value not passed to the method's parameters."""
    from harness.methods import METHODS

    trial = _Picking(end)
    params = METHODS.get(method).search_space(trial)
    assert trial.asked == SEARCH_SPACES[method]
    def picked(space):  # a range's end or the first/last choice: what _Picking answered
        return (space[:2] if space[-1] == "log" else space)[end]

    for name, space in SEARCH_SPACES[method].items():
        if name == "use_synapse":
            continue
        want = picked(space)
        if name == "synapse":  # sampled, and used only where use_synapse says so
            want = want if picked(SEARCH_SPACES[method]["use_synapse"]) else None
        assert getattr(params, name) == want, name


# ---- rules found by make mutation's survivors ----------------------------------------------------


def test_a_module_average_pool_in_ceil_mode_sums_its_last_partial_window():
    """Wrong variant: ceil_mode dropped for pooling modules (the functional form had a test; the
    module lost its last row and column of windows)."""
    from harness.graph import trace
    from harness.graph.events import sum_pool

    net = nn.Sequential(nn.AvgPool2d(2, ceil_mode=True))
    op = [o for o in trace(net, (1, 5, 5)) if o.module is not None][0]
    x = torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)
    out = sum_pool(op, x)
    assert out.shape == (1, 1, 3, 3)
    assert out[0, 0, 2, 2].item() == 24.0 and out[0, 0, 0, 2].item() == 4.0 + 9.0  # partial windows: 1 and 2 cells


def test_a_torch_file_is_told_from_a_file_of_another_kind_by_its_first_bytes():
    """Wrong variant: both signatures required at once (every torch file would be "not a torch file")."""
    from harness.inputs import _not_torch

    assert _not_torch(b"PK\x03\x04rest") is False and _not_torch(b"\x80\x02rest") is False
    assert _not_torch(b"text") is True and _not_torch(b"") is True


def test_a_method_whose_params_are_not_a_params_dataclass_is_refused_at_definition():
    from dataclasses import dataclass

    from harness.api import Method

    @dataclass
    class Plain:
        x: int = 1

    with pytest.raises(TypeError, match=r"^Bad\.Params must be a harness\.config\.Params dataclass$"):
        class Bad(Method):
            name = "bad"
            Params = Plain

            def prepare(self, ctx, ann, params):  # pragma: no cover - never called
                raise AssertionError


def test_a_result_record_carries_its_schema():
    """Wrong variant: the schema under another key (readers of --output-json check ``schema``)."""
    from harness.api import RESULT_SCHEMA, RunResult

    res = RunResult(method="rate", model="cnn7", dataset={"name": "digits", "version": "v"}, seed=0, params={},
                    config={}, metrics={"test/accuracy": 0.5}, layers=[], step_metrics={}, provenance={})
    rec = res.to_record()
    assert rec["schema"] == RESULT_SCHEMA and RESULT_SCHEMA.startswith("snn-harness/") and rec["method"] == "rate"


def test_the_schema_says_which_direction_is_better():
    """Wrong variant: a spec's ``better`` dropped (the report's arrows and the leaderboard's
    cheaper-of-equals rule read it)."""
    from harness.metrics import SCHEMA

    assert SCHEMA.spec("test/accuracy").better == "max" and SCHEMA.spec("spikes_per_neuron").better == "min"
    assert SCHEMA.spec("synops").better == "min"


def test_a_lazy_registry_entry_without_a_colon_is_refused_saying_the_form():
    from harness.registry import Registry, RegistryError

    with pytest.raises(RegistryError, match=r"lazy entry 'harness\.methods\.rate' must look like 'module:attr'"):
        Registry("thing").lazy("x", "harness.methods.rate", "help")


def test_a_data_directorys_digests_are_memoised_by_name_size_and_mtime(tmp_path, monkeypatch):
    """Wrong variants: the memo hit on a mismatch (a changed file keeps its old digest), the memo
    written without the digest (every run hashes again)."""
    import hashlib
    import os

    from harness.datasets import base, download

    f = tmp_path / "data.bin"
    f.write_bytes(b"abcd")
    first = base.files_digest([f])
    monkeypatch.setattr(download, "sha256_file", lambda p: (_ for _ in ()).throw(AssertionError("hashed again")))
    assert base.files_digest([f]) == first  # from the memo
    monkeypatch.undo()
    f.write_bytes(b"wxyz")  # same size; another mtime
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = base.files_digest([f])
    assert changed != first
    assert base.files_digest([f]) == changed
    want = hashlib.sha256(b"wxyz").hexdigest()
    memo = base._read_memo(tmp_path / base.DIGEST_FILE)[str(f.resolve())]
    assert memo[3] == want and memo[:2] == ["data.bin", 4]


def test_accepting_methods_skip_a_broken_plugin_and_name_the_rest(monkeypatch, caplog):
    """Wrong variants: a broken plug-in ending the search (``break``), its warning not naming it."""
    import logging

    from harness.graph import trace
    from harness.methods import METHODS, accepting_methods

    names = ["broken-first", *METHODS.names()]
    real_get = METHODS.get

    def get(name):
        if name == "broken-first":
            raise ImportError("no such module")
        return real_get(name)

    monkeypatch.setattr(METHODS, "names", lambda: names)
    monkeypatch.setattr(METHODS, "get", get)
    graph = trace(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), (4,))
    with caplog.at_level(logging.WARNING, logger="harness.methods"):
        found = accepting_methods(graph, graph["1"], exclude="none")
    assert [r.getMessage() for r in caplog.records] == ["method broken-first could not be loaded: no such module"]
    assert {"rate", "ttfs", "surrogate"} <= set(found)


def test_provenance_tags_carry_the_commit_and_every_package_version():
    """Wrong variant: the commit read under another key (every run tagged ``unknown``)."""
    from types import SimpleNamespace

    from harness.tracking import provenance_tags

    res = SimpleNamespace(provenance={"git_commit": "abc123", "device": "cpu", "harness_version": "1.0",
                                      "versions": {"torch": "2.13.0"}}, seed=4,
                          dataset={"version": "v1"}, method="rate")
    assert provenance_tags(res) == {"git_commit": "abc123", "seed": 4, "device": "cpu", "harness_version": "1.0",
                                    "dataset_version": "v1", "method": "rate", "version.torch": "2.13.0",
                                    "processes": 1}  # a record without it ran in one process


def test_a_tracking_server_is_probed_at_its_health_endpoint(monkeypatch):
    """Wrong variant: another path (MLflow answers /health; anything else is a 404 from a real
    server, read as "is it an MLflow server?")."""
    import urllib.request

    from harness.tracking import _probe_server

    asked = []

    class Resp:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self, n):
            return b"OK"

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: asked.append(url) or Resp())
    _probe_server("http://mlflow:5000/")
    assert asked == ["http://mlflow:5000/health"]


def test_an_invariant_error_keeps_its_problems_and_says_how_many():
    from harness.errors import InvariantError

    one = InvariantError("rate on digits", ["synops above capacity"])
    assert one.problems == ["synops above capacity"] and one.exit_code == 3
    assert str(one) == ("rate on digits broke 1 invariant (a bug in the method or the harness; nothing was logged): "
                        "synops above capacity")
    many = InvariantError("x", [f"p{i}" for i in range(8)])
    assert str(many).startswith("x broke 8 invariants (") and str(many).endswith("p0; p1; p2; p3; p4; p5")


def test_the_ann_cache_key_changes_with_the_seed_and_nothing_else_of_it():
    """Wrong variant: the seed left out of the key (runs of two seeds would share one ANN)."""
    from types import SimpleNamespace

    from harness.ann_cache import ann_cache_key
    from harness.config import RunConfig
    from harness.datasets import load_dataset

    ds = load_dataset("digits")

    graph = SimpleNamespace(fingerprint=lambda: "arch")
    train = RunConfig.build(dataset="digits", track=False)

    def key(seed, model="cnn7"):
        return ann_cache_key(SimpleNamespace(dataset=ds, model_name=model, graph=graph, seed=seed,
                                             train=SimpleNamespace(as_dict=lambda: {"epochs": train.epochs})))

    assert key(0) != key(1) and key(0) == key(0) and key(0) != key(0, "dnn5")


def test_calibration_takes_the_max_or_a_seeded_subsample_of_the_positive_activations():
    """Wrong variants: the max mode at another quantile, the subsample size or its generator not
    passed on (a global RNG makes λ change with unrelated random draws)."""
    from harness.calibration import calibrate_scales
    from harness.graph import trace

    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU(), nn.Linear(1, 1))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
    graph = trace(net, (1,))
    x = torch.arange(1, 1001, dtype=torch.float32).view(-1, 1)  # activations 1..1000
    assert calibrate_scales(graph, x, "max", 50.0) == {"1": 1000.0}
    full = calibrate_scales(graph, x, "percentile", 100.0)["1"]
    assert full == 1000.0
    assert calibrate_scales(graph, x, "percentile", 99.9)["1"] == pytest.approx(999.001)  # NumPy's interpolation
    torch.manual_seed(1)
    a = calibrate_scales(graph, x, "percentile", 99.9, max_values=3, seed=5)["1"]
    torch.manual_seed(2)
    b = calibrate_scales(graph, x, "percentile", 99.9, max_values=3, seed=5)["1"]
    c = calibrate_scales(graph, x, "percentile", 99.9, max_values=3, seed=6)["1"]
    assert a == b and a != c and a < 999.0  # a sample of 3 of 1000 values, drawn by the seed alone


def test_a_json_record_keeps_its_key_order_and_writes_paths_as_text(tmp_path):
    """Wrong variants: keys sorted (records read top-down: schema, then method ...), a path or a
    date refused instead of written as text."""
    import json
    from pathlib import Path

    from harness.io import write_json_atomic

    write_json_atomic({"schema": "s", "b": 1, "a": Path("/x/y")}, tmp_path / "r.json")
    text = (tmp_path / "r.json").read_text()
    assert list(json.loads(text)) == ["schema", "b", "a"] and json.loads(text)["a"] == "/x/y"


def test_a_state_dict_with_a_key_the_model_lacks_names_it_with_its_shape():
    from harness.inputs import check_state_dict

    model = nn.Linear(2, 2)
    state = {**model.state_dict(), "extra.weight": torch.zeros(3, 4)}
    with pytest.raises(Exception, match=r"'extra\.weight' \(shape \(3, 4\)\) is not a"):
        check_state_dict(model, state, "w.pt")


def test_a_study_grid_needs_the_grid_sampler():
    from harness.config import ConfigError, RunConfig
    from harness.studies import StudyConfig

    run = RunConfig.build(method="rate", dataset="digits", track=False)
    with pytest.raises(ConfigError, match="grid"):
        StudyConfig(run=run, sampler="tpe", grid={"timesteps": ["8"]}).validate(__import__(
            "harness.methods", fromlist=["resolve"]).resolve("rate"))
    StudyConfig(run=run, sampler="grid", grid={"timesteps": ["8"]}).validate(
        __import__("harness.methods", fromlist=["resolve"]).resolve("rate"))


def test_an_http_tracking_server_keeps_the_artifacts_unless_mlflow_yaml_says_otherwise(tmp_path, monkeypatch):
    """Wrong variant: ``http://`` not recognised (every worker would write artifacts to a local
    folder the server never sees)."""
    from harness.tracking import TrackingSettings

    monkeypatch.chdir(tmp_path)
    for uri in ("http://mlflow:5000", "https://mlflow.example.org"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        assert TrackingSettings.load().artifact_location is None
    (tmp_path / "mlflow.yaml").write_text("artifact_location: s3://bucket/runs\n")
    assert TrackingSettings.load().artifact_location == "s3://bucket/runs"


def test_the_firing_summary_names_every_quantile_and_fits_with_the_location_fixed():
    """Wrong variants: a quantile key dropped from the summary; gamma fitted with a free location
    (a shifted curve the table does not say); a spread of exactly 1 Hz taken for no spread."""
    from harness.firing import fit_distribution, summarize

    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 3.0, size=400)
    s = summarize("l", rates)
    assert s["p5_hz"] == np.percentile(rates, 5) and s["q1_hz"] == np.percentile(rates, 25)
    fit = fit_distribution(rates)
    assert fit["fit"] == "gamma" and fit["fit_params"].split()[1] == "0"
    assert fit_distribution(np.full(10, 2.0))["fit"] == "none"  # one value: nothing to fit
    assert fit_distribution(np.array([1.0, 2.0] * 3))["fit"] != "none"  # a spread of exactly 1


def test_an_artifact_that_fails_is_left_out_named_with_its_error_and_the_others_kept(tmp_path, caplog):
    """Wrong variants: a half-written file kept, the error's type lost from the note or the log,
    one failure costing the other artifacts."""
    import logging

    from harness.api import Artifact
    from harness.runner import write_artifacts

    def half(path):
        path.write_text("par")
        raise RuntimeError("disk full")

    def early(path):  # fails before it creates its file: nothing to remove, and no second error
        raise ValueError("no rows")

    arts = [Artifact("a.csv", lambda p: p.write_text("ok")), Artifact("sub/b.csv", half), Artifact("d.csv", early),
            Artifact("c.csv", lambda p: p.write_text("ok"))]
    with caplog.at_level(logging.WARNING, logger="harness.runner"):
        files, notes = write_artifacts(arts, tmp_path)
    assert files == [tmp_path / "a.csv", tmp_path / "c.csv"] and not (tmp_path / "sub" / "b.csv").exists()
    assert notes == {"artifact_notes": "not written: sub/b.csv: RuntimeError: disk full; d.csv: ValueError: no rows"}
    assert "artifact sub/b.csv was not written: RuntimeError: disk full" in caplog.text


def test_a_layer_fed_by_another_layers_current_is_named_and_a_tensor_method_on_spikes_is_followed():
    """Wrong variants: a tensor method (``x.view``) between spikes and a layer not followed; the
    op between two layers not named; the readout walk-back following a second input that does not
    exist."""
    from harness.graph import PASS, trace
    from harness.graph.events import spike_paths

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)
            self.drop = nn.Dropout(0.1)

        def forward(self, x):
            h = torch.relu(self.fc1(x)).view(-1, 6)
            return self.drop(self.fc3(self.fc2(h)))

    graph = trace(Net(), (4,))
    paths, problems = spike_paths(graph, graph.static_ops())
    assert [(op.name, why) for op, why in problems] == [
        ("fc3", "node `fc2` (Linear) lies between spikes and the synaptic layer `fc3`; only pooling, flatten, dropout, "
                "add, cat and constant scaling may")]
    assert "fc2" in paths and graph.feed(graph.output.name, PASS).name == "fc3"


def test_layer_scaling_tabulates_each_boost_against_the_base_by_hand(tmp_path):
    """The analysis with the evaluations given (no simulation): one row per layer and, with pairs,
    per pair; gain = accuracy − base accuracy; extra = spikes − base spikes; gain per extra spike
    = gain ÷ extra, 0 where the boost added no spike. Wrong variants: ``>=`` for ``>`` (a division by
    zero), the pairs not formed, the base row without its boost or gain, another label shown."""
    import csv
    from types import SimpleNamespace

    from harness.graph import trace
    from harness.methods.layer_scaling import LayerScaling, LayerScalingParams
    from harness.methods.rate import RateEvaluable, RateModel

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    graph = trace(net, (3,)).folded()
    params = LayerScalingParams(timesteps=4, boost=2.0, pairs=True)
    model = RateModel(graph, {"1": 1.0, "3": 1.0})
    results = {"1": (0.75, 120.0), "3": (0.625, 100.0), "1:3": (0.5, 150.0)}  # label -> accuracy, spikes
    asked = []

    def evaluate(ev, desc, what):
        label = what.rsplit(" of ", 1)[1]
        asked.append(desc)
        acc, spikes = results[label]
        return SimpleNamespace(metrics={"test/accuracy": acc, "spikes": spikes})

    ctx = SimpleNamespace(evaluate=evaluate)
    prep = SimpleNamespace(model=RateEvaluable(model, params))
    evaluation = SimpleNamespace(metrics={"test/accuracy": 0.5, "spikes": 100.0,
                                          "layer/1/firing_rate_hz": 40.0, "layer/3/firing_rate_hz": 25.0},
                                 meters=SimpleNamespace(firing_rates=lambda: {}))
    extras = LayerScaling().analyse(ctx, prep, evaluation, params)
    m = extras.metrics
    assert asked == ["boost 1", "boost 3", "boost 1:3"]
    assert m["layer_scaling/1/accuracy_gain"] == 0.25 and m["layer_scaling/1/extra_spikes"] == 20.0
    assert m["layer_scaling/1/gain_per_extra_spike"] == 0.25 / 20
    assert m["layer_scaling/3/gain_per_extra_spike"] == 0.0  # no extra spike: no ratio
    assert m["layer_scaling/1:3/accuracy_gain"] == 0.0 and m["layer_scaling/best_gain"] == 0.25
    (art,) = [a for a in extras.artifacts if a.name == "layer_scaling.csv"]
    art.write(tmp_path / "t.csv")
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert rows[0] == {"layers": "base", "boost": "1.0", "accuracy": "0.5", "spikes": "100.0", "extra_spikes": "0.0",
                       "accuracy_gain": "0.0", "gain_per_extra_spike": "0.0", "base_firing_rate_hz": "nan"}
    assert [r["layers"] for r in rows] == ["base", "1", "3", "1:3"] and rows[1]["boost"] == "2.0"
    # each single layer carries its own base rate (not its neighbour's); a pair has none
    assert [r["base_firing_rate_hz"] for r in rows[1:]] == ["40.0", "25.0", "nan"]
    assert "layer_scaling/rate_gain_spearman" not in m  # two layers: ρ is not reported


def test_a_layer_without_weights_is_named_by_its_type():
    from harness.graph import weight_of

    assert weight_of(nn.Linear(2, 3)).shape == (3, 2)
    with pytest.raises(TypeError, match=r"^ReLU has no weight tensor$"):
        weight_of(nn.ReLU())


def test_a_runs_provenance_says_where_and_when_it_ran():
    """Wrong variants: the platform or the start time left out of the record."""
    import platform
    import time

    from harness.runner import provenance

    started = time.time() - 2.0
    p = provenance("cpu", started, {"threads": 2})
    assert p["platform"] == platform.platform() and p["python"] == platform.python_version()
    assert p["started"] == time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    assert p["device"] == "cpu" and p["threads"] == 2 and p["duration_s"] >= 2.0


def test_a_training_epochs_curve_point_is_the_sample_weighted_mean_over_its_batches():
    """A model that does not change (lr 0) over batches of 4, 4 and 2 samples: the epoch's
    accuracy and loss are the means over its 10 samples, the loss plain cross-entropy. Wrong
    variants: the last batch's value only, an unweighted mean of batches, an activation penalty on
    by default, the optimizer's name check without the valid names."""
    import lightning.pytorch as pl
    from harness.errors import UnknownNameError
    from harness.training import Classifier

    torch.manual_seed(2)
    x, y = torch.randn(10, 3), torch.tensor([0, 1] * 5)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # a hidden activation: act_l1 off by default
    with torch.no_grad():
        logits = model(x)
    want_acc = (logits.argmax(-1) == y).float().mean().item()  # 0.4; batches 0.5, 0.0, 1.0 (unweighted 0.5)
    want_loss = nn.functional.cross_entropy(logits, y).item()
    from lightning.pytorch.loggers import Logger

    class Steps(Logger):  # what a logger (MLflow's, live) is handed: the curves are indexed by epoch
        name, version, logged = "steps", "0", []

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, sorted(metrics)))

    module = Classifier(model, lr=0.0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    logger = Steps()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         log_every_n_steps=1)
    trainer.fit(module, loader)
    assert [step for step, keys in logger.logged if "train/loss" in keys] == [0, 1]  # epochs, not batches
    assert not any("STEP" in keys or "step" in keys for _, keys in logger.logged)
    assert module.history["train/accuracy"] == [pytest.approx(want_acc)] * 2
    assert module.history["train/loss"] == [pytest.approx(want_loss, rel=1e-5)] * 2
    with pytest.raises(UnknownNameError, match="adam"):
        Classifier(model, optimizer="adamw2")


def test_a_name_without_a_colon_is_a_registered_data_set_or_did_you_mean():
    """Wrong variant: ``or`` in the factory test (every registered name without ':' would be
    taken for ``module:factory``... or refused)."""
    from harness.datasets import check_dataset
    from harness.errors import UnknownNameError

    check_dataset("digits")
    with pytest.raises(UnknownNameError, match="Did you mean 'digits'"):
        check_dataset("digitz")


def test_large_negative_pixels_are_warned_about_too(caplog):
    """Wrong variant: only the upper end compared with the warning bound."""
    import logging

    from harness.inputs import check_images

    with caplog.at_level(logging.WARNING, logger="harness.inputs"):
        check_images("d", "train", np.array([[-50.0, 1.0]], np.float32))
    assert "d/train: inputs span [-50, 1]; the methods expect images scaled to about [0, 1]" in caplog.text


def test_tensor_methods_are_classified_like_their_functions():
    """``x.relu()`` is a neuron and ``x.flatten(1)`` a flatten, as README's ops table says. Wrong
    variant: methods looked up under another name (every tensor method an unknown op)."""
    from harness.graph import Kind, trace

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 2, 3), nn.Linear(2 * 2 * 2, 2)

        def forward(self, x):
            return self.fc(self.conv(x).relu().flatten(1))

    kinds = {op.name: op.kind for op in trace(Net(), (1, 4, 4))}
    assert kinds["relu"] == Kind.NEURON and kinds["flatten"] == Kind.FLATTEN


def test_refusals_say_what_to_do_in_their_own_words():
    """The messages users read for a chain in the wrong order, a functional layer, a non-ReLU
    non-linearity, a sharpen network with average pooling or without a linear readout."""
    from harness.errors import ConfigError
    from harness.graph import trace
    from harness.methods import METHODS, resolve
    from harness.methods.rate import rate_problems
    from harness.methods.sharpen.snn import sharpen_problems

    with pytest.raises(ConfigError, match=r"only transforms of the ANN \(e\.g\. prune\) compose with '\+'"):
        resolve("rate+ttfs")

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 3))

        def forward(self, x):
            return torch.nn.functional.linear(x, self.w)

    with pytest.raises(ConfigError) as e:
        METHODS.get("rate").graph_problems(trace(Functional(), (3,)))
    assert str(e.value).endswith("weights inside Linear/Conv modules (functional F.linear / F.conv2d are not supported)")

    sig = trace(nn.Sequential(nn.Linear(3, 3), nn.Sigmoid(), nn.Linear(3, 2)), (3,)).folded()
    assert [why for _, why in rate_problems(sig)] == ["a non-linearity other than ReLU"]

    class Sine(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.sin(self.a(x)))

    assert [why for _, why in rate_problems(trace(Sine(), (3,)).folded())] == ["an op without a rate-coded equivalent"]
    pooled = trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2, 2)),
                   (1, 4, 4))
    assert "average pooling makes binary activations non-binary" in [why for _, why in sharpen_problems(pooled)]
    ends_in_relu = trace(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), (3,))
    assert (ends_in_relu.output.name, "the network must end in a linear readout layer") in [
        (op.name, why) for op, why in sharpen_problems(ends_in_relu)]


def test_a_fixed_sharpening_rate_that_does_not_fit_says_how_many_epochs_it_needs():
    """rate 0.25 per epoch from epoch 5 needs 5 + ⌈1/0.25⌉ = 9 epochs (not 10: the 1e-9 keeps an
    exact quotient exact)."""
    from harness.config import ConfigError
    from harness.methods.sharpen import SharpenParams

    with pytest.raises(ConfigError, match=r"sharpening needs 9 epochs but training has 8"):
        SharpenParams(schedule="fixed", rate=0.25, start_epoch=5, epochs=8).validate()
    SharpenParams(schedule="fixed", rate=0.25, start_epoch=5, epochs=9).validate()


def test_a_data_set_is_named_by_its_spec_or_dataset_when_given_as_splits(tmp_path, monkeypatch):
    """Wrong variants: a factory's data set without its spec as name, splits given directly named
    otherwise, a wrong array's message without its shape."""
    from harness.datasets import load_dataset
    from harness.datasets.base import Dataset
    from harness.errors import DataError

    rng = np.random.default_rng(0)
    x, y = rng.random((40, 1, 4, 4)).astype(np.float32), np.arange(40) % 2
    (tmp_path / "mydata.py").write_text("import numpy as np\n"
                                        "def make():\n"
                                        "    x = np.random.default_rng(0).random((40, 1, 4, 4)).astype(np.float32)\n"
                                        "    y = np.arange(40) % 2\n"
                                        "    return (x[:30], y[:30]), (x[30:], y[30:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_dataset("mydata:make").name == "mydata:make"
    assert load_dataset(((x[:30], y[:30]), (x[30:], y[30:]))).name == "dataset"
    ok = {"train": x[:30], "val": x[30:35], "test": x[35:]}
    labels = {"train": y[:30], "val": y[30:35], "test": y[35:]}
    with pytest.raises(DataError, match=r"^d/train: inputs must be a float32 array \(N, \.\.\.\) such as \(N, C, H, W\); "
                                        r"got float64 \(30, 1, 4, 4\)$"):
        Dataset("d", "v", 2, {**ok, "train": x[:30].astype(np.float64)}, labels)
    with pytest.raises(DataError, match=r"^d/val: labels must be an int64 array \(N,\); got int32 \(5,\)$"):
        Dataset("d", "v", 2, ok, {**labels, "val": y[30:35].astype(np.int32)})


def test_a_store_path_that_is_a_folder_is_refused_saying_where_to_set_it(tmp_path):
    from harness.errors import TrackingError
    from harness.tracking import Tracker, TrackingSettings

    (tmp_path / "db").mkdir()
    with pytest.raises(TrackingError, match=r"db is a directory, not an SQLite file; set tracking_uri in mlflow\.yaml "
                                            r"or MLFLOW_TRACKING_URI$"):
        Tracker(TrackingSettings(f"sqlite:///{tmp_path / 'db'}", "e", None)).check()


def test_non_finite_pixels_are_named_by_their_first_index_and_counted():
    """Wrong variants: another index than the first non-finite one, the count's plural."""
    from harness.errors import DataError
    from harness.inputs import check_images

    x = np.zeros((4, 1, 2, 3), np.float32)
    x[2, 0, 1, 2] = np.nan
    x[3, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match=r"^d/test: input 2 holds NaN at index \(2, 0, 1, 2\); 2 non-finite values in "
                                        r"this split — clean or drop them$"):
        check_images("d", "test", x)


def test_a_built_in_entry_never_has_a_plugin_problem_and_a_broken_plugin_says_why():
    """Wrong variant: built-in and plug-in entries swapped (a broken plug-in reported as fine)."""
    from harness.registry import Registry

    reg = Registry("thing")
    reg.lazy("good", "harness.methods.rate:Rate", "built in")
    assert reg.problem("good") is None
    reg._entries["bad"] = type(reg._entries["good"])("bad", "plug-in nowhere:X", path="nowhere_module_xyz:X",
                                                    origin="some-package 1.0")
    assert "nowhere_module_xyz" in (reg.problem("bad") or "")


def test_a_cuda_device_trains_on_the_gpu_accelerator_and_a_cpu_on_the_cpu(monkeypatch):
    """Wrong variant: the device's name compared in another case (every CUDA run trained on the CPU)."""
    from types import SimpleNamespace

    import harness.training as training

    made = []
    monkeypatch.setattr(training.pl, "Trainer", lambda **kw: made.append(kw) or kw)
    for device in ("cuda:0", "cpu"):
        training.make_trainer(SimpleNamespace(device=device, progress=False, live_run=None), 2)
    assert [m["accelerator"] for m in made] == ["gpu", "cpu"] and made[0]["enable_checkpointing"] is False


def test_an_evaluation_that_breaks_an_invariant_is_named_evaluation_by_default():
    """Wrong variant: another default label (the message would not say what broke)."""
    from types import SimpleNamespace

    from harness.api import Evaluable, Outputs
    from harness.errors import InvariantError
    from harness.evaluation import evaluate_in
    from harness.graph import trace
    from harness.metrics import SCHEMA

    class Silent(Evaluable):  # predicts, but meters nothing: its layers were "never metered"
        def __init__(self):
            self.graph = trace(nn.Sequential(nn.Linear(2, 2)), (2,))

        def run_batch(self, x, meters):
            return Outputs(predictions=torch.zeros(len(x), dtype=torch.long))

        def tensors(self):  # pragma: no cover - not saved
            return {}

    data = [(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))]
    ctx = SimpleNamespace(dataset=SimpleNamespace(input_shape=(2,)), loader=lambda split, batch_size, limit: data,
                          device="cpu", progress=False, schema=SCHEMA, world=None, main=True)
    with pytest.raises(InvariantError, match=r"^evaluation broke 1 invariant "):
        evaluate_in(ctx, Silent())
