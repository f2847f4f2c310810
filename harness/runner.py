"""One run: data → network (traced) → ANN (cached or given) → method → the harness's evaluation →
energy → tracking → JSON.

Everything that can be checked cheaply is checked before any work starts: names (with
did-you-mean), method parameters, the device, the output path, the tracking store, and — once the
network is traced — whether every method of the chain can take it. The method supplies the
network; the harness evaluates it (:mod:`harness.evaluation`), checks its invariants and validates
every metric against the schema (:mod:`harness.metrics`) before anything is logged.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from . import __version__
from .api import Extras, Preparation, RunContext, RunResult
from .config import ConfigError, RunConfig
from .errors import Interrupted, InvariantError, OutputError, set_phase
from .io import ensure_writable_dir, ensure_writable_file, private_tempdir, write_csv, write_json_atomic

PACKAGES = ("torch", "lightning", "spikingjelly", "optuna", "mlflow", "numpy")
ANN_BASELINE_KEYS = ("test/accuracy", "macs", "macs_effective", "macs_dense_nopad", "activation_sparsity",
                     "connection_sparsity", "neurons", "spikes_per_neuron")


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

    per: list[dict[str, str]] = [dict() for _ in classes]
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


def ann_baseline_metrics(ann_metrics: dict[str, float]) -> dict[str, float]:
    out = {f"ann/{k}": ann_metrics[k] for k in ANN_BASELINE_KEYS}
    out["ann/activation_density"] = 1.0 - ann_metrics["activation_sparsity"]
    return out


def _merge(into: dict, new: dict, source: str, what: str) -> None:
    clash = sorted(set(into) & set(new))
    if clash:
        raise InvariantError(what, [f"{source} wrote {k!r}, which is already set" for k in clash[:5]])
    into.update(new)


def _architecture(factory, input_shape, num_classes, name: str):
    def build():
        from torch import nn

        try:
            model = factory(tuple(input_shape), num_classes)
        except ConfigError:
            raise
        except TypeError as exc:
            raise ConfigError(f"model {name!r}: the factory must accept (input_shape, num_classes): {exc}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
        return model
    return build


def run(cfg: RunConfig, *, parent_run_id: str | None = None, tracker=None, fit_callbacks: list | None = None,
        tags: dict[str, str] | None = None, model: Any = None, dataset: Any = None,
        run_id: str | None = None) -> RunResult:
    """Execute one run described by ``cfg`` and return its :class:`RunResult`.

    ``model``/``dataset`` (Python API) replace ``cfg.model``/``cfg.dataset`` with objects: an
    ``nn.Module``, a factory, or the data splits. ``parent_run_id`` nests the MLflow run (a study's
    trial), ``tags`` are added to it, ``run_id`` names an MLflow run already started for this work
    (a study's trial), and ``fit_callbacks`` join the Lightning callbacks of methods that train (not
    the ANN's training).
    """
    from .datasets import check_dataset, load_dataset
    from .methods import resolve
    from .metrics import method_schema
    from .models import resolve_model

    started = time.time()
    # ---- validate everything cheap first -----------------------------------------------------
    classes = resolve(cfg.method)
    main_cls = classes[-1]
    if dataset is None:
        check_dataset(cfg.dataset)
    model_name, factory = resolve_model(model if model is not None else (cfg.model or main_cls.default_model))
    per_sets = split_sets(cfg.method_sets, classes)
    params = [cls.Params.from_strings(s, owner=cls.name) for cls, s in zip(classes, per_sets)]
    train_cfg = cfg.train_config()
    device = resolve_device(cfg.device)
    weights_sha = None
    if cfg.weights:
        wpath = Path(cfg.weights).expanduser()
        if not wpath.is_file():
            raise ConfigError(f"--weights {wpath}: no such file")
        weights_sha = hashlib.sha256(wpath.read_bytes()).hexdigest()
    # every output location is proven writable before any work (a late failure loses the work)
    out_json = ensure_writable_file(Path(cfg.output_json), "--output-json") if cfg.output_json else None
    ensure_writable_dir(default_cache_dir(cfg), "the cache folder (--cache-dir / HARNESS_CACHE_DIR)")
    if cfg.track and tracker is None:
        from .tracking import Tracker, TrackingSettings

        tracker = Tracker(TrackingSettings.load(experiment=cfg.experiment))
    if tracker is not None:
        tracker.check()
    schema = method_schema(classes)

    # ---- the network and its data ------------------------------------------------------------
    from .ann_cache import load_weights, train_ann
    from .energy import energy_metrics
    from .graph import trace

    set_phase(f"loading the data ({cfg.dataset if dataset is None else 'given splits'})")
    ds = load_dataset(dataset if dataset is not None else cfg.dataset, cfg.data_dir)
    if cfg.epochs is None:  # the default depends on the training split's size
        from .config import default_epochs

        train_cfg = train_cfg.replace(epochs=default_epochs(len(ds.y["train"]), train_cfg.batch_size))
    architecture = _architecture(factory, ds.input_shape, ds.num_classes, model_name)
    graph = trace(architecture(), ds.input_shape, name=model_name)
    # ---- the MLflow run starts with the work, so it can be watched (RUNNING, curves per epoch) --
    param_dict: dict[str, Any] = {}
    for cls, p in zip(classes, params):
        prefix = "" if cls is classes[-1] else f"{cls.name}."
        param_dict.update({prefix + k: v for k, v in p.as_dict().items()})
    config = {**cfg.as_dict(), "model": model_name, "train": train_cfg.as_dict()}
    live_id, owned, finished = run_id, False, False
    with private_tempdir("run") as art_dir:
        ctx = RunContext(cfg, ds, model_name, device, train_cfg, default_cache_dir(cfg), Path(art_dir),
                         architecture=architecture, graph=graph, schema=schema, progress=cfg.progress)
        methods = [cls() for cls in classes]
        for m, p in zip(methods, params):
            m.check(ctx, p)  # a refused network leaves no run behind
        if tracker is not None and run_id is None:
            live_id, owned = _start_live_run(tracker, cfg, ds, model_name, param_dict, config, device, started,
                                             parent_run_id, tags), True
        if tracker is not None and live_id:
            ctx.live_run = (tracker.settings.tracking_uri, live_id)
        try:
            ann: Any = None
            history: dict[str, list[float]] = {}
            needs_ann = cfg.baseline or any(c.needs_trained_ann or c.is_transform for c in classes)
            if cfg.weights:
                ann = load_weights(ctx, cfg.weights)
                ctx.info["weights_sha256"] = weights_sha
                ctx.info["ann_cache"] = "bypassed (--weights)"
            elif needs_ann:
                set_phase(f"training the ANN ({model_name} on {ds.name})")
                ann, history = train_ann(ctx)
            # the baseline is evaluated after the method has built its network, on the same test
            # samples (a method evaluating the first N only is compared with the ANN on those N);
            # a copy keeps it safe from a method that changes the network it was given
            reference = copy.deepcopy(ann) if cfg.baseline and ann is not None else None
            ctx.fit_callbacks = list(fit_callbacks or [])

            # ---- the method: it prepares, the harness evaluates ----------------------------------
            prep_metrics: dict[str, float] = {}
            steps: dict[str, list[float]] = {f"ann/{k}": v for k, v in history.items()}
            info: dict[str, Any] = {}
            artifacts: list[Path] = []
            current: Any = ann
            prep: Preparation | None = None
            for m, p in zip(methods, params):
                given = current if (m.needs_trained_ann or m.is_transform) else None
                set_phase(f"preparing {m.name} (conversion or training)")
                prep = m.prepare(ctx, given, p)
                _merge(prep_metrics, prep.metrics, m.name, f"method {m.name}")
                _merge(steps, prep.step_metrics, m.name, f"method {m.name}")
                info.update(prep.info)
                artifacts += prep.artifacts
                current = prep.model
            assert prep is not None
            set_phase(f"evaluating the {cfg.method} network")
            evaluation = ctx.evaluate(current, desc=f"evaluate {cfg.method}", what=f"the {cfg.method} network")
            ann_metrics = None
            ann_parts: dict[str, dict[str, float]] = {}
            if reference is not None:
                limit = getattr(current, "limit", None)
                ann_eval = ctx.evaluate(reference, limit=limit, desc="evaluate ANN", what="the ANN baseline")
                ann_metrics, ann_parts = ann_eval.metrics, ann_eval.breakdowns
            extras = methods[-1].analyse(ctx, prep, evaluation, params[-1]) or Extras()

            metrics = dict(evaluation.metrics)
            what = f"the {cfg.method} run"
            _merge(metrics, prep_metrics, "the method's preparation", what)
            _merge(metrics, extras.metrics, "the method's analysis", what)
            _merge(steps, evaluation.step_metrics, "the evaluation", what)
            _merge(steps, extras.step_metrics, "the method's analysis", what)
            if ann_metrics is not None:
                _merge(metrics, ann_baseline_metrics(ann_metrics), "the ANN baseline", what)
                metrics["test/accuracy_drop"] = metrics["ann/test/accuracy"] - metrics["test/accuracy"]
            _merge(metrics, energy_metrics(evaluation.metrics, ann_metrics, spiking=main_cls.spiking,
                                           parts=evaluation.breakdowns, ann_parts=ann_parts), "energy", what)
            problems = schema.problems(metrics) + schema.problems(steps, curves=True)
            if problems:
                raise InvariantError(what, problems)

            layers_csv = write_csv(evaluation.layers, ctx.artifact("layers.csv"))
            artifacts = [layers_csv, *artifacts, *extras.artifacts]
            if tracker is not None:  # the network itself, as MLflow artifacts (network.pt, network.nir)
                from .export import save_network

                set_phase("saving the network")
                files, ctx.info["nir_export"] = save_network(current, ctx, cfg.method, param_dict, ds.input_shape)
                artifacts += files
            ctx.info["architecture"] = graph.fingerprint()
            result = RunResult(
                method=cfg.method, dataset=ds.describe(), model=model_name, seed=cfg.seed,
                params=param_dict, config=config,
                metrics=metrics, layers=evaluation.layers, step_metrics=steps,
                provenance=provenance(device, started, {**ctx.info, **info}),
                artifacts=[p.name for p in artifacts],
            )
            if tracker is not None:
                set_phase("logging the MLflow run")
                write_json_atomic(result.to_record(), ctx.artifact("result.json"))
                logged = tracker.log(result, artifacts + [ctx.artifact("result.json")], ds, parent_run_id, tags=tags,
                                     run_id=live_id, streamed=ctx.streamed)
                finished = owned
                result.tracking = dict(run_id=logged, tracking_uri=tracker.settings.tracking_uri,
                                       experiment=tracker.settings.experiment)
            if out_json is not None:
                set_phase(f"writing {out_json}")
                try:
                    write_json_atomic(result.to_record(), out_json)
                except OSError as exc:
                    kept = (f"the MLflow run {result.tracking['run_id']} was recorded" if result.tracking
                            else "nothing was recorded (--no-track)")
                    raise OutputError(f"writing {out_json} failed ({exc.strerror or exc}); {kept}, the JSON was "
                                      "not (no partial file was left)") from None
        except BaseException as exc:
            if owned and not finished:
                assert tracker is not None and live_id is not None
                interrupted = isinstance(exc, (Interrupted, KeyboardInterrupt))
                tracker.end_run(live_id, "KILLED" if interrupted else "FAILED",
                                f"interrupted by {exc}" if interrupted else f"{type(exc).__name__}: {exc}")
                if isinstance(exc, Interrupted) and exc.note is None:
                    exc.note = (f"the MLflow run {live_id} was marked KILLED with what it had logged; nothing "
                                "half-written was kept (the ANN cache and the JSON are written whole or not at all)")
            raise
    return result


def _start_live_run(tracker, cfg: RunConfig, ds, model_name: str, param_dict: dict, config: dict, device: str,
                    started: float, parent_run_id: str | None, tags: dict[str, str] | None) -> str:
    """Open the run's MLflow run (RUNNING) with its name, tags and parameters before any work; the
    results, step metrics and artifacts join it at the end, and it is closed FAILED or KILLED if
    the work does not get there."""
    from types import SimpleNamespace

    from .tracking import flat_params, provenance_tags, run_name

    draft = SimpleNamespace(method=cfg.method, model=model_name, dataset=ds.describe(), seed=cfg.seed,
                            params=param_dict, config=config, provenance=provenance(device, started, {}))
    name = str((tags or {}).get("mlflow.runName", run_name(draft)))
    run_id = tracker.start_run(name, {**provenance_tags(draft), **(tags or {})}, parent_run_id)
    tracker.log_params(run_id, flat_params(draft))
    return run_id


def provenance(device: str, started: float, info: dict) -> dict[str, Any]:
    from .tracking import git_commit

    return dict(git_commit=git_commit(), harness_version=__version__, versions=package_versions(),
                device=device, python=platform.python_version(), platform=platform.platform(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                duration_s=round(time.time() - started, 3), **info)
