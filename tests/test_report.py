"""harness report: leaderboard, figures, escaping, missing metrics, bad input; MLflow server round trip."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from harness.analysis.report import build_report
from harness.analysis.runs import ReportError
from harness.errors import UnknownNameError
from harness.runner import run


@pytest.mark.slow
def test_report_from_real_runs(quick, tmp_path):
    for synapse in ("none", "0.005"):
        for scale in ("1", "4"):
            run(quick(method="rate", model="cnn7", track=True,
                      sets=("timesteps=8", f"synapse={synapse}", f"scale_firing_rates={scale}")))
    run(quick(method="ttfs", track=True, sets=("t_max=16", "t_max_sweep=8,16", "fig2_t_max=8,16",
                                               "fig2_fractions=0.5,1")))
    run(quick(method="ann", model="cnn7", track=True))
    out = build_report(out_dir=tmp_path / "rep")
    names = {p.name for p in out.files}
    assert {"report.html", "report.md", "leaderboard.csv", "runs.csv"} <= names
    assert {"accuracy_vs_energy.png", "accuracy_vs_synops.png", "accuracy_vs_time.png",
            "synapse_scale_heatmap.png", "ttfs_fig2.png", "firing_rates.png"} <= names
    import pandas as pd

    lb = pd.read_csv(tmp_path / "rep" / "leaderboard.csv")
    assert set(lb["method"]) == {"rate", "ttfs", "ann"} and len(lb) == 3
    assert list(lb["accuracy"]) == sorted(lb["accuracy"], reverse=True)
    energy = "energy[cmos45-fp32] (nJ)"
    front = {r["method"] for _, r in lb.iterrows()  # not dominated: none as accurate and cheaper (one strictly)
             if not any(o["accuracy"] >= r["accuracy"] and o[energy] <= r[energy]
                        and (o["accuracy"] > r["accuracy"] or o[energy] < r[energy]) for _, o in lb.iterrows())}
    assert set(lb.loc[lb["pareto"] == "★", "method"]) == front and front
    assert lb.loc[lb["method"] == "rate", "runs"].item() == 4
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == sum(n.endswith(".png") for n in names)
    assert "lopez-randulfe (ttfs)" in html and "MNIST 60k" in html
    assert any("surrogate_grid" in m for m in out.missing)  # no surrogate runs: said, not drawn
    # the memory-aware model drives the Pareto mark and its ratios sit beside the arithmetic ones
    build_report(out_dir=tmp_path / "rep-lemaire", energy_model="lemaire-45nm")
    lb2 = pd.read_csv(tmp_path / "rep-lemaire" / "leaderboard.csv")
    assert lb2["energy[lemaire-45nm] (nJ)"].gt(0).all()
    md = (tmp_path / "rep-lemaire" / "report.md").read_text()
    assert "Energy: arithmetic only vs memory traffic" in md and "ratio (lemaire-45nm)" in md
    # the page's leaderboard carries the chosen model's energy column only (it overflowed 1400 px);
    # leaderboard.csv keeps every model's
    header = md.split("## Leaderboard", 1)[1].strip().splitlines()[0]
    assert "lemaire-45nm" in header and "cmos45-fp32" not in header and "loihi" not in header
    assert sum(c.startswith("energy[") for c in lb2.columns) > 1


def test_heatmaps_take_the_largest_grid_and_leave_search_trials_out():
    import pandas as pd
    from harness.analysis.figures import _grid_core

    rows = [dict(model="cnn7", T=64, s=s, f=f, acc=0.9) for s in (0, 0.005, 0.01) for f in (1, 10, 100)]
    rows += [dict(model="cnn7", T=64, s=0.0013 * i, f=0.5 + i, acc=0.5) for i in range(1, 6)]  # TPE trials
    rows += [dict(model="cnn7", T=128, s=s, f=f, acc=0.1) for s in (0, 1) for f in (1, 2)]  # 2 × 2 at another T
    rows += [dict(model="cnn7", T=64, s=0.01, f=3.3, acc=0.2)]  # a lone value beside the grid
    grid = _grid_core(pd.DataFrame(rows), "s", "f", ("model", "T"))
    assert len(grid) == 9 and set(grid["acc"]) == {0.9} and set(grid["T"]) == {64}
    assert _grid_core(pd.DataFrame(rows[9:14]), "s", "f", ("model", "T")).empty


def test_surrogate_grid_draws_accuracy_and_gradient_ratio(tmp_path):
    import pandas as pd
    from harness.analysis.figures import surrogate_grid
    from harness.analysis.runs import RunTable

    rows = [{"run_id": f"r{g}{b}", "method": "surrogate", "model": "cnn7", "dataset": "digits",
             "p.timesteps": "4", "p.epochs": "2", "p.surrogate": "triangle", "p.width": str(g), "p.height": str(b),
             "test/accuracy": 0.9, "surrogate/grad_norm_ratio": b ** 3 / g}
            for g in (0.3, 1, 3) for b in (0.3, 1, 3)]
    fig = surrogate_grid(RunTable(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    assert fig.path.stat().st_size > 0 and "gradient" in fig.caption and "9 surrogate runs" in fig.caption
    # the same 3 x 3 grid at another T is another grid, not 9 more runs of this one
    other_t = [dict(r, run_id=r["run_id"] + "-T2", **{"p.timesteps": "2"}) for r in rows]
    fig = surrogate_grid(RunTable(pd.DataFrame(rows + other_t), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    assert "9 surrogate runs" in fig.caption


@pytest.fixture
def drawn_lines(monkeypatch):
    """The data frames the figures pass to seaborn's lineplot (still drawn)."""
    import harness.analysis.figures as figures

    drawn = []
    real = figures.sns.lineplot

    def lineplot(data, **kw):
        drawn.append(data.copy())
        return real(data=data, **kw)

    monkeypatch.setattr(figures.sns, "lineplot", lineplot)
    return drawn


