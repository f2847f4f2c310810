"""``harness report``: leaderboard, reproduction tables and figures from an MLflow experiment.

Writes into ``--out``: ``report.html`` (self-contained: figures embedded, every string from runs
HTML-escaped, sortable leaderboard), ``report.md`` (tables + PNG links), ``leaderboard.csv``,
``runs.csv`` and one PNG per figure. Reads MLflow only; never imports the methods.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..io import ensure_writable_dir, write_atomic
from ..metrics import SCHEMA
from .runs import ReportError, RunTable, load_runs

# Better direction of each leaderboard column (energy columns, added per energy model, are "min").
# Leaderboard columns and the metric each shows: their better direction comes from the metric schema.
LEADERBOARD_COLUMNS = {
    "accuracy": "test/accuracy", "drop": "test/accuracy_drop", "spikes_per_neuron": "spikes_per_neuron",
    "synops": "synops", "macs": "macs", "latency_steps": "timesteps",
}
LEADERBOARD_DIRECTIONS = {col: SCHEMA.better(key) for col, key in LEADERBOARD_COLUMNS.items()}
ENERGY_COLUMN = "energy[{}] (nJ)"

# Figures the seeds report (paper data sets named), next to which the harness's own are shown.
PAPER: dict[str, Any] = {
    "lopez-randulfe (ttfs)": dict(data="MNIST 60k, the paper's CNN", ann_accuracy=0.9956, accuracy=0.9944,
                                  spikes_per_neuron=0.142, synops=1_015_015, ann_flops=14_316_496),
    "sandia (sharpen)": {  # original / spiking accuracy, MNIST 60k
        "stpu-dnn": (0.973, 0.973), "stpu-cnn": (0.971, 0.949), "cnn-restricted": (0.985, 0.973),
        "cnn-unrestricted": (0.991, 0.985)},
    "escudero (surrogate)": dict(data="MNIST 60k (Ledinauskas et al.)", accuracy=0.9940),
    "deutsch (rate, prune)": dict(data="MNIST, the poster's DNN and CNN", prune_recovers_up_to=0.80,
                                  best_layer_dnn="last dense layer", best_layer_cnn="first conv layer"),
}


@dataclass
class ReportOutput:
    out_dir: Path
    experiment: str
    runs: int
    files: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> runs not admitted


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.{digits}g}"
    return str(v)


def leaderboard(runs: RunTable, energy_models: list[str], energy_model: str) -> pd.DataFrame:
    """One row per method × model × data set: its most accurate run (ties: the cheaper one).

    Trials evaluated on a test subset (``eval_limit``) are left out: rows compare full test sets.
    """
    df = runs.df[runs.df["test/accuracy"].notna() & (runs.df["eval_limit"] == 0)].copy()
    if df.empty:
        return pd.DataFrame()
    ekey = f"energy_nJ/{energy_model}"
    df["_cost"] = df[ekey] if ekey in df else 0.0
    df = df.sort_values(["test/accuracy", "_cost"], ascending=[False, True])
    rows = []
    if "data_kind" not in df:
        df["data_kind"] = "static"
    for (method, model, dataset), g in df.groupby(["method", "model", "dataset"], sort=False):
        best = g.iloc[0]
        row = dict(method=method, model=model, dataset=dataset, data=best["data_kind"], runs=len(g),
                   accuracy=best["test/accuracy"], ann_accuracy=best.get("ann/test/accuracy"),
                   drop=best.get("test/accuracy_drop"), spikes_per_neuron=best.get("spikes_per_neuron"),
                   synops=best.get("synops"), macs=best.get("macs"), latency_steps=best.get("timesteps"))
        for em in energy_models:
            row[ENERGY_COLUMN.format(em)] = best.get(f"energy_nJ/{em}")
        row["run_id"] = best["run_id"]
        rows.append(row)
    lb = pd.DataFrame(rows)
    from .figures import pareto_mask

    ecol = ENERGY_COLUMN.format(energy_model)
    cols = ["accuracy", ecol] if ecol in lb else ["accuracy"]
    mark = pd.Series("", index=lb.index)
    for _, g in lb.groupby("dataset"):  # Pareto within a data set: only like compares with like
        m = pareto_mask(g[cols].to_numpy(float), (True, False)[:len(cols)])
        mark[g.index[m]] = "★"
    lb.insert(0, "pareto", mark)
    # images first, then event data: the two never share a Pareto front, and their rows stay apart
    lb["_events"] = lb["data"] == "events"
    return lb.sort_values(["_events", "accuracy"], ascending=[True, False]).drop(columns="_events").reset_index(
        drop=True)


def energy_models_table(runs: RunTable, arithmetic: str = "cmos45-fp32") -> pd.DataFrame:
    """Per method × model × data set (its most accurate full-test run): the energy ratio to the ANN
    under an arithmetic-only model beside every memory-aware model's, and the rank each gives."""
    from ..energy import ENERGY_MODELS, LemaireModel

    aware = [m for m, obj in ENERGY_MODELS.usable() if isinstance(obj, LemaireModel)
             and f"energy_ratio/{m}" in runs.df]
    key = f"energy_ratio/{arithmetic}"
    best = runs.best(*runs.df["method"].dropna().str.split("+").str[-1].unique())
    if not aware or key not in best or best.empty:
        return pd.DataFrame()
    best = best.drop_duplicates(["method", "model", "dataset"])
    rows = []
    for _, b in best.iterrows():
        row = {"method": b["method"], "model": b["model"], "data": b["dataset"], "accuracy": b["test/accuracy"],
               f"ratio ({arithmetic})": b.get(key)}
        for m in aware:
            row[f"ratio ({m})"] = b.get(f"energy_ratio/{m}")
            row[f"memory share ({m})"] = (b.get(f"energy_parts_nJ/{m}/memory") / b.get(f"energy_nJ/{m}")
                                          if b.get(f"energy_nJ/{m}") else None)
        rows.append(row)
    t = pd.DataFrame(rows)
    for col in [c for c in t.columns if c.startswith("ratio (")]:
        t[col.replace("ratio", "rank")] = t.groupby("data")[col].rank(method="min")
    return t.sort_values(["data", f"ratio ({arithmetic})"]).reset_index(drop=True)


