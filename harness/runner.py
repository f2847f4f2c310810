"""One run: data → ANN (cached) → method → evaluate → meters → energy → tracking → JSON.

Everything that can be checked cheaply is checked before any work starts: names (with
did-you-mean), method parameters, the device, the output path and the tracking store.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .api import RunContext, RunResult
from .config import ConfigError, RunConfig
from .datasets import DATASETS, load_dataset
from .models import MODELS

PACKAGES = ("torch", "pytorch-lightning", "spikingjelly", "optuna", "mlflow", "numpy")


def default_cache_dir(cfg: RunConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    env = os.environ.get("HARNESS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "snn-harness"


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here; use --device cpu or auto")
    return name


def split_sets(sets: dict[str, str], classes: list) -> list[dict[str, str]]:
    """``--set`` keys go to the last method; ``name.key`` addresses a method in a chain."""
    from .errors import UnknownNameError

    per = [dict() for _ in classes]
    names = [c.name for c in classes]
    for key, value in sets.items():
        owner, dot, sub = key.partition(".")
        if dot:
            if owner not in names:
                raise UnknownNameError(f"method in --set {key!r}", owner, names)
            per[names.index(owner)][sub] = value
        else:
            per[-1][key] = value
    return per


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _write_json_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_layers_csv(rows: list[dict], path: Path) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def ann_baseline_metrics(ann_metrics: dict[str, float]) -> dict[str, float]:
    keys = ("test/accuracy", "macs", "macs_effective", "activation_sparsity", "connection_sparsity",
            "neurons", "spikes_per_neuron")
    out = {f"ann/{k}": ann_metrics[k] for k in keys}
    out["ann/activation_density"] = 1.0 - ann_metrics["activation_sparsity"]
    return out


def run(cfg: RunConfig, *, parent_run_id: str | None = None, tracker=None, fit_callbacks: list | None = None,
        tags: dict[str, str] | None = None) -> RunResult:
    """Execute one run described by ``cfg`` and return its :class:`RunResult`.

    ``parent_run_id`` nests the MLflow run (a study's trial), ``tags`` are added to it, and
    ``fit_callbacks`` join the Lightning callbacks of methods that train (not the ANN's training).
    """
    from .methods import resolve

    started = time.time()
    # ---- validate everything cheap first -----------------------------------------------------
    classes = resolve(cfg.method)
    DATASETS.check(cfg.dataset)
    main_cls = classes[-1]
    model_name = MODELS.check(cfg.model or main_cls.default_model)
    per_sets = split_sets(cfg.method_sets, classes)
    params = [cls.Params.from_strings(s, owner=cls.name) for cls, s in zip(classes, per_sets)]
    train_cfg = cfg.train_config()
    device = resolve_device(cfg.device)
    out_json = Path(cfg.output_json) if cfg.output_json else None
    if out_json is not None:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out_json.parent, os.W_OK):
            raise ConfigError(f"--output-json: cannot write to {out_json.parent}")
    if cfg.track and tracker is None:
        from .tracking import Tracker, TrackingSettings

        tracker = Tracker(TrackingSettings.load(experiment=cfg.experiment))
    if tracker is not None:
        tracker.check()

    # ---- work --------------------------------------------------------------------------------
    from .energy import energy_metrics
    from .meters import meter_ann
    from .ann_cache import train_ann

    dataset = load_dataset(cfg.dataset, cfg.data_dir)
    with tempfile.TemporaryDirectory(prefix="harness-run-") as art_dir:
        ctx = RunContext(cfg, dataset, model_name, device, train_cfg, default_cache_dir(cfg),
                         Path(art_dir), progress=cfg.progress)
        methods = [cls() for cls in classes]
        for m, p in zip(methods, params):
            m.check(ctx, p)
        ann, history = train_ann(ctx)
        ctx.fit_callbacks = list(fit_callbacks or [])
        ann_metrics, _ = meter_ann(ann, ctx.loader("test"), device, progress=cfg.progress, desc="evaluate ANN")
        model = ann
        for m, p in zip(methods, params):
            model = m.prepare(ctx, model if (m.needs_trained_ann or m.is_transform) else None, p)
        evaluation = methods[-1].evaluate(ctx, model, params[-1])

        metrics = dict(evaluation.metrics)
        metrics.update(ctx.metrics)
        metrics.update(ann_baseline_metrics(ann_metrics))
        metrics["test/accuracy_drop"] = metrics["ann/test/accuracy"] - metrics["test/accuracy"]
        metrics.update(energy_metrics(evaluation.metrics, ann_metrics, spiking=main_cls.spiking))
        step_metrics = {f"ann/{k}": v for k, v in history.items()}
        step_metrics.update(ctx.step_metrics)
        step_metrics.update(evaluation.step_metrics)

        layers_csv = ctx.artifact("layers.csv")
        _write_layers_csv(evaluation.layers, layers_csv)
        artifacts = [layers_csv, *evaluation.artifacts]
        param_dict: dict[str, Any] = {}
        for m, p in zip(methods, params):
            prefix = "" if m is methods[-1] else f"{m.name}."
            param_dict.update({prefix + k: v for k, v in p.as_dict().items()})
        result = RunResult(
            method=cfg.method, dataset=dataset.describe(), model=model_name, seed=cfg.seed,
            params=param_dict, config={**cfg.as_dict(), "train": train_cfg.as_dict()},
            metrics=metrics, layers=evaluation.layers, step_metrics=step_metrics,
            provenance=provenance(device, started, ctx.info),
            artifacts=[p.name for p in artifacts],
        )
        if tracker is not None:
            _write_json_atomic(result.to_record(), ctx.artifact("result.json"))
            run_id = tracker.log(result, artifacts + [ctx.artifact("result.json")], dataset, parent_run_id,
                                 tags=tags)
            result.tracking = dict(run_id=run_id, tracking_uri=tracker.settings.tracking_uri,
                                   experiment=tracker.settings.experiment)
        if out_json is not None:
            _write_json_atomic(result.to_record(), out_json)
    return result


def provenance(device: str, started: float, info: dict) -> dict[str, Any]:
    from .tracking import git_commit

    return dict(git_commit=git_commit(), harness_version=__version__, versions=package_versions(),
                device=device, python=platform.python_version(), platform=platform.platform(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                duration_s=round(time.time() - started, 3), **info)