def test_pruning_curve_draws_each_chain(tmp_path, drawn_lines):
    import harness.analysis.figures as figures
    import pandas as pd
    from harness.analysis.runs import RunTable

    rows = [{"run_id": f"{m}{s}", "method": m, "model": "cnn7", "connection_sparsity": s, "test/accuracy": 0.9 - s / 10}
            for m in ("prune", "prune+rate") for s in (0.0, 0.5, 0.8)]
    rows.append({"run_id": "rate", "method": "rate", "model": "cnn7", "connection_sparsity": 0.0, "test/accuracy": 0.5})
    fig = figures.pruning_curve(RunTable(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    assert fig.key == "pruning" and fig.path.exists() and fig.caption.startswith("6 runs")
    assert sorted(drawn_lines[0]["series"].unique()) == ["prune / cnn7", "prune+rate / cnn7"]


def test_latency_curves_come_from_the_best_full_test_run_of_each_series(tmp_path, drawn_lines):
    import pandas as pd
    from harness.analysis.figures import accuracy_vs_time
    from harness.analysis.runs import RunTable

    def row(run_id, method, acc, T, eval_limit=0, sweep=None):
        return {"run_id": run_id, "method": method, "model": "m", "dataset": "digits", "test/accuracy": acc,
                "p.timesteps": T, "p.t_max_sweep": sweep, "eval_limit": eval_limit, "start_time": 0}

    rows = [row("rate-best", "rate", 0.9, "32"), row("rate-other-T", "rate", 0.8, "64"),
            row("rate-subset", "rate", 0.99, "16", eval_limit=100),
            row("sur-T2", "surrogate", 0.7, "2"), row("sur-T4", "surrogate", 0.6, "4"),
            row("ttfs-no-sweep", "ttfs", 0.95, None), row("ttfs-sweep", "ttfs", 0.9, None, sweep="(8, 16)"),
            row("pruned-sweep", "prune+ttfs", 0.85, None, sweep="(8, 16)")]
    fetched = []

    class Runs(RunTable):
        def history(self, run_id, key):
            fetched.append(run_id)
            return [0.5, 0.6]

    fig = accuracy_vs_time(Runs(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    assert sorted(fetched) == ["pruned-sweep", "rate-best", "sur-T2", "sur-T4", "ttfs-sweep"] and fig.path.exists()
    [ttfs] = [d for d in drawn_lines if d["panel"].str.startswith("ttfs").all()]
    # a pruned ttfs run is its own series, labelled with its chain (it was drawn as plain "ttfs")
    assert sorted(ttfs["series"].unique()) == ["prune+ttfs / m / digits", "ttfs / m / digits"]
    plain = ttfs[ttfs["series"] == "ttfs / m / digits"]
    assert plain["x"].tolist() == [8, 16] and plain["acc"].tolist() == [0.5, 0.6]
    steps = [d for d in drawn_lines if d["panel"].str.startswith("rate").all()][0]
    assert sorted(steps["series"].unique()) == ["rate / m / digits", "surrogate / m / digits T=2",
                                                 "surrogate / m / digits T=4"]


def test_sharpen_schedule_draws_both_accuracies_and_each_layers_sharpness(tmp_path, drawn_lines):
    import pandas as pd
    from harness.analysis.figures import Missing, sharpen_schedule
    from harness.analysis.runs import RunTable

    def row(run_id, acc, eval_limit=0, model="stpu-dnn"):
        return {"run_id": run_id, "method": "sharpen", "model": model, "dataset": "digits", "test/accuracy": acc,
                "eval_limit": eval_limit, "start_time": 0, "sharpen/sharpness/fc1": 1.0,
                "sharpen/sharpness/spike_out": 1.0, "sharpen/sharpness_reached": 1.0}

    curves = {"sharpen/val/accuracy": [0.8, 0.7, 0.6], "sharpen/val/accuracy_sharpened": [0.3, 0.5, 0.6],
              "sharpen/sharpness/fc1": [0.0, 1.0, 1.0], "sharpen/sharpness/spike_out": [0.0, 0.0, 1.0]}
    fetched = []

    class Runs(RunTable):
        def history(self, run_id, key):
            fetched.append((run_id, key))
            return curves[key]

    rows = [row("best", 0.9), row("worse", 0.8), row("subset", 0.99, eval_limit=50)]
    fig = sharpen_schedule(Runs(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    assert fig.path.exists() and {r for r, _ in fetched} == {"best"}
    acc, sharp = drawn_lines
    assert acc.set_index("curve").loc["all layers stepped", "acc"].tolist() == [0.3, 0.5, 0.6]
    assert acc.set_index("curve").loc["as trained", "epoch"].tolist() == [1, 2, 3]
    assert sharp.set_index("layer").loc["spike_out", "sharpness"].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(Missing):
        sharpen_schedule(Runs(pd.DataFrame([row("subset", 0.99, eval_limit=50)]), "e", "sqlite://"), tmp_path, "x")


def test_whetstone_table_puts_the_network_before_sharpening_beside_the_sharpened_one():
    import pandas as pd
    from harness.analysis.report import whetstone_table
    from harness.analysis.runs import RunTable

    rows = [{"run_id": r, "method": "sharpen", "model": "stpu-dnn", "dataset": "digits", "test/accuracy": acc,
             "ann/test/accuracy": 0.95, "sharpen/brelu/test/accuracy": brelu, "sharpen/ties": 0.1,
             "eval_limit": 0, "start_time": 0} for r, acc, brelu in (("a", 0.9, 0.92), ("b", 0.8, 0.85))]
    t = whetstone_table(RunTable(pd.DataFrame(rows), "e", "sqlite://"))
    assert len(t) == 1  # the best run per network and data set
    row = t.iloc[0]
    assert (row["ANN (ReLU) accuracy"], row["bounded-ReLU before sharpening"], row["sharpened (1 step) accuracy"],
            row["ties"], row["paper spiking (MNIST 60k)"]) == (0.95, 0.92, 0.9, 0.1, 0.973)


def test_energy_models_table_ranks_each_data_set_under_both_models():
    import pandas as pd
    from harness.analysis.report import energy_models_table
    from harness.analysis.runs import RunTable

    def row(r, method, acc, arith, aware, dataset="digits", eval_limit=0):
        return {"run_id": r, "method": method, "model": "m", "dataset": dataset, "test/accuracy": acc,
                "eval_limit": eval_limit, "start_time": 0, "energy_ratio/cmos45-fp32": arith,
                "energy_ratio/lemaire-45nm": aware, "energy_nJ/lemaire-45nm": 2.0,
                "energy_parts_nJ/lemaire-45nm/memory": 1.5}

    rows = [row("t", "ttfs", 0.9, 0.1, 0.9), row("r", "rate", 0.95, 7.0, 9.0), row("s", "sharpen", 0.8, 0.05, 1.2),
            row("s-worse", "sharpen", 0.7, 0.01, 0.01), row("sub", "ttfs", 0.99, 0.01, 0.01, eval_limit=10),
            row("other", "rate", 0.9, 1.0, 1.0, dataset="mnist-5k")]
    t = energy_models_table(RunTable(pd.DataFrame(rows), "e", "sqlite://")).set_index(["data", "method"])
    assert len(t) == 4  # best full-test run per method x model x data set
    d = t.loc["digits"]
    assert d["rank (cmos45-fp32)"].to_dict() == {"sharpen": 1, "ttfs": 2, "rate": 3}
    assert d["rank (lemaire-45nm)"].to_dict() == {"sharpen": 2, "ttfs": 1, "rate": 3}  # memory reorders
    assert d.loc["sharpen", "memory share (lemaire-45nm)"] == pytest.approx(0.75)
    assert t.loc[("mnist-5k", "rate"), "rank (lemaire-45nm)"] == 1


def test_runs_logged_with_the_old_energy_keys_read_under_todays_keys_and_units():
    """Energy moved from joules under ``energy/<model>/…`` to nanojoules under one section per
    quantity; a store holding runs of both kinds reads as one table."""
    from harness.analysis.runs import load_runs
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("mixed")
    for metrics in ({"energy/cmos45-fp32/joules": 3e-8, "ann/energy/cmos45-fp32/joules": 6e-8,
                     "energy/cmos45-fp32/ratio": 0.5, "energy/lemaire-45nm/memory_nj": 7.0,
                     "energy/loihi/break_even_spikes_per_neuron": 1.25},
                    {"energy_nJ/cmos45-fp32": 40.0}):
        r = client.create_run(exp)
        client.log_param(r.info.run_id, "method", "rate")
        client.log_param(r.info.run_id, "run.eval_limit", "0")
        for k, v in {"test/accuracy": 0.5, **metrics}.items():
            client.log_metric(r.info.run_id, k, v)
        client.set_terminated(r.info.run_id)
    df = load_runs(experiment="mixed").df
    assert sorted(df["energy_nJ/cmos45-fp32"]) == [pytest.approx(30.0), 40.0]
    old = df[df["energy_nJ/cmos45-fp32"] < 35].iloc[0]
    assert old["ann/energy_nJ/cmos45-fp32"] == pytest.approx(60.0) and old["energy_ratio/cmos45-fp32"] == 0.5
    assert old["energy_parts_nJ/lemaire-45nm/memory"] == 7.0
    assert old["break_even_spikes_per_neuron/loihi"] == 1.25
    assert not any(c.startswith("energy/") for c in df.columns)


def test_text_from_runs_is_escaped_and_missing_metrics_are_named(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("snn-harness")
    r = client.create_run(exp)
    client.log_param(r.info.run_id, "method", "<script>alert(1)</script>")
    client.log_param(r.info.run_id, "model", "m&m")
    client.log_param(r.info.run_id, "dataset", "digits")
    client.log_param(r.info.run_id, "run.eval_limit", "0")
    client.log_metric(r.info.run_id, "test/accuracy", 0.5)
    client.set_terminated(r.info.run_id)
    out = build_report(out_dir=tmp_path / "rep")
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "m&amp;m" in html
    assert any("spikes_per_neuron" in m and "synops" in m for m in out.missing)
    assert "Not drawn" in html


def test_the_report_admits_only_finished_runs_with_valid_metrics_and_neutralises_their_text(tmp_path):
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.create_experiment("snn-harness")

    def logged(method, model, acc, status="FINISHED"):
        r = client.create_run(exp)
        for k, v in (("method", method), ("model", model), ("dataset", "digits"), ("run.eval_limit", "0")):
            client.log_param(r.info.run_id, k, v)
        client.log_metric(r.info.run_id, "test/accuracy", acc)
        client.set_terminated(r.info.run_id, status)

    logged("ann", "good", 0.8)
    logged("rate", "failed", 0.99, status="FAILED")
    logged("ttfs", "infinite", float("inf"))
    logged("=HYPERLINK(\"http://x\",\"y\")", "<img src=x onerror=alert(1)>", 0.7)
    out = build_report(out_dir=tmp_path / "rep")
    lb = pd.read_csv(tmp_path / "rep" / "leaderboard.csv")
    assert sorted(lb["model"]) == ["<img src=x onerror=alert(1)>", "good"]  # FAILED and inf left out
    assert out.left_out == {"status FAILED": 1, "test/accuracy outside its valid range [0, 1]": 1}
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "2 runs left out of every table and figure" in md
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    csv_text = (tmp_path / "rep" / "leaderboard.csv").read_text() + (tmp_path / "rep" / "runs.csv").read_text()
    assert ",=HYPERLINK" not in csv_text and "\n=HYPERLINK" not in csv_text and "'=HYPERLINK" in csv_text


def test_bad_report_input(tmp_path):
    from mlflow.tracking import MlflowClient

    with pytest.raises(ReportError, match="no MLflow store"):
        build_report(out_dir=tmp_path / "r")
    MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).create_experiment("snn-harness")
    with pytest.raises(ReportError, match="has no runs"):
        build_report(out_dir=tmp_path / "r")
    with pytest.raises(UnknownNameError, match="Did you mean 'snn-harness'"):
        build_report(experiment="snn-harnes", out_dir=tmp_path / "r")
    with pytest.raises(UnknownNameError, match="energy model"):
        build_report(out_dir=tmp_path / "r", energy_model="lohi")


def test_analysis_never_imports_methods():
    code = ("import sys, harness.analysis.report, harness.analysis.figures, harness.analysis.runs;"
            "bad = [m for m in sys.modules if m.startswith('harness.methods') or m == 'harness.runner'];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_run_logged_to_a_real_mlflow_server(quick, tmp_path, monkeypatch):
    """Start ``mlflow server`` on 127.0.0.1, log a run through the harness, read it back."""
    from mlflow.tracking import MlflowClient

    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen(
        [exe, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"mlflow server did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        (tmp_path / "mlflow.yaml").write_text("experiment: served\nartifact_location: null\n")
        res = run(quick(method="ann", track=True))
        client = MlflowClient(uri)
        got = client.get_run(res.tracking["run_id"])
        assert got.info.status == "FINISHED"
        assert got.data.metrics["test/accuracy"] == pytest.approx(res.metrics["test/accuracy"])
        assert got.data.params["dataset"] == "digits"
        assert {a.path for a in client.list_artifacts(got.info.run_id)} >= {"layers.csv", "result.json"}
        out = build_report(out_dir=tmp_path / "rep", tracking_uri=uri, experiment="served")
        assert out.runs == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_pareto_mask_by_hand():
    import numpy as np
    from harness.analysis.figures import pareto_mask

    # columns: accuracy (max), energy (min)
    pts = np.array([[0.9, 10.0], [0.95, 20.0], [0.8, 5.0], [0.85, 12.0], [0.9, 10.0], [0.7, 30.0],
                    [np.nan, 1.0]])
    mask = pareto_mask(pts, (True, False))
    # (0.85, 12) is beaten by (0.9, 10); (0.7, 30) by everything; equal points both stay; NaN never
    assert mask.tolist() == [True, True, True, False, True, False, False]
    assert pareto_mask(np.array([[1.0, 1.0]]), (True, False)).tolist() == [True]
    assert pareto_mask(pts[:3, :1], (False,)).tolist() == [False, False, True]


def test_leaderboard_stars_the_front_of_each_data_set():
    import pandas as pd
    from harness.analysis.report import leaderboard
    from harness.analysis.runs import RunTable

    def row(method, dataset, acc, joules):
        return {"run_id": f"{method}-{dataset}", "method": method, "model": "m", "dataset": dataset,
                "test/accuracy": acc, "energy_nJ/cmos45-fp32": joules, "eval_limit": 0, "start_time": 0}

    runs = RunTable(pd.DataFrame([
        row("ann", "a", 0.95, 10.0), row("rate", "a", 0.94, 20.0), row("ttfs", "a", 0.93, 1.0),
        row("surrogate", "a", 0.92, 2.0),  # beaten by ttfs on both
        row("ann", "b", 0.50, 10.0), row("rate", "b", 0.60, 20.0),  # another data set: its own front
    ]), "e", "sqlite://")
    lb = leaderboard(runs, ["cmos45-fp32"], "cmos45-fp32")
    starred = {(r.method, r.dataset) for r in lb.itertuples() if r.pareto == "★"}
    assert starred == {("ann", "a"), ("ttfs", "a"), ("ann", "b"), ("rate", "b")}


def test_a_chain_run_feeds_the_pruning_figure_and_no_plain_method_row(tmp_path, drawn_lines):
    # a prune+ttfs run was drawn as plain ttfs, while the reproduction table said "no prune run"
    # and the pruning figure said "1 runs"
    import harness.analysis.figures as figures
    import pandas as pd
    from harness.analysis.report import reproduction
    from harness.analysis.runs import RunTable

    runs = RunTable(pd.DataFrame([{
        "run_id": "pt", "method": "prune+ttfs", "model": "ttfs-cnn", "dataset": "digits", "test/accuracy": 0.9,
        "ann/test/accuracy": 0.95, "connection_sparsity": 0.8, "eval_limit": 0, "start_time": 0}]), "e", "sqlite://")
    rep = reproduction(runs).set_index("seed")
    assert set(rep.loc["lopez-randulfe (ttfs)", "harness_data"]) == {"no ttfs run"}
    assert rep.loc["deutsch (prune)", "harness_data"] == ("no plain prune run (1 chain run in the pruning figure; "
                                                          "a conversion's loss would mix in)")
    fig = figures.pruning_curve(runs, tmp_path, "cmos45-fp32")
    assert fig.caption.startswith("1 run;") and drawn_lines[0]["series"].tolist() == ["prune+ttfs / ttfs-cnn"]


def test_accuracy_vs_cost_draws_one_panel_and_one_front_per_data_set(tmp_path, monkeypatch):
    # runs of two data sets shared one axis and one Pareto front: the fashion run looked "dominated"
    import harness.analysis.figures as figures
    import pandas as pd
    from harness.analysis.runs import RunTable

    drawn, fronts = [], []
    monkeypatch.setattr(figures.sns, "scatterplot", lambda data, **kw: drawn.append(data.copy()))
    mask = figures.pareto_mask
    monkeypatch.setattr(figures, "pareto_mask", lambda pts, maximize: fronts.append(pts.copy()) or mask(pts, maximize))
    rows = [{"run_id": f"{d}{i}", "method": "ttfs", "model": "m", "dataset": d, "synops": syn, "test/accuracy": acc}
            for i, (d, syn, acc) in enumerate([("digits", 1e5, 0.95), ("digits", 2e5, 0.97),
                                               ("fashion-mnist", 3e5, 0.85), ("fashion-mnist", 4e5, 0.80)])]
    fig = figures.accuracy_vs_cost(RunTable(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32", "synops")
    assert [sorted(d["dataset"].unique()) for d in drawn] == [["digits"], ["fashion-mnist"]]
    assert [len(f) for f in fronts] == [2, 2]  # each front sees its own data set's points only
    assert "one panel per data set (2)" in fig.caption and fig.path.exists()


def test_the_html_tables_shorten_run_ids_and_scroll_rather_than_widen_the_page():
    import pandas as pd
    from harness.analysis.report import _table_html

    rid = "0123456789abcdef0123456789abcdef"
    out = _table_html(pd.DataFrame([{"method": "ttfs", "run_id": rid}]), "lb")
    assert f'<td title="{rid}"><code>01234567…</code></td>' in out
    assert out.count(rid) == 1  # in the title only
    assert out.startswith('<div style="overflow-x:auto"><table id="lb">')


def test_only_finished_runs_are_admitted_whatever_their_numbers():
    """Each state MLflow has, with the same good numbers: FINISHED alone enters the tables. Wrong
    variants: KILLED (a pruned trial, an interrupted run) or RUNNING admitted."""
    import pandas as pd
    from harness.analysis.runs import admitted

    states = ["FINISHED", "RUNNING", "SCHEDULED", "FAILED", "KILLED"]
    df = pd.DataFrame({"run_id": states, "state": states, "test/accuracy": [0.9] * 5})
    kept, left = admitted(df)
    assert list(kept["run_id"]) == ["FINISHED"]
    assert left == {"status RUNNING": 1, "status SCHEDULED": 1, "status FAILED": 1, "status KILLED": 1}


def test_metrics_on_their_range_edges_are_admitted_and_past_them_left_out():
    """[0, 1] is closed: an accuracy of exactly 0 or 1 is a result; −1e-9 or 1 + 1e-9 is not. NaN is
    a metric not logged (admitted); +inf is admitted only where the schema documents it (no
    break-even), never for an accuracy."""
    import pandas as pd
    from harness.analysis.runs import admitted

    acc = [0.0, 1.0, -1e-9, 1 + 1e-9, float("nan"), 0.5, 0.5]
    be = [1.0, 1.0, 1.0, 1.0, 1.0, float("inf"), -1.0]
    df = pd.DataFrame({"run_id": list("abcdefg"), "state": ["FINISHED"] * 7, "test/accuracy": acc,
                       "break_even_spikes_per_neuron/loihi": be})
    kept, left = admitted(df)
    assert list(kept["run_id"]) == ["a", "b", "e", "f"]
    assert left == {"test/accuracy outside its valid range [0, 1]": 2,
                    "break_even_spikes_per_neuron/loihi outside its valid range [0, inf]": 1}


def _lb_row(run_id, method, acc, cost, eval_limit=0, dataset="d"):
    return {"run_id": run_id, "method": method, "model": "m", "dataset": dataset, "test/accuracy": acc,
            "energy_nJ/cmos45-fp32": cost, "eval_limit": eval_limit, "start_time": 0}


def test_the_leaderboard_takes_full_test_sets_only_and_the_cheaper_of_equally_accurate_runs():
    """Per method × model × data set: the most accurate run on the full test set (a trial on the
    first N images is never ranked: eval_limit 0 in, 1 out), the cheaper one among equals. Wrong
    variants: subset trials admitted, ties to the first or the dearer run."""
    import pandas as pd
    from harness.analysis.report import leaderboard
    from harness.analysis.runs import RunTable

    runs = RunTable(pd.DataFrame([
        _lb_row("subset", "rate", 0.99, 1.0, eval_limit=1),  # better, but on a subset of the test set
        _lb_row("dear", "rate", 0.90, 30.0), _lb_row("cheap", "rate", 0.90, 20.0), _lb_row("worse", "rate", 0.80, 1.0),
    ]), "e", "sqlite://")
    lb = leaderboard(runs, ["cmos45-fp32"], "cmos45-fp32")
    assert list(lb["run_id"]) == ["cheap"] and lb["runs"].item() == 3


def test_a_point_tied_on_one_objective_and_worse_on_the_other_is_off_the_front():
    """Dominance is ≤ on every objective and < on one: (0.95, 25) is dominated by (0.95, 20), and
    (0.85, 10) by (0.9, 10); identical points dominate neither each other. Wrong variants: strict
    < on every objective (ties never dominated), ≤ on every objective (equal points dominate each
    other)."""
    import numpy as np
    from harness.analysis.figures import pareto_mask

    pts = np.array([[0.95, 20.0], [0.95, 25.0], [0.9, 10.0], [0.85, 10.0], [0.9, 10.0]])
    assert pareto_mask(pts, (True, False)).tolist() == [True, False, True, False, True]


def test_the_reproduction_table_names_the_harness_runs_beside_the_papers_figures():
    """Wrong variants: a quantity read under another key (the harness column empty), the data
    sets of plain prune runs not listed, the recovering sparsity taken from a run that lost more
    than a point."""
    import pandas as pd
    from harness.analysis.report import reproduction
    from harness.analysis.runs import RunTable

    base = dict(eval_limit=0, start_time=0)
    rows = [dict(run_id="t", method="ttfs", model="ttfs-cnn", dataset="mnist-5k", **{
                "test/accuracy": 0.97, "ann/test/accuracy": 0.98, "spikes_per_neuron": 0.44, "synops": 1e6,
                "ann/macs": 2e6}, **base),
            dict(run_id="p1", method="prune", model="cnn7", dataset="digits", connection_sparsity=0.8,
                 **{"test/accuracy": 0.95, "ann/test/accuracy": 0.955}, **base),
            dict(run_id="p2", method="prune", model="dnn5", dataset="fashion-mnist", connection_sparsity=0.9,
                 **{"test/accuracy": 0.80, "ann/test/accuracy": 0.85}, **base)]
    rep = reproduction(RunTable(pd.DataFrame(rows), "e", "sqlite://"))
    ttfs = rep[rep["seed"] == "lopez-randulfe (ttfs)"].set_index("quantity")
    assert ttfs.loc["spikes per neuron", "harness"] == 0.44 and ttfs.loc["SNN synaptic operations", "harness"] == 1e6
    assert set(ttfs["harness_data"]) == {"mnist-5k / ttfs-cnn"}
    prune = rep[rep["seed"] == "deutsch (prune)"].iloc[0]
    assert prune["harness_data"] == "digits / cnn7, fashion-mnist / dnn5"
    assert prune["harness"] == 0.8  # p2 lost 5 points: it does not count as recovered


def test_the_synapse_by_scale_heatmap_puts_scales_in_columns_and_synapses_in_rows(tmp_path, monkeypatch):
    """Wrong variant: either axis read from another column (the heatmap of a grid study would be
    missing)."""
    import harness.analysis.figures as figures
    import pandas as pd
    from harness.analysis.runs import RunTable

    drawn = []
    real = figures.sns.heatmap
    monkeypatch.setattr(figures.sns, "heatmap", lambda table, **kw: drawn.append(table.copy()) or real(table, **kw))
    rows = [{"run_id": f"r{i}", "method": "rate", "model": "cnn7", "dataset": "digits", "p.timesteps": "64",
             "p.synapse": syn, "p.scale_firing_rates": str(f), "test/accuracy": 0.5 + i / 100, "eval_limit": 0,
             "start_time": 0} for i, (syn, f) in enumerate((s, f) for s in ("None", "0.005") for f in (1, 10))]
    fig = figures.synapse_scale_heatmap(RunTable(pd.DataFrame(rows), "e", "sqlite://"), tmp_path, "cmos45-fp32")
    (table,) = drawn
    assert list(table.columns) == [1.0, 10.0] and list(table.index) == [0.0, 0.005]
    assert table.loc[0.005, 10.0] == pytest.approx(0.53) and "4 rate runs" in fig.caption


def test_latency_figures_draw_one_line_per_method_variant_and_label_energy_points_with_T(tmp_path, drawn_lines,
                                                                                           monkeypatch):
    """One panel per model × data set; a variant of rate (gated pools, light calibration) is its own
    line; at each T the most accurate full-test run; ttfs placed at its t_max; a subset run left
    out; each energy point annotated with its T. Wrong variants: variants merged into "rate", the
    last run instead of the best, subset runs drawn, ttfs without a T."""
    import harness.analysis.figures as figures
    import pandas as pd
    from harness.analysis.runs import RunTable

    def row(rid, method, T, acc, model="vgg-small", eval_limit=0, **p):
        r = {"run_id": rid, "method": method, "model": model, "dataset": "fashion-mnist", "test/accuracy": acc,
             "eval_limit": eval_limit, "start_time": 0, "energy_nJ/cmos45-fp32": 100.0 * (T or 1),
             "ann/test/accuracy": 0.9, "ann/energy_nJ/cmos45-fp32": 900.0,
             "p.timesteps": None if method == "ttfs" else str(T), "p.t_max": str(T) if method == "ttfs" else None}
        r.update({f"p.{k}": v for k, v in p.items()})
        return r

    rows = [row("r4", "rate", 4, 0.5, maxpool="max", calibration="none"),
            row("r8", "rate", 8, 0.7, maxpool="max", calibration="none"),
            row("r8-worse", "rate", 8, 0.6, maxpool="max", calibration="none"),
            row("r8-subset", "rate", 8, 0.99, eval_limit=100, maxpool="max", calibration="none"),
            row("r8-samples", "rate", 8, 0.98, maxpool="max", calibration="none", eval_samples="500"),
            row("ltb8", "rate", 8, 0.75, maxpool="max", calibration="none", normalization="ltb"),
            row("g8", "rate", 8, 0.8, maxpool="gate", calibration="light"),
            row("q8", "qcfs", 8, 0.88, maxpool="avg", calibration="light", levels="8"),
            row("t16", "ttfs", 16, 0.85),
            row("other", "rate", 8, 0.3, model="resnet-small", maxpool="max", calibration="none")]
    runs = RunTable(pd.DataFrame(rows), "e", "sqlite://")
    fig = figures.accuracy_vs_timesteps(runs, tmp_path, "cmos45-fp32")
    assert fig.path.exists() and fig.caption.startswith("7 points")  # r8-worse and both subsets out
    drawn = pd.concat(drawn_lines)
    vgg = drawn[drawn["panel"] == "vgg-small / fashion-mnist"]
    assert sorted(vgg["series"].unique()) == ["qcfs maxpool=avg calibration=light L=8", "rate",
                                              "rate maxpool=gate calibration=light", "rate normalization=ltb", "ttfs"]
    plain = vgg[vgg["series"] == "rate"].sort_values("T")
    assert plain["T"].tolist() == [4, 8] and plain["acc"].tolist() == [0.5, 0.7]
    assert vgg[vgg["series"] == "ttfs"]["T"].tolist() == [16]
    notes = []
    real = figures.plt.Axes.annotate
    monkeypatch.setattr(figures.plt.Axes, "annotate", lambda self, text, *a, **k: notes.append(text) or real(
        self, text, *a, **k))
    fig = figures.energy_by_timesteps(runs, tmp_path, "cmos45-fp32")
    assert fig.path.exists() and sorted(notes) == sorted(["T=4", "T=8", "T=8", "T=8", "T=8", "T=16", "T=8"])