def whetstone_table(runs: RunTable) -> pd.DataFrame:
    df = runs.best("sharpen").drop_duplicates(["model", "dataset"])
    if df.empty:
        return pd.DataFrame()
    rows = []
    for _, b in df.sort_values(["model", "dataset"]).iterrows():
        paper = PAPER["sandia (sharpen)"].get(b.model)
        rows.append({"network": b.model, "data": b.dataset, "ANN (ReLU) accuracy": b.get("ann/test/accuracy"),
                     "bounded-ReLU before sharpening": b.get("sharpen/brelu/test/accuracy"),
                     "sharpened (1 step) accuracy": b["test/accuracy"],
                     "ties": b.get("sharpen/ties"),
                     "spikes/neuron": b.get("spikes_per_neuron"), "SynOps": b.get("synops"),
                     "paper original (MNIST 60k)": paper[0] if paper else None,
                     "paper spiking (MNIST 60k)": paper[1] if paper else None})
    return pd.DataFrame(rows)


def reproduction(runs: RunTable) -> pd.DataFrame:
    """The seeds' figures next to the harness's best runs on its own data."""
    rows = []

    def best(method: str, model: str | None = None):
        df = runs.best(method)
        df = df[df["method"] == method]  # the seed's method itself: a chain (prune+ttfs) is another method
        df = df[df["model"] == model] if model else df
        return None if df.empty else df.iloc[0]

    p = PAPER["lopez-randulfe (ttfs)"]
    b = best("ttfs")
    here = f"{b['dataset']} / {b['model']}" if b is not None else "no ttfs run"
    for q, key, pv in (("ANN accuracy", "ann/test/accuracy", p["ann_accuracy"]), ("SNN accuracy", "test/accuracy", p["accuracy"]),
                       ("spikes per neuron", "spikes_per_neuron", p["spikes_per_neuron"]),
                       ("SNN synaptic operations", "synops", p["synops"]), ("ANN MACs (paper: FLOPs)", "ann/macs", p["ann_flops"])):
        rows.append(dict(seed="lopez-randulfe (ttfs)", quantity=q, paper=pv, paper_data=p["data"],
                         harness=None if b is None else b.get(key), harness_data=here))
    p = PAPER["escudero (surrogate)"]
    b = best("surrogate")
    rows.append(dict(seed="escudero (surrogate)", quantity="SNN accuracy (backprop)", paper=p["accuracy"],
                     paper_data=p["data"], harness=None if b is None else b["test/accuracy"],
                     harness_data="no surrogate run" if b is None else
                     f"{b['dataset']} / {b['model']}, T={b.get('p.timesteps')}"))
    for model, (orig, spk) in PAPER["sandia (sharpen)"].items():
        b = best("sharpen", model)
        rows.append(dict(seed="sandia (sharpen)", quantity=f"{model}: original → spiking accuracy",
                         paper=f"{orig:.3f} → {spk:.3f}", paper_data="MNIST 60k",
                         harness=None if b is None else f"{b['ann/test/accuracy']:.3f} → {b['test/accuracy']:.3f}",
                         harness_data="no run" if b is None else b["dataset"]))
    p = PAPER["deutsch (rate, prune)"]
    pruned = runs.pruned()
    pr = pruned[pruned["method"] == "prune"]  # the seed prunes the ANN: chains add a conversion's loss
    chains = len(pruned) - len(pr)
    recover = None
    if not pr.empty:
        ok = pr[pr["test/accuracy"] >= pr["ann/test/accuracy"] - 0.01]
        recover = float(ok["connection_sparsity"].max()) if not ok.empty else 0.0
    rows.append(dict(seed="deutsch (prune)", quantity="largest sparsity that recovers (within 1 pt of the ANN)",
                     paper=p["prune_recovers_up_to"], paper_data=p["data"] + " (training accuracy)", harness=recover,
                     harness_data=(", ".join(sorted(set(pr["dataset"] + " / " + pr["model"]))) if not pr.empty else
                                   "no plain prune run" + (f" ({chains} chain run{'s' * (chains != 1)} in the pruning "
                                                           "figure; a conversion's loss would mix in)" if chains else ""))))
    for _, r in runs.of("layer-scaling").iterrows():
        path = runs.artifact(r.run_id, "layer_scaling.csv")
        if path is None:
            continue
        t = pd.read_csv(path)
        t = t[(t["layers"] != "base") & ~t["layers"].str.contains(":")]
        if t.empty:
            continue
        top = t.sort_values("gain_per_extra_spike", ascending=False).iloc[0]["layers"]
        paper = p["best_layer_dnn"] if "dnn" in str(r.model) else p["best_layer_cnn"]
        rows.append(dict(seed="deutsch (layer-scaling)", quantity=f"layer whose boost buys most accuracy per spike ({r.model})",
                         paper=paper, paper_data=p["data"], harness=top,
                         harness_data=f"{r.dataset} / {r.model}, T={r.get('p.timesteps')}"))
        rho = r.get("layer_scaling/rate_gain_spearman")
        if rho is not None and pd.notna(rho):
            rows.append(dict(seed="deutsch (layer-scaling)",
                             quantity=f"rank correlation of a layer's firing rate and its gain per extra spike ({r.model})",
                             paper="negative (boosts pay in layers firing at lower rates)", paper_data=p["data"],
                             harness=f"{rho:+.2f} (p = {r.get('layer_scaling/rate_gain_pvalue', float('nan')):.2f})",
                             harness_data=f"{r.dataset} / {r.model}, T={r.get('p.timesteps')}"))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# writers


