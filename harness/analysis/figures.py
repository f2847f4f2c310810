"""The report's seaborn figures, each drawn from the runs that support it.

Every function takes a :class:`~harness.analysis.runs.RunTable`, an output directory and the energy
model, and returns a :class:`Figure`, or raises :class:`Missing` saying which runs would draw it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..io import write_atomic
from .runs import RunTable

sns.set_theme(style="whitegrid", context="notebook")


class Missing(Exception):
    """A figure the runs cannot support; the message says what would."""


@dataclass
class Figure:
    key: str
    title: str
    path: Path
    caption: str


def pareto_mask(points: np.ndarray, maximize: tuple[bool, ...]) -> np.ndarray:
    """Rows not dominated by any other row (``maximize`` per column)."""
    signs = np.where(np.array(maximize), -1.0, 1.0)
    p = points * signs  # now minimise every column
    ok = np.isfinite(p).all(axis=1)
    mask = np.zeros(len(p), dtype=bool)
    for i in np.flatnonzero(ok):
        others = p[ok]
        dominated = np.any(np.all(others <= p[i], axis=1) & np.any(others < p[i], axis=1))
        mask[i] = not dominated
    return mask


def _save(fig, out: Path, key: str) -> Path:
    path = out / f"{key}.png"
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, dpi=110, format="png"), binary=True)
    plt.close(fig)
    return path


def _labelled(df: pd.DataFrame) -> pd.Series:
    return df["method"] + " / " + df["model"].fillna("?")


def accuracy_vs_cost(runs: RunTable, out: Path, energy_model: str, cost: str) -> Figure:
    """Accuracy against energy (or SynOps) for every run, ANN baselines included, Pareto front drawn."""
    df = runs.df[runs.df["test/accuracy"].notna()].copy()
    if cost == "energy":
        key, ann_key = f"energy_nJ/{energy_model}", f"ann/energy_nJ/{energy_model}"
        xlabel, fig_key = f"energy per inference on {energy_model} (nJ, log scale)", "accuracy_vs_energy"
    else:
        key, ann_key, xlabel, fig_key = "synops", None, "synaptic operations per inference (log scale)", "accuracy_vs_synops"
    if key not in df or df[key].notna().sum() == 0:
        raise Missing(f"no run has the metric {key}")
    df = df[df[key] > 0]
    if df.empty:
        raise Missing(f"no run has {key} > 0")
    pts = df[[key, "test/accuracy"]].copy()
    pts["series"] = _labelled(df)
    pts["dataset"] = df["dataset"].fillna("?")
    if ann_key and ann_key in df:
        ann = df.drop_duplicates(["model", "dataset"])[[ann_key, "ann/test/accuracy", "model", "dataset"]].dropna()
        ann = ann.rename(columns={ann_key: key, "ann/test/accuracy": "test/accuracy"})
        ann["series"] = "ann / " + ann["model"]
        pts = pd.concat([pts, ann[[key, "test/accuracy", "series", "dataset"]]], ignore_index=True)
    # one panel and one Pareto front per data set: accuracies on different data do not compare
    datasets = sorted(pts["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets) + 2, 5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        sub = pts[pts["dataset"] == ds]
        sns.scatterplot(data=sub, x=key, y="test/accuracy", hue="series", style="series", s=60, ax=ax)
        front = sub[pareto_mask(sub[[key, "test/accuracy"]].to_numpy(float), (False, True))].sort_values(key)
        ax.plot(front[key], front["test/accuracy"], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(f"data set: {ds}", fontsize=10)
        ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    title = f"Accuracy vs {'energy' if cost == 'energy' else 'SynOps'}"
    n = len(datasets)
    return Figure(fig_key, title, _save(fig, out, fig_key),
                  f"{len(pts)} points, one panel per data set ({n}); dashed: that data set's Pareto front (no "
                  "point is both more accurate and cheaper).")


def accuracy_vs_time(runs: RunTable, out: Path, energy_model: str) -> Figure:
    """Accuracy at every time step (rate, surrogate) and accuracy vs t_max (ttfs)."""
    # One curve per series, from its most accurate run: a study leaves dozens of runs at scattered
    # settings, and a mean over them would describe no configuration.
    curves = []
    df = runs.best("rate", "surrogate")
    df = df.assign(series=df["method"] + " / " + df["model"] + " / " + df["dataset"] + np.where(
        df["method"].str.endswith("surrogate"), " T=" + df.get("p.timesteps", pd.Series("?", df.index)).astype(str), ""))
    for _, r in df.drop_duplicates("series").iterrows():
        acc = runs.history(r.run_id, "test/accuracy_at_t")
        curves += [dict(x=t + 1, acc=a, series=r.series, panel="rate / surrogate: accuracy vs time step")
                   for t, a in enumerate(acc)]
    df = runs.best("ttfs")
    sweeps = df.get("p.t_max_sweep", pd.Series("", df.index)).map(
        lambda v: [int(t) for t in str(v).strip("()").split(",") if t.strip().isdigit()])
    # labelled with the full method chain: a prune+ttfs run is its own series, not "ttfs"
    df = df.assign(sweep=sweeps, series=df["method"] + " / " + df["model"] + " / " + df["dataset"])
    for _, r in df[sweeps.map(len) > 0].drop_duplicates("series").iterrows():
        acc = runs.history(r.run_id, "ttfs/test/accuracy_vs_t_max")
        if len(r.sweep) == len(acc):
            curves += [dict(x=t, acc=a, series=r.series, panel="ttfs: accuracy vs t_max")
                       for t, a in zip(r.sweep, acc)]
    if not curves:
        raise Missing("no rate/surrogate run with test/accuracy_at_t and no ttfs run with a t_max sweep")
    df = pd.DataFrame(curves).groupby(["panel", "series", "x"], as_index=False)["acc"].mean()
    panels = sorted(df["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = df[df["panel"] == panel]
        sns.lineplot(data=sub, x="x", y="acc", hue="series", marker="o", ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T (log₂)" if "step" in panel else "t_max (time steps per stage, log₂)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7)
    return Figure("accuracy_vs_time", "Accuracy vs latency", _save(fig, out, "accuracy_vs_time"),
                  "The most accurate run of each method × model × data set (and, for surrogate, each T): "
                  "rate and surrogate runs decode at every step; ttfs runs sweep t_max.")


# conversion options that name a variant of a method in the latency figures (value shown when present)
VARIANT_PARAMS = {"p.normalization": ("max", "channel", "ltb"), "p.maxpool": ("gate", "avg"),
                  "p.calibration": ("bias", "light")}


def _latency_points(runs: RunTable, energy_model: str) -> pd.DataFrame:
    """One point per method variant × model × data set × T (the run's ``timesteps``, ``t_max`` for
    ttfs): the most accurate full-test run there, with its energy and its ANN's."""
    df = runs.of("rate", "qcfs", "ttfs", "surrogate")
    for subset in ("eval_limit", "p.eval_samples"):  # full test sets only
        if subset in df:
            df = df[pd.to_numeric(df[subset], errors="coerce").fillna(0) == 0]
    last = df["method"].str.split("+").str[-1]
    col = lambda c: pd.to_numeric(df[c], errors="coerce") if c in df else pd.Series(np.nan, df.index)
    T = col("p.timesteps").where(last != "ttfs", col("p.t_max"))
    series = df["method"].astype(str)
    for key, shown in VARIANT_PARAMS.items():
        if key in df:
            v = df[key].astype(str)
            series = series + np.where(v.isin(shown), " " + key[2:] + "=" + v, "")
    if "p.levels" in df:
        series = series + np.where(last == "qcfs", " L=" + df["p.levels"].astype(str), "")
    energy, ann_energy = f"energy_nJ/{energy_model}", f"ann/energy_nJ/{energy_model}"
    pts = pd.DataFrame({"T": T, "series": series, "panel": df["model"].fillna("?") + " / " + df["dataset"].fillna("?"),
                        "acc": df["test/accuracy"], "energy": col(energy), "ann_acc": col("ann/test/accuracy"),
                        "ann_energy": col(ann_energy), "start_time": col("start_time")})
    pts = pts[pts["T"].notna()]
    if pts.empty:
        raise Missing("no full-test rate, qcfs, ttfs or surrogate run with a number of time steps")
    return (pts.sort_values(["acc", "start_time"], ascending=False)
            .drop_duplicates(["panel", "series", "T"]).sort_values(["panel", "series", "T"]))


