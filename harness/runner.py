"""One run: data → network (traced) → ANN (cached or given) → method → the harness's evaluation →
energy → tracking → JSON. The runner is the composition root: it builds the run's context with
the evaluation loop injected (:func:`harness.evaluation.evaluate_in`), drives the methods through
the contract of :mod:`harness.api`, and owns everything written.

Everything that can be checked is checked before the MLflow run opens and before any training:
names (with did-you-mean), method parameters, the device, the output path, the tracking store, the
data and the weights a user brings (:mod:`harness.inputs`), and — once the network is traced —
whether every method of the chain can take it. The method supplies the network; the harness
evaluates it (:mod:`harness.evaluation`), checks its invariants and validates every metric against
the schema (:mod:`harness.metrics`) before anything is logged. Once the numbers are safe, writing
the files that go with them (``layers.csv``, the methods' artifacts, ``network.pt``,
``network.nir``) can cost the run a file, never its results: a failure becomes a note.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from ._version import __version__
from .api import Artifact, Evaluable, Extras, LiveRun, Method, Preparation, RunContext, RunResult
from .config import ConfigError, Params, RunConfig, TrainConfig
from .errors import Interrupted, InvariantError, OutputError, set_phase
from .io import ensure_writable_dir, ensure_writable_file, private_tempdir, write_csv, write_json_atomic

log = logging.getLogger(__name__)
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


def merge(into: dict, new: dict, source: str, what: str) -> None:
    """Add ``new`` to ``into``; a key already set is an invariant broken, never an overwrite."""
    clash = sorted(set(into) & set(new))
    if clash:
        raise InvariantError(what, [f"{source} wrote {k!r}, which is already set" for k in clash[:5]])
    into.update(new)


# ---------------------------------------------------------------------------------------------
# before any work


@dataclass
class Plan:
    """What a run will do, checked before any work."""

    cfg: RunConfig
    classes: list[type[Method]]
    params: list[Params]
    model_name: str
    factory: Any
    train: TrainConfig
    device: str
    out_json: Path | None
    tracker: Any
    schema: Any
    started: float = field(default_factory=time.time)
    given: list[set[str]] = field(default_factory=list)  # per method, the parameters the user set

    @property
    def param_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for cls, p in zip(self.classes, self.params):
            prefix = "" if cls is self.classes[-1] else f"{cls.name}."
            out.update({prefix + k: v for k, v in p.as_dict().items()})
        return out


def plan(cfg: RunConfig, *, tracker=None, model: Any = None, dataset: Any = None) -> Plan:
    """Names, parameters, device, outputs and the tracking store, checked before any work."""
    from .datasets import check_dataset
    from .methods import resolve
    from .metrics import method_schema
    from .models import resolve_model

    classes = resolve(cfg.method)
    if dataset is None:
        check_dataset(cfg.dataset)
    model_name, factory = resolve_model(model if model is not None else (cfg.model or classes[-1].default_model))
    per_sets = split_sets(cfg.method_sets, classes)
    params = [cls.Params.from_strings(s, owner=cls.name) for cls, s in zip(classes, per_sets)]
    train_cfg = cfg.train_config()
    device = resolve_device(cfg.device)
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise ConfigError(f"--weights {Path(cfg.weights).expanduser()}: no such file")
    # every output location is proven writable before any work (a late failure loses the work)
    out_json = ensure_writable_file(Path(cfg.output_json), "--output-json") if cfg.output_json else None
    ensure_writable_dir(default_cache_dir(cfg), "the cache folder (--cache-dir / HARNESS_CACHE_DIR)")
    if cfg.track and tracker is None:
        from .tracking import Tracker, TrackingSettings

        tracker = Tracker(TrackingSettings.load(experiment=cfg.experiment))
    if tracker is not None:
        tracker.check()
    return Plan(cfg, classes, params, model_name, factory, train_cfg, device, out_json, tracker,
                method_schema(classes), given=[set(s) for s in per_sets])


def _architecture(factory, input_shape, num_classes, name: str):
    """The run's network factory: a fresh, untrained instance per call; a factory that fails is
    named with its error (a ConfigError, before any run opens)."""
    def build():
        from torch import nn

        try:
            model = factory(tuple(input_shape), num_classes)
        except ConfigError:
            raise
        except TypeError as exc:
            raise ConfigError(f"model {name!r}: the factory must accept (input_shape, num_classes): {exc}") from None
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: named, not a traceback
            raise ConfigError(f"model {name!r}: calling the factory failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
        return model
    return build


@dataclass
class Inputs:
    """The loaded data, the traced network and the user's weights, all checked."""

    dataset: Any
    train: TrainConfig
    architecture: Any
    graph: Any
    weights: Any = None  # the ANN with the user's --weights, loaded and checked
    info: dict[str, Any] = field(default_factory=dict)


