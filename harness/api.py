"""The contract between the harness and the methods.

A method is a subclass of :class:`Method` registered in :data:`harness.methods.METHODS`. The
harness drives it (:func:`harness.runner.run`)::

    params = Method.Params.from_strings(--set ...)      # typed and range-checked before any work
    method = Method()
    method.check(ctx, params)                            # the traced network fits: before training
    prep = method.prepare(ctx, ann, params)              # convert / train / prune -> Preparation
    evaluation = ctx.evaluate(prep.model)                # the harness's loop, meters and invariants
    extras = method.analyse(ctx, prep, evaluation, params)   # optional: more evaluations, artifacts

The method supplies the network and its forward (an :class:`~harness.evaluation.Evaluable`, or an
``nn.Module`` that the harness evaluates as an ANN); the harness runs the test split, meters it and
checks the invariants. A method never writes results into the context: its own numbers travel in
the :class:`Preparation` and :class:`Extras` it returns, under keys it declares in ``metrics`` (a
key written twice is an error, never a silent overwrite).

``ann`` is the trained (cached) ANN, or ``None`` for methods with ``needs_trained_ann = False``
(they build their network from ``ctx.architecture()``). A *transform* (``is_transform``, e.g.
``prune``) returns an ANN and can precede another method: ``--method prune+ttfs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .config import Params as ParamsBase
from .config import RunConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from torch import nn

    from .datasets import Dataset
    from .evaluation import Evaluable, Evaluation
    from .graph import Graph, Op
    from .metrics import MetricSpec, Schema

RESULT_SCHEMA = "snn-harness/result/1"


@dataclass
class RunContext:
    """What a method may read and use during a run (it writes nothing into it)."""

    config: RunConfig
    dataset: "Dataset"
    model_name: str
    device: str
    train: TrainConfig
    cache_dir: Path
    artifacts_dir: Path
    architecture: Callable[[], "nn.Module"]  # a fresh, untrained instance of the run's network
    graph: "Graph"  # the traced network (BatchNorm not folded)
    schema: "Schema"
    progress: bool = True
    fit_callbacks: list = field(default_factory=list)  # extra Lightning callbacks (a study's pruning)
    info: dict[str, Any] = field(default_factory=dict)  # the harness's provenance notes (ANN cache use)
    live_run: tuple[str, str] | None = None  # (tracking URI, run id) of the MLflow run this work streams to
    streamed: set[str] = field(default_factory=set)  # step-metric keys already streamed to it, epoch by epoch

    @property
    def seed(self) -> int:
        return self.config.seed

    def loader(self, split: str, *, batch_size: int | None = None, shuffle: bool = False,
               limit: int | None = None):
        bs = batch_size or (self.train.batch_size if shuffle else self.config.eval_batch_size)
        if split == "test" and self.config.eval_limit:
            limit = min(limit or self.config.eval_limit, self.config.eval_limit)
        return self.dataset.loader(split, bs, shuffle=shuffle, seed=self.seed, limit=limit)

    def artifact(self, name: str) -> Path:
        path = self.artifacts_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def evaluate(self, model: "Evaluable | nn.Module", split: str = "test", *, batch_size: int | None = None,
                 limit: int | None = None, desc: str = "evaluate", what: str = "evaluation") -> "Evaluation":
        """The harness's evaluation loop (meters and invariants) over one split."""
        from .evaluation import evaluate

        ev = as_evaluable(model, self.dataset.input_shape)
        loader = self.loader(split, batch_size=batch_size or ev.batch_size, limit=limit or ev.limit)
        return evaluate(ev, loader, device=self.device, progress=self.progress, desc=desc, schema=self.schema,
                        what=what)


def as_evaluable(model: "Evaluable | nn.Module", input_shape: tuple[int, ...]) -> "Evaluable":
    """An ``nn.Module`` is evaluated as an ANN (its traced graph, MACs, non-zero activations)."""
    from .evaluation import AnnEvaluable, Evaluable
    from .graph import trace

    if isinstance(model, Evaluable):
        return model
    return AnnEvaluable(trace(model, input_shape))


@dataclass
class Preparation:
    """What ``prepare`` returns: the network to evaluate and the method's own results so far."""

    model: "Evaluable | nn.Module"
    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # provenance notes (warnings, cache use)
    artifacts: list[Path] = field(default_factory=list)


@dataclass
class Extras:
    """What ``analyse`` returns: more metrics, curves and artifacts from extra evaluations."""

    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class NoParams(ParamsBase):
    """A method without parameters."""


class Method(ABC):
    """Base class of every method (see the module docstring for the lifecycle).

    A concrete subclass must implement :meth:`prepare`; a missing one fails when the class is
    defined, not after training. Class attributes state what the harness needs to know:
    """

    name: ClassVar[str] = ""
    needs_trained_ann: ClassVar[bool] = True  # False: builds its own network from ctx.architecture()
    trains: ClassVar[bool] = False  # trains or fine-tunes: studies report val/accuracy per epoch and prune
    is_transform: ClassVar[bool] = False  # maps an ANN to an ANN; may precede another method with '+'
    spiking: ClassVar[bool] = True  # False: energy is charged as for an ANN
    default_model: ClassVar[str] = "cnn7"
    smoke_sets: ClassVar[dict[str, str]] = {}  # fast --set values for smoke and contract tests
    Params: ClassVar[type[ParamsBase]] = NoParams
    metrics: ClassVar[tuple["MetricSpec", ...]] = ()  # the method's own metric keys

    def __init_subclass__(cls, abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        missing = [m for m in ("prepare",) if getattr(getattr(cls, m, None), "__isabstractmethod__", False)]
        if missing:
            raise TypeError(f"method class {cls.__name__} does not implement {', '.join(missing)}")
        if not cls.name:
            raise TypeError(f"method class {cls.__name__} has no name")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, ParamsBase)):
            raise TypeError(f"{cls.__name__}.Params must be a harness.config.Params dataclass")

    @classmethod
    def search_space(cls, trial: "optuna.Trial") -> ParamsBase:
        """Sample hyper-parameters for an Optuna trial (declared beside the method)."""
        return cls.Params()

    @classmethod
    def graph_problems(cls, graph: "Graph") -> list[tuple["Op", str]]:
        """The ops of ``graph`` (the traced, unfolded network) this method cannot take, each with a
        reason. Used before training and to name, in another method's error, who would accept an op."""
        return []

    def check(self, ctx: RunContext, params: Any) -> None:
        """Raise ``ConfigError`` if the method cannot handle this network/data; runs before training."""
        ctx.graph.check(self.name, self.graph_problems(ctx.graph))

    @abstractmethod
    def prepare(self, ctx: RunContext, ann: Any, params: Any) -> Preparation:
        """Convert, train or prune; return the network to evaluate."""

    def analyse(self, ctx: RunContext, prep: Preparation, evaluation: "Evaluation", params: Any) -> Extras:
        """Optional analyses after the harness's evaluation (through ``ctx.evaluate``)."""
        return Extras()


@dataclass
class RunResult:
    """The typed record of one run; ``to_record()`` is what ``--output-json`` writes."""

    method: str
    dataset: dict[str, Any]
    model: str
    seed: int
    params: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, float]
    layers: list[dict]
    step_metrics: dict[str, list[float]]
    provenance: dict[str, Any]
    artifacts: list[str] = field(default_factory=list)
    tracking: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["schema"] = RESULT_SCHEMA
        return rec