def accuracy_vs_timesteps(runs: RunTable, out: Path, energy_model: str) -> Figure:
    """Accuracy against the number of time steps T, one line per method variant, one panel per
    model × data set, the ANN's accuracy as a dashed line."""
    pts = _latency_points(runs, energy_model)
    panels = sorted(pts["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2, 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = pts[pts["panel"] == panel]
        sns.lineplot(data=sub, x="T", y="acc", hue="series", style="series", marker="o", ax=ax)
        if sub["ann_acc"].notna().any():
            ax.axhline(float(sub["ann_acc"].max()), color="k", ls="--", lw=1, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("time steps T (t_max for ttfs; log₂)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return Figure("accuracy_vs_timesteps", "Accuracy vs time steps", _save(fig, out, "accuracy_vs_timesteps"),
                  f"{len(pts)} points: the most accurate full-test run of each method variant at each T, one "
                  "panel per model / data set; dashed: the ANN.")


def energy_by_timesteps(runs: RunTable, out: Path, energy_model: str) -> Figure:
    """Accuracy against energy with each point labelled by its T, the ANN as a star and a dotted
    line: where a spiking network first costs less than the ANN at (nearly) its accuracy."""
    pts = _latency_points(runs, energy_model)
    pts = pts[pts["energy"] > 0]
    if pts.empty:
        raise Missing(f"no rate, qcfs, ttfs or surrogate run has energy_nJ/{energy_model}")
    panels = sorted(pts["panel"].unique())
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels) + 2, 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        sub = pts[pts["panel"] == panel]
        sns.scatterplot(data=sub, x="energy", y="acc", hue="series", style="series", s=50, ax=ax)
        for _, r in sub.iterrows():
            ax.annotate(f"T={int(r['T'])}", (r["energy"], r["acc"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
        front = sub[pareto_mask(sub[["energy", "acc"]].to_numpy(float), (False, True))].sort_values("energy")
        ax.plot(front["energy"], front["acc"], "k--", lw=1, label="Pareto front")
        ann = sub.dropna(subset=["ann_energy", "ann_acc"])
        if not ann.empty:
            e, a = float(ann["ann_energy"].iloc[0]), float(ann["ann_acc"].max())
            ax.scatter([e], [a], marker="*", s=160, color="k", label="ANN", zorder=5)
            ax.axvline(e, color="k", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(f"energy per inference on {energy_model} (nJ, log scale)")
        ax.set_ylabel("test accuracy (fraction)")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    return Figure("energy_by_timesteps", f"Accuracy vs energy by time steps ({energy_model})",
                  _save(fig, out, "energy_by_timesteps"),
                  f"{len(pts)} points labelled with their T, one panel per model / data set; star and dotted line: "
                  "the ANN. A point left of the dotted line costs less than the ANN; dashed: the Pareto front.")


@dataclass(frozen=True)
class Panel:
    """One heatmap of a figure: the value per cell and how it is coloured."""

    value: str = "test/accuracy"
    label: str = "test accuracy (fraction)"
    fmt: str = ".3f"
    cmap: str = "viridis"
    center: float | None = None


def _heatmap(df: pd.DataFrame, row: str, col: str, out: Path, key: str, title: str, xlabel: str,
             ylabel: str, caption: str, panels: tuple[Panel, ...] = (Panel(),)) -> Figure:
    """Heatmaps of ``df`` over row × col side by side (mean per cell), one per panel."""
    tables = [_pivot(df, row, col, p.value) for p in panels]
    width = 1.2 * tables[0].shape[1] + 3
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels), 0.7 * tables[0].shape[0] + 2.5),
                             squeeze=False)
    wrapped = "\n".join(textwrap.wrap(title, int(width * len(panels) * 11)))
    for ax, p, table in zip(axes[0], panels, tables):
        sns.heatmap(table, annot=True, fmt=p.fmt, cmap=p.cmap, center=p.center, ax=ax, cbar_kws={"label": p.label})
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(wrapped if len(panels) == 1 else p.label, fontsize=10)
    if len(panels) > 1:
        fig.suptitle(wrapped, fontsize=10)
    return Figure(key, title, _save(fig, out, key), caption)


def _pivot(df: pd.DataFrame, row: str, col: str, value: str) -> pd.DataFrame:
    return df.pivot_table(index=row, columns=col, values=value, aggfunc="mean").sort_index().sort_index(axis=1)


def _numeric(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = pd.to_numeric(df[c].replace({"None": np.nan, "none": np.nan}), errors="coerce")
    return df


def _grid_core(df: pd.DataFrame, x: str, y: str, hold: tuple[str, ...]) -> pd.DataFrame:
    """The largest x × y grid among runs that agree on ``hold``.

    A search mixes grid studies with TPE trials at unrepeated continuous values and with runs of
    other models or T; averaging them into one heatmap would be misleading. Within each group of
    runs sharing ``hold``, keep only x values met with at least 2 y values and vice versa (repeat
    until stable), then return the group with the most filled cells (empty if none reaches 2 × 2).
    """
    best, best_cells = df.iloc[0:0], 0
    for _, g in df.groupby([h for h in hold if h in df], sort=False, dropna=False):
        g = g.dropna(subset=[x, y])
        while True:
            xs = g.groupby(x)[y].nunique()
            ys = g.groupby(y)[x].nunique()
            core = g[g[x].isin(xs[xs >= 2].index) & g[y].isin(ys[ys >= 2].index)]
            if len(core) == len(g):
                break
            g = core
        cells = len(g.drop_duplicates([x, y]))
        if g[x].nunique() >= 2 and g[y].nunique() >= 2 and cells > best_cells:
            best, best_cells = g, cells
    return best


def synapse_scale_heatmap(runs: RunTable, out: Path, energy_model: str) -> Figure:
    df = runs.of("rate")
    if df.empty or "p.synapse" not in df or "p.scale_firing_rates" not in df:
        raise Missing("no rate runs (a grid study: --grid synapse=... --grid scale_firing_rates=...)")
    df = df.assign(**{"p.synapse": df["p.synapse"].replace({"None": "0", "none": "0"})})  # no filter = τ 0
    df = _numeric(df, "p.synapse", "p.scale_firing_rates", "p.timesteps")
    df = _grid_core(df, "p.synapse", "p.scale_firing_rates", ("method", "model", "dataset", "p.timesteps"))
    if df.empty:
        raise Missing("rate runs of one model and T cover fewer than 2 synapse × 2 scale_firing_rates values")
    r = df.iloc[0]
    return _heatmap(df, "p.synapse", "p.scale_firing_rates", out, "synapse_scale_heatmap",
                    f"{r.method}: accuracy over synapse × scale_firing_rates ({r.model}, {r.dataset}, "
                    f"T={int(r['p.timesteps'])}; deutsch-*, 2-D optimisation)",
                    "scale_firing_rates (factor)", "synapse τ (s; 0 = no filter)",
                    f"{len(df)} {r.method} runs of {r.model} on {r.dataset} at T = {int(r['p.timesteps'])}; "
                    "mean accuracy per cell.")


def layer_scaling_gains(runs: RunTable, out: Path, energy_model: str) -> Figure:
    rows = []
    for _, r in runs.of("layer-scaling").iterrows():
        path = runs.artifact(r.run_id, "layer_scaling.csv")
        if path is None:
            continue
        t = pd.read_csv(path)
        t = t[t["layers"] != "base"]
        t["network"] = f"{r.model} (T={r.get('p.timesteps')}, s={r.get('p.scale_firing_rates')}, boost {r.get('p.boost')})"
        t["rho"] = r.get("layer_scaling/rate_gain_spearman")
        rows.append(t)
    if not rows:
        raise Missing("no layer-scaling run with a layer_scaling.csv artifact")
    df = pd.concat(rows, ignore_index=True)
    df = df[~df["layers"].str.contains(":")]  # single layers; pairs are in the CSV
    nets = list(df["network"].unique())
    fig, axes = plt.subplots(len(nets), 3, figsize=(15, 3.2 * len(nets)), squeeze=False)
    for (ax1, ax2, ax3), net in zip(axes, nets):
        sub = df[df["network"] == net]
        sns.barplot(data=sub, x="layers", y="accuracy_gain", ax=ax1, color="tab:blue")
        ax1.set_ylabel("accuracy gain (fraction)")
        ax1.set_xlabel("boosted layer")
        ax1.set_title(net, fontsize=9)
        sns.barplot(data=sub, x="layers", y="gain_per_extra_spike", ax=ax2, color="tab:orange")
        ax2.set_ylabel("gain per extra spike (1/spike)")
        ax2.set_xlabel("boosted layer")
        _rate_vs_gain(sub, ax3)
    return Figure("layer_scaling_gains", "Per-layer scaling gains (deutsch-*)", _save(fig, out, "layer_scaling_gains"),
                  "Boosting one layer's firing-rate scale at a time: accuracy gained, gained per extra spike, and "
                  "the layer's base firing rate against its gain per extra spike with Spearman's ρ (the seed's "
                  "explanation — boosts pay in layers that fire less — predicts ρ < 0).")


def _rate_vs_gain(sub: pd.DataFrame, ax) -> None:
    """Each layer's base firing rate against its gain per extra spike, labelled, with the run's ρ."""
    if "base_firing_rate_hz" not in sub or sub["base_firing_rate_hz"].isna().all():
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no firing rates in this run's table", ha="center", va="center", fontsize=8)
        return
    sns.scatterplot(data=sub, x="base_firing_rate_hz", y="gain_per_extra_spike", ax=ax, color="tab:green")
    for _, row in sub.iterrows():
        ax.annotate(str(row["layers"]), (row["base_firing_rate_hz"], row["gain_per_extra_spike"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    rho = sub["rho"].iloc[0] if "rho" in sub and pd.notna(sub["rho"].iloc[0]) else None
    ax.set_title("Spearman ρ = " + (f"{rho:+.2f}" if rho is not None else "undefined (< 3 layers or ties)"), fontsize=9)
    ax.set_xlabel("base firing rate of the layer (Hz)")
    ax.set_ylabel("gain per extra spike (1/spike)")


def firing_rate_distributions(runs: RunTable, out: Path, energy_model: str) -> Figure:
    from scipy import stats

    for _, r in runs.best("rate", "layer-scaling").iterrows():  # the most accurate run with the artifacts
        raw = runs.artifact(r.run_id, "firing_rates.npz")
        summ = runs.artifact(r.run_id, "firing_rates_summary.csv")
        if raw is None or summ is None:
            continue
        arrays = dict(np.load(raw))
        fits = pd.read_csv(summ).set_index("layer")
        layers = list(arrays)
        long = pd.concat([pd.DataFrame({"layer": k, "rate": v}) for k, v in arrays.items()], ignore_index=True)
        fig, axes = plt.subplots(1, 1 + len(layers), figsize=(4 * (1 + len(layers)), 4))
        sns.boxplot(data=long, x="layer", y="rate", ax=axes[0], showfliers=False)
        axes[0].set_ylabel("firing rate (Hz)")
        axes[0].set_xlabel("layer")
        axes[0].set_title("per-neuron rates", fontsize=10)
        for ax, name in zip(axes[1:], layers):
            v = arrays[name]
            active = v[v > 0]
            sns.histplot(active, bins=40, stat="density", ax=ax, color="tab:blue")
            fit = fits.loc[name] if name in fits.index else None
            if fit is not None and isinstance(fit.get("fit_params"), str) and fit["fit"] not in ("none", ""):
                params = [float(p) for p in fit["fit_params"].split()]
                xs = np.linspace(active.min(), active.max(), 200) if len(active) else np.array([])
                if len(xs):
                    ax.plot(xs, getattr(stats, fit["fit"]).pdf(xs, *params), "r-", lw=1.5,
                            label=f"{fit['fit']} fit (KS {float(fit['fit_ks']):.3f})")
                    ax.legend(fontsize=7)
            ax.set_xlabel("firing rate of active neurons (Hz)")
            ax.set_ylabel("density (1/Hz)")
            ax.set_title(f"{name}: {100 * float((v == 0).mean()):.0f}% silent", fontsize=10)
        return Figure("firing_rates", f"Firing-rate statistics ({r.method} / {r.model}, run {r.run_id[:8]})",
                      _save(fig, out, "firing_rates"),
                      "Box plots of every neuron's rate per layer; histograms of active neurons with the best "
                      "of normal/exponential/gamma/log-normal fits (deutsch-*, Firing Rate Statistics).")
    raise Missing("no rate/layer-scaling run with firing_rates.npz")


def pruning_curve(runs: RunTable, out: Path, energy_model: str) -> Figure:
    df = runs.pruned().copy()
    if df.empty:
        raise Missing("no prune runs")
    df["series"] = df["method"] + " / " + df["model"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=df.sort_values("connection_sparsity"), x="connection_sparsity", y="test/accuracy",
                 hue="series", marker="o", ax=ax)
    ax.set_xlabel("connection sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (fraction)")
    return Figure("pruning", "Pruning: sparsity vs accuracy (deutsch-*)", _save(fig, out, "pruning"),
                  f"{len(df)} run{'s' * (len(df) != 1)}; the seed's CNN stops recovering at about 80 % sparsity.")


def ttfs_fig2(runs: RunTable, out: Path, energy_model: str) -> Figure:
    df = runs.of("ttfs")  # plain ttfs runs first (newest first), then chains ending in ttfs
    df = df.assign(chain=df["method"] != "ttfs").sort_values(["chain", "start_time"], ascending=[True, False])
    for _, r in df.iterrows():
        path = runs.artifact(r.run_id, "ttfs_fig2_rmse.csv")
        if path is None:
            continue
        df = pd.read_csv(path)
        return _heatmap(df, "u_th_fraction", "t_max", out, "ttfs_fig2",
                        f"TTFS layer RMSE over t_max × u_th ({r.method} / {r.model}, run {r.run_id[:8]})",
                        "t_max (time steps)", "u_th / u_max", "RMSE of the first layer's output against the "
                        "ANN (lopez-randulfe-*, Fig. 2); lower is better.",
                        (Panel("rmse", "RMSE of the first layer's output (ANN activation units)"),))
    raise Missing("no ttfs run with ttfs_fig2_rmse.csv (fig2=true)")


def surrogate_grid(runs: RunTable, out: Path, energy_model: str) -> Figure:
    df = runs.of("surrogate")
    if df.empty or "p.width" not in df:
        raise Missing("no surrogate runs")
    df = _numeric(df, "p.width", "p.height", "p.timesteps", "p.epochs")
    df = _grid_core(df, "p.width", "p.height",
                    ("method", "model", "dataset", "p.timesteps", "p.epochs", "p.surrogate"))
    if df.empty:
        raise Missing("surrogate runs of one model, T and epoch count cover fewer than 2 widths γ × 2 heights β")
    r = df.iloc[0]
    T, epochs = int(r["p.timesteps"]), int(r["p.epochs"])
    title = (f"surrogate: accuracy and gradient flow over width γ × height β ({r.model}, {r.dataset}, T={T}, "
             f"{epochs} epochs; escudero-*)")
    panels: tuple[Panel, ...] = (Panel(),)
    caption = f"{len(df)} surrogate runs of {r.model} on {r.dataset} at T = {T}, {epochs} epochs; mean per cell."
    ratio = "surrogate/grad_norm_ratio"
    if ratio in df and df[ratio].gt(0).any():
        df = df.assign(log_ratio=np.log10(df[ratio].where(df[ratio] > 0)))
        panels += (Panel("log_ratio", "log₁₀(first-layer / last-layer weight-gradient norm)", ".1f", "vlag", 0),)
        caption += (" Right: below 0 the gradient vanishes towards the input, above 0 it grows (the seed's "
                    "vanishing/exploding gradients).")
    return _heatmap(df, "p.height", "p.width", out, "surrogate_grid", title,
                    "surrogate width γ (membrane-potential units)", "surrogate height β", caption, panels)


def sharpen_schedule(runs: RunTable, out: Path, energy_model: str) -> Figure:
    """Validation accuracy against the sharpening schedule, per epoch, for the best sharpen run of
    each model and data set: as trained (current sharpness), as it would be if every layer were a
    step function at that epoch, and each layer's sharpness."""
    df = runs.best("sharpen")
    df = df.assign(series=df["method"] + " / " + df["model"] + " / " + df["dataset"]).drop_duplicates("series")
    acc, sharp = [], []
    for _, r in df.head(4).iterrows():
        for key, label in (("sharpen/val/accuracy", "as trained"),
                           ("sharpen/val/accuracy_sharpened", "all layers stepped")):
            acc += [dict(epoch=e + 1, acc=a, series=r.series, curve=label) for e, a in enumerate(runs.history(r.run_id, key))]
        layers = [c for c in df.columns if c.startswith("sharpen/sharpness/") and c != "sharpen/sharpness_reached"
                  and pd.notna(r.get(c))]
        for c in layers:
            sharp += [dict(epoch=e + 1, sharpness=v, series=r.series, layer=c.rsplit("/", 1)[-1])
                      for e, v in enumerate(runs.history(r.run_id, c))]
    if not acc:
        raise Missing("no sharpen run on a full test set with per-epoch validation curves")
    acc_df, sharp_df = pd.DataFrame(acc), pd.DataFrame(sharp)
    series = sorted(acc_df["series"].unique())
    fig, axes = plt.subplots(2, len(series), figsize=(6 * len(series), 7), squeeze=False, sharex="col")
    for i, name in enumerate(series):
        sns.lineplot(data=acc_df[acc_df["series"] == name], x="epoch", y="acc", hue="curve", marker="o", ax=axes[0][i])
        axes[0][i].set_title(name, fontsize=10)
        axes[0][i].set_ylabel("validation accuracy (fraction)")
        axes[0][i].legend(fontsize=7)
        sub = sharp_df[sharp_df["series"] == name] if not sharp_df.empty else sharp_df
        if not sub.empty:
            sns.lineplot(data=sub, x="epoch", y="sharpness", hue="layer", marker=".", ax=axes[1][i])
            axes[1][i].legend(fontsize=7, title="layer")
        axes[1][i].set_ylabel("sharpness at the epoch's end")
        axes[1][i].set_xlabel("epoch")
    return Figure("sharpen_schedule", "sharpen: accuracy against the sharpening schedule (sandia-whetstone-*)",
                  _save(fig, out, "sharpen_schedule"),
                  f"{len(series)} best sharpen run(s). Top: validation accuracy at each epoch's end as trained and "
                  "with every layer a step function (what the network would score if sharpening stopped "
                  "there); bottom: each layer's sharpness (bottom-up schedules sharpen one layer at a time, the "
                  "readout last).")


FIGURES = (
    ("accuracy_vs_energy", lambda r, o, e: accuracy_vs_cost(r, o, e, "energy")),
    ("accuracy_vs_synops", lambda r, o, e: accuracy_vs_cost(r, o, e, "synops")),
    ("accuracy_vs_time", accuracy_vs_time),
    ("accuracy_vs_timesteps", accuracy_vs_timesteps),
    ("energy_by_timesteps", energy_by_timesteps),
    ("synapse_scale_heatmap", synapse_scale_heatmap),
    ("layer_scaling_gains", layer_scaling_gains),
    ("firing_rates", firing_rate_distributions),
    ("pruning", pruning_curve),
    ("sharpen_schedule", sharpen_schedule),
    ("ttfs_fig2", ttfs_fig2),
    ("surrogate_grid", surrogate_grid),
)