def load_inputs(p: Plan, dataset: Any) -> Inputs:
    """The data and the network, and the user's weights, checked before the run opens."""
    from .datasets import load_dataset
    from .graph import trace
    from .inputs import load_checked_weights

    cfg = p.cfg
    set_phase(f"loading the data ({cfg.dataset if dataset is None else 'given splits'})")
    from .datasets.events import Binning

    binning = Binning(cfg.time_bins, cfg.time_window, cfg.denoise, cfg.downsample)
    ds = load_dataset(dataset if dataset is not None else cfg.dataset, cfg.data_dir,  # checked (harness.inputs)
                      binning=binning)
    train_cfg = p.train
    if cfg.epochs is None:  # the default depends on the training split's size
        from .config import default_epochs

        train_cfg = train_cfg.replace(epochs=default_epochs(len(ds.y["train"]), train_cfg.batch_size))
    architecture = _architecture(p.factory, ds.input_shape, ds.num_classes, p.model_name)
    graph = trace(architecture(), ds.input_shape, name=p.model_name)
    inputs = Inputs(ds, train_cfg, architecture, graph)
    if cfg.weights:
        inputs.weights, inputs.info["weights_sha256"] = load_checked_weights(architecture, cfg.weights)
        inputs.info["ann_cache"] = "bypassed (--weights)"
    return inputs


def check_methods(ctx: RunContext, methods: list[Method], params: list[Params]) -> None:
    """Every method of the chain takes the traced network (a refused network leaves no run behind)."""
    from .graph import UnsupportedOps
    from .methods import with_alternatives

    for m, p in zip(methods, params):
        try:
            m.check(ctx, p)
        except UnsupportedOps as exc:
            raise with_alternatives(exc, ctx.graph) from None


# ---------------------------------------------------------------------------------------------
# the run


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
    from .distributed import world_for
    from .evaluation import evaluate_in

    world = world_for(cfg.nproc, cfg.dist_timeout)
    if world.launcher and (model is not None or dataset is not None):
        raise ConfigError(f"--nproc {cfg.nproc}: the processes it starts rebuild the run from its settings, so the "
                          "model and the data set must be given by name (a registry key or module:factory), not "
                          "as Python objects; or start every process yourself (torchrun)")
    if not world.main:  # rank 0 alone tracks, writes and shows progress
        cfg, tracker = cfg.replace(track=False, output_json=None, progress=False), None
    p = plan(cfg, tracker=tracker, model=model, dataset=dataset)
    p.device = rank_device(p.device, world)
    inputs = load_inputs(p, dataset)
    p.params = [cls.for_data(par, given, inputs.dataset) for cls, par, given in zip(p.classes, p.params, p.given)]
    methods = [cls() for cls in p.classes]
    config = {**cfg.as_dict(), "model": p.model_name, "train": inputs.train.as_dict()}
    ctx = RunContext(cfg, inputs.dataset, p.model_name, p.device, inputs.train, default_cache_dir(cfg),
                     architecture=inputs.architecture, graph=inputs.graph, schema=p.schema, evaluator=evaluate_in,
                     progress=cfg.progress, fit_callbacks=tuple(fit_callbacks or ()), world=world)
    check_methods(ctx, methods, p.params)
    live_id, owned, finished = run_id, False, False
    if p.tracker is not None and run_id is None:
        live_id, owned = _start_live_run(p, inputs.dataset, config, parent_run_id, tags), True
    if p.tracker is not None and live_id:
        from dataclasses import replace

        ctx = replace(ctx, live_run=LiveRun(p.tracker.settings.tracking_uri, live_id))
    try:
        with private_tempdir("run") as folder:
            result, files = _run(p, ctx, methods, inputs, config, Path(folder))
            if p.tracker is not None:
                _log(p, ctx, result, files, Path(folder), parent_run_id, tags, live_id)
                finished = True
        if p.out_json is not None:
            _write_json(p, result)
        return result
    except BaseException as exc:
        _leave(world, exc)
        if owned and not finished:  # once logged, the run stays FINISHED (e.g. an unwritable --output-json)
            _close_failed(p.tracker, live_id, exc)
        raise