def _table_html(df: pd.DataFrame, table_id: str, sortable: bool = False, directions: dict | None = None) -> str:
    if df.empty:
        return "<p><em>no runs</em></p>"
    heads = []
    for i, c in enumerate(df.columns):
        d = (directions or {}).get(c, "")
        arrow = " ↑" if d == "max" else (" ↓" if d == "min" else "")
        title = f' title="better: {"higher" if d == "max" else "lower"}"' if d else ""
        onclick = f' onclick="sortTable(\'{table_id}\',{i})"' if sortable else ""
        heads.append(f"<th{title}{onclick}>{html.escape(str(c))}{arrow}</th>")
    body = []
    for _, row in df.iterrows():
        cells = []
        for c in df.columns:
            v = row[c]
            sort_key = v if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else ""
            if c == "run_id" and isinstance(v, str) and len(v) > 12:  # 32 hex digits would widen the page
                cells.append(f'<td title="{html.escape(v)}"><code>{html.escape(v[:8])}…</code></td>')
                continue
            cells.append(f'<td data-v="{html.escape(str(sort_key))}">{html.escape(_fmt(v))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div style="overflow-x:auto"><table id="{table_id}"><thead><tr>{"".join(heads)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def _md_escape(text: Any) -> str:
    """Text from runs as inert Markdown: no raw HTML (``<script>``, ``<img onerror>``), links,
    emphasis or table breaks."""
    s = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", s)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``+``, ``-``, ``@``,
    tab, CR) get a leading apostrophe, as OWASP's CSV-injection advice says; numbers stay numbers."""
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v)
    return out


