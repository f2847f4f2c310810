"""Read an experiment's runs from MLflow into a DataFrame (the analysis package reads results only).

Columns: ``run_id``, ``method``, ``model``, ``dataset``, ``seed``, ``study``, ``trial``, ``state``,
``start_time``; every metric under its own key (``test/accuracy``, ``energy_nJ/loihi`` ...);
every method parameter as ``p.<key>`` (``p.timesteps``, ``p.prune.final_sparsity``).
Step metrics and artifacts are fetched on demand and cached.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ReportError

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass
class RunTable:
    df: Any  # pandas.DataFrame
    experiment: str
    tracking_uri: str
    client: Any = None
    _histories: dict = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> runs not admitted (see load_runs)
    _tmp: Any = None

    def history(self, run_id: str, key: str) -> list[float]:
        """A step metric's values in step order ([] if the run has none)."""
        k = (run_id, key)
        if k not in self._histories:
            from mlflow.exceptions import MlflowException

            try:
                hist = self.client.get_metric_history(run_id, key)
            except MlflowException as exc:  # a missing metric is an empty curve
                log.info("run %s has no %s: %s", run_id, key, exc)
                hist = []
            self._histories[k] = [m.value for m in sorted(hist, key=lambda m: m.step)]
        return self._histories[k]

    def artifact(self, run_id: str, name: str) -> Path | None:
        """Download one artifact of a run (None if the run has no such file)."""
        if self._tmp is None:
            from ..io import private_tempdir

            self._tmp = private_tempdir("report")
        dst = Path(self._tmp.name) / run_id
        dst.mkdir(exist_ok=True)
        from mlflow.exceptions import MlflowException

        try:
            return Path(self.client.download_artifacts(run_id, name, str(dst)))
        except (MlflowException, OSError) as exc:  # older runs may lack the artifact
            log.info("run %s has no artifact %s: %s", run_id, name, exc)
            return None

    def of(self, *methods: str):
        """Finished runs with results whose method (or the last member of a chain) is one of ``methods``."""
        df = self.df
        last = df["method"].str.split("+").str[-1]
        return df[last.isin(methods) & df["test/accuracy"].notna()]

    def pruned(self):
        """Finished runs with results whose method chain prunes (``prune``, ``prune+rate``, ...):
        the one list the pruning figure and the reproduction table both read."""
        df = self.df
        chain = df["method"].fillna("").str.split("+")
        return df[chain.map(lambda c: "prune" in c) & df["test/accuracy"].notna()]

    def best(self, *methods: str):
        """``of(methods)`` on full test sets only (no ``eval_limit``), most accurate first, newest
        first among equals; ``.drop_duplicates(cols)`` then keeps the best run of each group."""
        df = self.of(*methods)
        return df[df["eval_limit"] == 0].sort_values(["test/accuracy", "start_time"], ascending=False)


