"""snn-harness: accuracy / sparsity / energy trade-offs of spiking neural networks.

The Python API — :func:`run`, :func:`study`, :func:`report` — takes the same names as the
command line, and also objects: your own ``nn.Module`` (or a factory), your own data splits.
Importing this package is cheap on purpose: torch, lightning and mlflow are imported lazily by the
functions that need them, so ``harness --help`` and ``harness ls`` answer at once.

    import harness
    res = harness.run("rate", model=MyNet(), dataset=(train, val, test), timesteps=64, track=False)
    res.metrics["test/accuracy"], res.metrics["energy_ratio/cmos45-fp32"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .analysis.report import ReportOutput
    from .api import RunResult
    from .studies import StudySummary

__all__ = ["__version__", "report", "run", "study"]


def _sets(params: Mapping[str, Any]) -> tuple[str, ...]:
    from .studies import format_value

    return tuple(f"{k.replace('__', '.')}={format_value(v)}" for k, v in params.items())


def _config(method: str, model: Any, dataset: Any, weights: Any, seed: int, track: bool, progress: bool,
            settings: Mapping[str, Any] | None, params: Mapping[str, Any]):
    from .config import RunConfig

    cfg: dict[str, Any] = dict(settings or {})
    cfg.update(method=method, seed=seed, track=track, progress=progress, sets=_sets(params))
    if isinstance(model, str):
        cfg["model"] = model
    if isinstance(dataset, str):
        cfg["dataset"] = dataset
    if weights is not None:
        cfg["weights"] = str(weights)
    return RunConfig.build(**cfg)


def run(method: str = "ann", model: Any = None, dataset: Any = None, *, weights: Any = None, seed: int = 0,
        track: bool = True, progress: bool = True, settings: Mapping[str, Any] | None = None,
        **params: Any) -> "RunResult":
    """Run one method and return its :class:`~harness.api.RunResult` (``.metrics``, ``.layers``,
    ``.step_metrics``, ``.provenance``, ``.tracking``).

    Args:
        method: a method key, or a chain such as ``"prune+rate"``.
        model: a registered name (``"cnn7"``), ``"module:factory"`` / ``"file.py:factory"``, a factory
            ``f(input_shape, num_classes) -> nn.Module``, or an ``nn.Module`` (its initial weights
            are used when the ANN is trained). Default: the method's default model.
        dataset: a registered name, ``"module:factory"``, or the splits ``(train, val, test)`` or
            ``(train, test)``, each an ``(x, y)`` pair of arrays/tensors or a torch dataset of
            ``(input, label)`` pairs (val is carved from train when absent). Default: ``mnist-5k``.
        weights: a trained ANN's ``state_dict`` file: no training, the ANN cache is bypassed.
        seed, track, progress: as ``--seed``, ``--no-track``, ``--no-progress``.
        settings: any other run setting of :class:`~harness.config.RunConfig` (``epochs`` of the
            ANN, ``lr``, ``batch_size``, ``experiment``, ``output_json``, ``baseline`` ...).
        **params: the method's parameters (``timesteps=32``); ``prune__final_sparsity=0.9``
            addresses a method of a chain (``--set prune.final_sparsity=0.9``).
    """
    from .runner import run as _run

    cfg = _config(method, model, dataset, weights, seed, track, progress, settings, params)
    return _run(cfg, model=None if isinstance(model, str) else model,
                dataset=None if isinstance(dataset, str) else dataset)


def study(method: str, *, trials: int = 20, objectives: tuple[str, ...] | list[str] = ("test/accuracy:max",),
          model: Any = None, dataset: Any = None, sampler: str | None = None,
          grid: Mapping[str, list[Any]] | None = None, storage: str | None = None, study_name: str | None = None,
          n_jobs: int = 1, eval_limit: int = 0, reevaluate: int = 3, seed: int = 0, progress: bool = True,
          settings: Mapping[str, Any] | None = None, **params: Any) -> "StudySummary":
    """Run (or resume) an Optuna study over ``method``'s parameters; returns the
    :class:`~harness.studies.StudySummary`. ``objectives`` are ``"metric:max|min"`` strings; ``grid``
    maps parameters to value lists (``sampler="grid"``); ``**params`` stay fixed in every trial.
    Other arguments as for :func:`run` and ``harness study``."""
    from .studies import Objective, StudyConfig, format_value, run_study

    cfg = _config(method, model, dataset, None, seed, True, progress,
                  {**(settings or {}), "eval_limit": eval_limit}, params)
    g = {k: [format_value(v) for v in vs] for k, vs in (grid or {}).items()}
    scfg = StudyConfig(run=cfg, trials=trials, objectives=tuple(Objective.parse(o) for o in objectives),
                       sampler=sampler or ("grid" if g else "tpe"), grid=g, storage=storage, study_name=study_name,
                       n_jobs=n_jobs, reevaluate=reevaluate, progress=progress,
                       model_obj=None if isinstance(model, str) else model,
                       dataset_obj=None if isinstance(dataset, str) else dataset)
    return run_study(scfg)


def report(experiment: str | None = None, out: str = "report", *, tracking_uri: str | None = None,
           energy_model: str = "cmos45-fp32") -> "ReportOutput":
    """Write the leaderboard, reproduction tables and figures of an MLflow experiment into ``out``
    (as ``harness report``); returns the written files."""
    from .analysis.report import build_report

    return build_report(experiment=experiment, out_dir=out, tracking_uri=tracking_uri, energy_model=energy_model)