def _leave(world, exc: BaseException) -> None:
    """A failed run stops the ranks it started; the failure itself is what the user sees."""
    try:
        world.close(ok=False)
    except Exception as other:  # noqa: BLE001 - the first failure is the one to report
        log.warning("stopping the other ranks after %s: %s", type(exc).__name__, other)


def rank_device(device: str, world) -> str:
    """With several ranks on CUDA, rank ``LOCAL_RANK`` of a machine takes GPU ``LOCAL_RANK``."""
    if not (world.distributed and device == "cuda"):
        return device
    import torch

    if world.local_rank >= torch.cuda.device_count():
        raise ConfigError(f"rank {world.rank} (LOCAL_RANK {world.local_rank}) has no GPU: this machine has "
                          f"{torch.cuda.device_count()}; start at most one process per GPU")
    return f"cuda:{world.local_rank}"


def _close_failed(tracker, run_id: str | None, exc: BaseException) -> None:
    """The run's MLflow run, opened by this run, did not finish: FAILED, or KILLED if interrupted."""
    assert run_id is not None
    interrupted = isinstance(exc, (Interrupted, KeyboardInterrupt))
    tracker.end_run(run_id, "KILLED" if interrupted else "FAILED",
                    f"interrupted by {exc}" if interrupted else f"{type(exc).__name__}: {exc}")
    if isinstance(exc, Interrupted) and exc.note is None:
        exc.note = (f"the MLflow run {run_id} was marked KILLED with what it had logged; nothing "
                    "half-written was kept (the ANN cache and the JSON are written whole or not at all)")


def _run(p: Plan, ctx: RunContext, methods: list[Method], inputs: Inputs, config: dict,
         folder: Path) -> tuple[RunResult, list[Path]]:
    """The work: the ANN, the method, the evaluations, the metrics and the files of the run."""
    from .ann_cache import train_ann
    from .energy import energy_metrics

    cfg, info, world = p.cfg, dict(inputs.info), ctx.world
    ann, history = inputs.weights, dict[str, list[float]]()
    needs_ann = ann is None and (cfg.baseline or any(c.needs_trained_ann or c.is_transform for c in p.classes))
    if needs_ann and world.main:  # with every core, before --nproc starts the other ranks
        set_phase(f"training the ANN ({p.model_name} on {ctx.dataset.name})")
        ann, history, cache_info = train_ann(ctx)
        info.update(cache_info)
    info["processes"] = world.size  # ranks sharing each evaluation (not a parameter: results do not change)
    if world.distributed:
        set_phase(f"joining the run's {world.size} processes (rank {world.rank})")
        world.start(cfg.as_dict())
        if needs_ann:
            ann, history = _shared_ann(ctx, ann, history, info)
    # the baseline is evaluated after the method has built its network, on the same test samples
    # (a method evaluating the first N only is compared with the ANN on those N); a copy keeps it
    # safe from a method that changes the network it was given
    reference = copy.deepcopy(ann) if cfg.baseline and ann is not None else None
    work = _prepare_chain(ctx, methods, p.params, ann)
    work.steps = {**{f"ann/{k}": v for k, v in history.items()}, **work.steps}
    set_phase(f"evaluating the {cfg.method} network")
    from .evaluation import as_evaluable

    current = as_evaluable(work.model, ctx.dataset.input_shape)
    world.check_same_network(current, cfg.method)
    began = time.perf_counter()
    evaluation = ctx.evaluate(current, desc=f"evaluate {cfg.method}", what=f"the {cfg.method} network")
    info["evaluation_s"] = round(time.perf_counter() - began, 3)  # the method's network on the test split
    ann_eval = None
    if reference is not None:
        ann_eval = ctx.evaluate(reference, limit=current.limit, desc="evaluate ANN", what="the ANN baseline")
    extras = methods[-1].analyse(ctx, work.prep, evaluation, p.params[-1]) or Extras()
    metrics, steps = _collect(p, work, evaluation, extras, ann_eval)
    metrics.update(_checked(p, energy_metrics(evaluation.metrics, ann_eval.metrics if ann_eval else None,
                                              spiking=p.classes[-1].spiking, parts=evaluation.breakdowns,
                                              ann_parts=ann_eval.breakdowns if ann_eval else {}), metrics))
    problems = p.schema.problems(metrics) + p.schema.problems(steps, curves=True)
    if problems:
        raise InvariantError(f"the {cfg.method} run", problems)
    world.close(ok=True)  # the last collective is behind; a rank that did not end cleanly fails the run
    if not world.main:  # the record, the files and the tracking are rank 0's
        return RunResult(method=cfg.method, dataset=ctx.dataset.describe(), model=p.model_name, seed=cfg.seed,
                         params=p.param_dict, config=config, metrics=metrics, layers=evaluation.layers,
                         step_metrics=steps, provenance={}), []
    info.update(work.info)
    info["architecture"] = ctx.graph.fingerprint()
    artifacts = [Artifact("layers.csv", lambda path: write_csv(evaluation.layers, path)),
                 *work.artifacts, *extras.artifacts]
    files, notes = write_artifacts(artifacts, folder)
    info.update(notes)
    if p.tracker is not None:  # the network itself, as MLflow artifacts (network.pt, network.nir)
        from .export import save_network

        set_phase("saving the network")
        saved, network_notes = save_network(current, _network_meta(p, ctx, current), folder)
        files += saved
        info.update(network_notes)
    result = RunResult(method=cfg.method, dataset=ctx.dataset.describe(), model=p.model_name, seed=cfg.seed,
                       params=p.param_dict, config=config, metrics=metrics, layers=evaluation.layers,
                       step_metrics=steps, provenance=provenance(p.device, p.started, info),
                       artifacts=[f.name for f in files])
    return result, files