def load_runs(tracking_uri: str | None = None, experiment: str | None = None) -> RunTable:
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from ..tracking import TrackingSettings

    settings = TrackingSettings.load(experiment=experiment)
    uri = tracking_uri or settings.tracking_uri
    name = settings.experiment
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ReportError(f"no MLflow store at {uri}; run something first (harness run ...) or pass "
                          "--tracking-uri")
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(name)
    except Exception as exc:  # noqa: BLE001
        raise ReportError(f"cannot open MLflow store {uri}: {exc}") from None
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        from ..errors import UnknownNameError

        raise UnknownNameError(f"MLflow experiment in {uri}", name, names)
    mlflow.set_tracking_uri(uri)
    raw = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=50_000)
    if raw.empty:
        raise ReportError(f"experiment {name!r} in {uri} has no runs")
    df = pd.DataFrame({"run_id": raw["run_id"], "state": raw["status"], "start_time": raw["start_time"]})
    tag = lambda k: raw.get(f"tags.{k}", pd.Series([None] * len(raw)))
    par = lambda k: raw.get(f"params.{k}", pd.Series([None] * len(raw)))
    df["kind"] = tag("harness.kind")
    df["method"] = par("method").fillna(tag("method"))
    df["model"], df["dataset"], df["seed"] = par("model"), par("dataset"), par("seed")
    # event data: a data set at one binning (runs at another do not compare); kept apart from images
    df["data_kind"] = par("data_kind").fillna("static")
    events = df["data_kind"] == "events"
    df.loc[events, "dataset"] = df.loc[events, "dataset"] + " [" + par("data_binning")[events].fillna("") + "]"
    df["study"], df["trial"] = tag("harness.study"), tag("optuna.trial_number")
    df["trial_state"], df["reevaluated_trial"] = tag("optuna.trial_state"), tag("harness.reevaluated_trial")
    df["eval_limit"] = pd.to_numeric(par("run.eval_limit"), errors="coerce").fillna(0)
    metrics = _current_energy_keys({c[len("metrics."):]: pd.to_numeric(raw[c], errors="coerce")
                                    for c in raw.columns if c.startswith("metrics.")})
    params = {f"p.{c[len('params.method.'):]}": raw[c] for c in raw.columns if c.startswith("params.method.")}
    df = pd.concat([df, pd.DataFrame(metrics), pd.DataFrame(params)], axis=1)
    if "test/accuracy" not in df:
        df["test/accuracy"] = float("nan")
    df = df[df["kind"] != "study"].reset_index(drop=True)
    if df.empty:
        raise ReportError(f"experiment {name!r} in {uri} has only study parent runs")
    df, left_out = admitted(df)
    return RunTable(df=df, experiment=name, tracking_uri=uri, client=client, left_out=left_out)


# Energy keys of runs logged before energy moved to nanojoules, one section per quantity:
# (pattern, new key, factor)
_OLD_ENERGY = [(re.compile(r"^ann/energy/([^/]+)/joules$"), r"ann/energy_nJ/\1", 1e9),
               (re.compile(r"^ann/energy/([^/]+)/(\w+)_nj$"), r"ann/energy_parts_nJ/\1/\2", 1.0),
               (re.compile(r"^energy/([^/]+)/joules$"), r"energy_nJ/\1", 1e9),
               (re.compile(r"^energy/([^/]+)/(\w+)_nj$"), r"energy_parts_nJ/\1/\2", 1.0),
               (re.compile(r"^energy/([^/]+)/ratio$"), r"energy_ratio/\1", 1.0),
               (re.compile(r"^energy/([^/]+)/break_even_spikes_per_neuron$"), r"break_even_spikes_per_neuron/\1", 1.0)]


def _current_energy_keys(metrics: dict) -> dict:
    """Older runs' energy metrics (``energy/<model>/joules`` …) under today's keys and units, so a
    store that holds both reads as one table."""
    out: dict = {}
    for key, col in metrics.items():
        for rx, new, factor in _OLD_ENERGY:
            if rx.match(key):
                key, col = rx.sub(new, key), col * factor
                break
        out[key] = col.combine_first(out[key]) if key in out else col
    return out


def admitted(df):
    """Only FINISHED runs whose metrics are all within the schema's valid ranges (finite unless a
    metric documents infinity) enter tables and figures; the others are counted by reason. A
    FAILED or KILLED run, or one whose accuracy is ``inf``, would otherwise be ranked like any other."""
    from ..metrics import SCHEMA

    reasons = [None if st == "FINISHED" else f"status {st}" for st in df["state"]]
    core = {s.key for s in SCHEMA.specs}
    for col in df.columns:
        spec = SCHEMA.spec(col) if "/" in col or col in core else None  # params and ids have no spec
        if spec is None:
            continue
        for i, v in enumerate(df[col]):
            if reasons[i] is None and v == v and spec.check(col, v):  # v == v: NaN is "not logged"
                reasons[i] = f"{col} outside its valid range {spec.range_text}"
    keep = [r is None for r in reasons]
    left: dict[str, int] = {}
    for r in reasons:
        if r is not None:
            left[r] = left.get(r, 0) + 1
    return df[keep].reset_index(drop=True), left