def _table_md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_no runs_\n"
    esc = _md_escape
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(esc(_fmt(row[c])) for c in df.columns) + " |")
    return "\n".join(lines) + "\n"


_SORT_JS = """
function sortTable(id, col) {
  const t = document.getElementById(id), b = t.tBodies[0];
  const asc = t.dataset.col == col ? t.dataset.asc != 'true' : false;
  const rows = Array.from(b.rows);
  rows.sort((r1, r2) => {
    const a = r1.cells[col].dataset.v, c = r2.cells[col].dataset.v;
    const x = a === '' ? r1.cells[col].textContent : parseFloat(a), y = c === '' ? r2.cells[col].textContent : parseFloat(c);
    return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
  });
  rows.forEach(r => b.appendChild(r));
  t.dataset.col = col; t.dataset.asc = asc;
}
"""
_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0;cursor:pointer}td:first-child,th:first-child{text-align:center}
figure{margin:1.5em 0}figcaption{font-size:13px;color:#555}img{max-width:100%}
.missing{color:#a33}
"""


def build_report(experiment: str | None = None, out_dir: str | Path = "report", tracking_uri: str | None = None,
                 energy_model: str = "cmos45-fp32") -> ReportOutput:
    """Write the report (see the module docstring); a write that fails (a full disk) is a
    :class:`ReportError` naming the file; the store is only ever read."""
    try:
        return _build_report(experiment, out_dir, tracking_uri, energy_model)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ReportError(f"writing the report to {out_dir} failed{where}: {exc.strerror or exc}; the MLflow "
                          "store was only read and is unchanged") from None


def _build_report(experiment: str | None, out_dir: str | Path, tracking_uri: str | None,
                  energy_model: str) -> ReportOutput:
    from ..energy import ENERGY_MODELS
    from ..errors import UnknownNameError, set_phase

    usable = [m for m, _ in ENERGY_MODELS.usable()]
    if energy_model not in usable:
        raise UnknownNameError("energy model", energy_model, usable)
    out = ensure_writable_dir(Path(out_dir), "the report folder (--out)")  # before reading the store
    set_phase("reading the runs from the MLflow store")
    runs = load_runs(tracking_uri, experiment)
    set_phase(f"writing the report into {out}")
    out.mkdir(parents=True, exist_ok=True)
    res = ReportOutput(out, runs.experiment, len(runs.df))
    energy_models = [m for m in usable if f"energy_nJ/{m}" in runs.df]
    tables = dict(lb=leaderboard(runs, energy_models, energy_model), wt=whetstone_table(runs),
                  et=energy_models_table(runs), rep=reproduction(runs))
    figures = _draw_figures(runs, out, energy_model, res)
    needed = ["test/accuracy", "spikes_per_neuron", "synops", f"energy_nJ/{energy_model}"]
    absent = [k for k in needed if k not in runs.df or runs.df[k].isna().all()]
    if absent:
        res.missing.append("metrics absent from every run: " + ", ".join(absent))
    if tables["lb"].empty:
        res.missing.append("leaderboard: no finished run evaluated on the full test set")
    res.left_out = dict(runs.left_out)
    runs_csv, lb_csv = out / "runs.csv", out / "leaderboard.csv"
    runs_table = csv_safe(runs.df.drop(columns=["kind"], errors="ignore"))
    write_atomic(runs_csv, lambda f: runs_table.to_csv(f, index=False))
    lb_table = csv_safe(tables["lb"])
    write_atomic(lb_csv, lambda f: lb_table.to_csv(f, index=False))
    html_path, md_path = _write_pages(runs, out, tables, figures, energy_models, energy_model, res)
    res.files = [html_path, md_path, lb_csv, runs_csv, *[f.path for f in figures]]
    return res


def _draw_figures(runs, out: Path, energy_model: str, res: ReportOutput) -> list:
    """Every figure the runs have data for; what cannot be drawn is noted in ``res.missing``."""
    from .figures import FIGURES, Missing

    figures = []
    for key, fn in FIGURES:
        try:
            figures.append(fn(runs, out, energy_model))
        except Missing as exc:
            res.missing.append(f"{key}: {exc}")
    return figures


def _left_out_line(runs) -> str:
    if not runs.left_out:
        return ""
    total = sum(runs.left_out.values())
    return (f"{total} run{'s' if total > 1 else ''} left out of every table and figure: "
            + "; ".join(f"{n} × {why}" for why, n in sorted(runs.left_out.items())))


def _write_pages(runs, out: Path, tables: dict, figures: list, energy_models: list[str], energy_model: str,
                 res: ReportOutput) -> tuple[Path, Path]:
    """report.html (figures embedded) and report.md (figures beside it)."""
    left_line = _left_out_line(runs)
    # the page shows the chosen energy model's column only (every model's is in leaderboard.csv):
    # with all of them the table was wider than a 1400 px page
    others = [ENERGY_COLUMN.format(m) for m in energy_models if m != energy_model]
    lb_shown = tables["lb"].drop(columns=[c for c in others if c in tables["lb"]])
    directions = dict(LEADERBOARD_DIRECTIONS,
                      **{ENERGY_COLUMN.format(m): SCHEMA.better(f"energy_nJ/{m}") for m in energy_models})
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    intro = (f"experiment <b>{html.escape(runs.experiment)}</b> in <code>{html.escape(runs.tracking_uri)}</code>; "
             f"{len(runs.df)} runs; generated {stamp}; energy model for the Pareto mark: "
             f"{html.escape(energy_model)} (estimates from per-operation costs, not measurements).")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>snn-harness report: "
             f"{html.escape(runs.experiment)}</title><style>{_CSS}</style><script>{_SORT_JS}</script></head><body>",
             "<h1>snn-harness report</h1>", f"<p>{intro}</p>",
             f"<p class='missing'>{html.escape(left_line)}</p>" if left_line else "",
             "<h2>Leaderboard</h2><p>Best run per method × model × data set (full test sets only). "
             "★ = Pareto-optimal in accuracy and energy within its data set. ↑/↓: better direction; click a header to sort. "
             "Energy on the report's model (<code>--energy-model</code>); leaderboard.csv has every model's.</p>",
             _table_html(lb_shown, "leaderboard", sortable=True, directions=directions),
             "<h2>Reproduction tables</h2><p>Each seed's reported figure beside the harness's own, with both "
             "data sets named.</p>", _table_html(tables["rep"], "reproduction"),
             "<h2>Whetstone table (sandia-*)</h2>", _table_html(tables["wt"], "whetstone"),
             "<h2>Energy: arithmetic only vs memory traffic</h2><p>Energy ÷ the ANN's under the same model, per "
             "method's best run: cmos45-fp32 charges operations only; memory-aware models (Lemaire et al.) also "
             "charge reading inputs, weights and membrane potentials. Ranks are within a data set (1 = cheapest)."
             "</p>", _table_html(tables["et"], "energy-models"), "<h2>Figures</h2>"]
    md = [f"# snn-harness report\n\nexperiment `{runs.experiment}` in `{runs.tracking_uri}`; {len(runs.df)} runs; "
          f"generated {stamp}; Pareto mark on accuracy vs energy ({energy_model}).\n",
          f"{_md_escape(left_line)}\n" if left_line else "",
          "## Leaderboard\n", _table_md(lb_shown), "\n## Reproduction tables\n", _table_md(tables["rep"]),
          "\n## Whetstone table (sandia-*)\n", _table_md(tables["wt"]),
          "\n## Energy: arithmetic only vs memory traffic\n", _table_md(tables["et"]), "\n## Figures\n"]
    for f in figures:
        data = base64.b64encode(f.path.read_bytes()).decode()
        parts.append(f"<figure><h3>{html.escape(f.title)}</h3><img alt='{html.escape(f.title)}' "
                     f"src='data:image/png;base64,{data}'><figcaption>{html.escape(f.caption)}</figcaption></figure>")
        md.append(f"### {f.title}\n\n![{f.title}]({f.path.name})\n\n{f.caption}\n")
    if res.missing:
        parts.append("<h2>Not drawn</h2><ul>" + "".join(f"<li class='missing'>{html.escape(m)}</li>"
                                                          for m in res.missing) + "</ul>")
        md.append("## Not drawn\n\n" + "\n".join(f"- {m}" for m in res.missing) + "\n")
    parts.append("</body></html>")
    html_path, md_path = out / "report.html", out / "report.md"
    write_atomic(html_path, lambda f: f.write("\n".join(parts)))
    write_atomic(md_path, lambda f: f.write("\n".join(md)))
    return html_path, md_path