def _shared_ann(ctx: RunContext, ann: Any, history: dict, info: dict) -> tuple[Any, dict]:
    """Rank 0's ANN on every rank (trained or read from the cache there), so every rank converts
    the same network."""
    world = ctx.world
    sent = world.broadcast((ann.state_dict() if world.main else None, history,
                            {k: v for k, v in info.items() if k.startswith("ann_cache")}), "sending rank 0's ANN")
    if world.main:
        return ann, history
    state, history, cache_info = sent
    ann = ctx.architecture()
    ann.load_state_dict(state)
    info.update(cache_info)
    return ann.eval(), history


def _checked(p: Plan, energy: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    clash = sorted(set(energy) & set(metrics))
    if clash:
        raise InvariantError(f"the {p.cfg.method} run", [f"energy wrote {k!r}, which is already set" for k in clash[:5]])
    return energy


@dataclass
class ChainWork:
    """What the methods of a chain prepared: the last network and everything they reported."""

    model: Any
    prep: Preparation
    metrics: dict[str, float] = field(default_factory=dict)
    steps: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)


def _prepare_chain(ctx: RunContext, methods: list[Method], params: list[Params], ann: Any) -> ChainWork:
    current: Any = ann
    work: ChainWork | None = None
    for m, p in zip(methods, params):
        given = current if (m.needs_trained_ann or m.is_transform) else None
        set_phase(f"preparing {m.name} (conversion or training)")
        prep = m.prepare(ctx, given, p)
        if work is None:
            work = ChainWork(prep.model, prep)
        merge(work.metrics, prep.metrics, m.name, f"method {m.name}")
        merge(work.steps, prep.step_metrics, m.name, f"method {m.name}")
        work.info.update(prep.info)
        work.artifacts += prep.artifacts
        work.model, work.prep = prep.model, prep
        current = prep.model
    assert work is not None
    return work


def _collect(p: Plan, work: ChainWork, evaluation, extras: Extras, ann_eval) -> tuple[dict, dict]:
    """The run's metrics and curves, every key written once."""
    what = f"the {p.cfg.method} run"
    metrics = dict(evaluation.metrics)
    merge(metrics, work.metrics, "the method's preparation", what)
    merge(metrics, extras.metrics, "the method's analysis", what)
    steps = dict(work.steps)
    merge(steps, evaluation.step_metrics, "the evaluation", what)
    merge(steps, extras.step_metrics, "the method's analysis", what)
    if ann_eval is not None:
        merge(metrics, ann_baseline_metrics(ann_eval.metrics), "the ANN baseline", what)
        metrics["test/accuracy_drop"] = metrics["ann/test/accuracy"] - metrics["test/accuracy"]
    return metrics, steps


def write_artifacts(artifacts: list[Artifact], folder: Path) -> tuple[list[Path], dict[str, str]]:
    """Write each artifact into ``folder``; one that fails is left out (no partial file) and noted
    (``artifact_notes``), the others are kept."""
    files: list[Path] = []
    failed: list[str] = []
    for a in artifacts:
        path = folder / a.name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            a.write(path)
            files.append(path)
        except Exception as exc:  # noqa: BLE001 - one file must not cost the run its results
            path.unlink(missing_ok=True)
            log.warning("artifact %s was not written: %s: %s", a.name, type(exc).__name__, exc)
            failed.append(f"{a.name}: {type(exc).__name__}: {exc}")
    return files, ({"artifact_notes": "not written: " + "; ".join(failed)} if failed else {})


def _network_meta(p: Plan, ctx: RunContext, ev: Evaluable) -> dict[str, Any]:
    ds = ctx.dataset
    return dict(harness_version=__version__, method=p.cfg.method, model=p.model_name, dataset=ds.name,
                dataset_version=ds.version, input_shape=list(ds.input_shape), num_classes=ds.num_classes,
                params=p.param_dict, timesteps=int(getattr(ev, "timesteps", 1)))


def _log(p: Plan, ctx: RunContext, result: RunResult, files: list[Path], folder: Path, parent_run_id, tags,
         live_id) -> None:
    """The run's results, files and record into its MLflow run, which ends FINISHED."""
    set_phase("logging the MLflow run")
    record = write_json_atomic(result.to_record(), folder / "result.json")
    streamed = ctx.live_run.streamed if ctx.live_run is not None else set()
    logged = p.tracker.log(result, [*files, record], ctx.dataset, parent_run_id, tags=tags, run_id=live_id,
                           streamed=streamed)
    result.tracking = dict(run_id=logged, tracking_uri=p.tracker.settings.tracking_uri,
                           experiment=p.tracker.settings.experiment)


def _write_json(p: Plan, result: RunResult) -> None:
    assert p.out_json is not None
    set_phase(f"writing {p.out_json}")
    try:
        write_json_atomic(result.to_record(), p.out_json)
    except OSError as exc:
        kept = (f"the MLflow run {result.tracking['run_id']} was recorded" if result.tracking
                else "nothing was recorded (--no-track)")
        raise OutputError(f"writing {p.out_json} failed ({exc.strerror or exc}); {kept}, the JSON was "
                          "not (no partial file was left)") from None


def _start_live_run(p: Plan, ds, config: dict, parent_run_id: str | None, tags: dict[str, str] | None) -> str:
    """Open the run's MLflow run (RUNNING) with its name, tags and parameters before any work; the
    results, step metrics and artifacts join it at the end, and it is closed FAILED or KILLED if
    the work does not get there."""
    from types import SimpleNamespace

    from .tracking import flat_params, provenance_tags, run_name

    cfg = p.cfg
    draft = SimpleNamespace(method=cfg.method, model=p.model_name, dataset=ds.describe(), seed=cfg.seed,
                            params=p.param_dict, config=config, provenance=provenance(p.device, p.started, {}))
    name = str((tags or {}).get("mlflow.runName", run_name(draft)))
    run_id = p.tracker.start_run(name, {**provenance_tags(draft), **(tags or {})}, parent_run_id)
    p.tracker.log_params(run_id, flat_params(draft))
    return run_id


def provenance(device: str, started: float, info: dict) -> dict[str, Any]:
    from .tracking import git_commit

    return dict(git_commit=git_commit(), harness_version=__version__, versions=package_versions(),
                device=device, python=platform.python_version(), platform=platform.platform(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                duration_s=round(time.time() - started, 3), **info)
