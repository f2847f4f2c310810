"""The contract between the harness and the methods: types only, no implementation.

A method is a subclass of :class:`Method` registered in :data:`harness.methods.METHODS`. The
runner (:func:`harness.runner.run`, the composition root) drives it::

    params = Method.Params.from_strings(--set ...)      # typed and range-checked before any work
    method = Method()
    method.check(ctx, params)                            # the traced network fits: before training
    prep = method.prepare(ctx, ann, params)              # convert / train / prune -> Preparation
    evaluation = ctx.evaluate(prep.model)                # the harness's loop, meters and invariants
    extras = method.analyse(ctx, prep, evaluation, params)   # optional: more evaluations, artifacts

The method supplies the network: an :class:`Evaluable` (the network plus the traced graph it runs
and a ``run_batch(x, meters)`` that classifies a batch and records what it computes), or an
``nn.Module`` that the harness evaluates as an ANN. The harness runs the test split through it,
meters it and checks the invariants (:mod:`harness.evaluation`, injected into the context by the
runner as ``ctx.evaluator``). A method's own numbers travel in the :class:`Preparation` and
:class:`Extras` it returns, under keys it declares in ``metrics`` (a key written twice is an
error, never a silent overwrite). An evaluable also describes itself for keeping: its tensors
(:meth:`Evaluable.tensors`, saved as ``network.pt``) and, where it can, the same network as a
single-step SpikingJelly ``nn.Sequential`` (:meth:`Evaluable.single_step`, exported as
``network.nir``), so a plug-in method's network is saved and exported like a built-in's.

The :class:`RunContext` is frozen: a method reads it and evaluates through it; it records nothing
into it. Files a method wants kept come back as :class:`Artifact` s (a name and a writer), which
the runner writes into the run's folder once the run's numbers are safe. The one
thing that flows through it while a method works is the live MLflow run (``ctx.live_run``), to
which training streams its curves epoch by epoch.

``ann`` is the trained (cached) ANN, or ``None`` for methods with ``needs_trained_ann = False``
(they build their network from ``ctx.architecture()``). A *transform* (``is_transform``, e.g.
``prune``) returns an ANN and can precede another method: ``--method prune+ttfs``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .config import Params as ParamsBase
from .config import RunConfig, TrainConfig
from .errors import NirUnsupported

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    import torch
    from torch import nn

    from .datasets import Dataset
    from .graph import Graph, Op
    from .meters import Meters
    from .metrics import MetricSpec, Schema

RESULT_SCHEMA = "snn-harness/result/1"


# ---------------------------------------------------------------------------------------------
# what a method hands the harness to evaluate


@dataclass
class Outputs:
    """What one batch produces: ``logits`` ``[B, C]`` (argmax = prediction) or ``predictions``
    ``[B]``; ``step_predictions`` ``[T, B]`` if the network decides after every time step."""

    logits: "torch.Tensor | None" = None
    predictions: "torch.Tensor | None" = None
    step_predictions: "torch.Tensor | None" = None
    # predictions under other decision rules, by rule: the loop counts their hits into the meters'
    # counters as ``correct/<rule>`` (sharpen: Whetstone's lowest-index tie-break)
    alternatives: dict[str, "torch.Tensor"] = field(default_factory=dict)

    def final(self) -> "torch.Tensor":
        if self.predictions is not None:
            return self.predictions
        assert self.logits is not None, "an evaluable must return logits or predictions"
        return self.logits.argmax(-1)


class Evaluable(ABC):
    """A network the harness can run, meter and keep.

    The class attributes tell the harness's loop and invariants what kind of network it is; a
    subclass sets the ones that differ (in the class or in ``__init__``).
    """

    graph: "Graph"  # the network as it runs: its neuron and synaptic ops are what the invariants check
    timesteps: int = 1  # steps simulated per inference (the meters' T)
    max_spikes_per_neuron: float = 1.0  # per inference: T for rate coding, 1 for single-spike codes
    spiking: bool = True  # False: an ANN (non-zero activations are counted as its "spikes")
    dt: float = 1e-3  # seconds per step (firing rates in Hz)
    event_driven: bool = False  # one update per neuron per inference instead of one per step
    latency: int | None = None  # the ``timesteps`` metric if it differs from T (ttfs: t_max x layers)
    keep_per_neuron: bool = False  # keep per-neuron spike counts (firing-rate distributions)
    input_spikes: bool = False  # the evaluator encodes the input as spikes (its first layers count SynOps)
    takes_frames: bool = False  # it is fed event data's frames [B, T, ...] (one per step), not images
    batch_size: int | None = None  # evaluation batch size it asks for (None: the run's; the smaller of the two)
    limit: int | None = None  # evaluate on the first N test samples only

    @abstractmethod
    def run_batch(self, x: "torch.Tensor", meters: "Meters") -> Outputs:
        """Classify ``x`` and record into ``meters`` what the network computes."""

    def to(self, device: str) -> "Evaluable":
        self.graph.gm.to(device)
        return self

    def tensors(self) -> dict[str, "torch.Tensor"]:
        """The network's tensors, on the CPU: what rebuilds it (``network.pt``). By default the
        traced module's ``state_dict``; an evaluable that keeps its layers elsewhere overrides it."""
        return {k: v.detach().cpu() for k, v in self.graph.gm.state_dict().items()}

    def single_step(self) -> "SingleStep":
        """The network as a single-step SpikingJelly ``nn.Sequential`` (one call per time step), or
        :class:`~harness.errors.NirUnsupported` saying why it has none (``network.nir`` is written
        from it; :func:`harness.export.chain_sequential` builds one for a chain of layers)."""
        raise NirUnsupported(f"{type(self).__name__} does not describe a single-step SpikingJelly form")


@dataclass
class SingleStep:
    """A network as a single-step SpikingJelly ``nn.Sequential`` (reset it, then call it once per
    time step), the harness's op name of each of its modules, and notes on what it changes."""

    sequential: "nn.Sequential"
    names: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class Evaluation:
    """What the harness's loop measured (``metrics`` use the keys of :mod:`harness.metrics`)."""

    metrics: dict[str, float]
    layers: list[dict]
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    meters: "Meters | None" = None
    # per memory-aware energy model: its breakdown of one inference (harness.energy.lemaire_breakdown)
    breakdowns: dict[str, dict[str, float]] = field(default_factory=dict)


class Evaluator(Protocol):
    """The harness's evaluation loop, as the runner injects it (:func:`harness.evaluation.evaluate_in`)."""

    def __call__(self, ctx: "RunContext", model: "Evaluable | nn.Module", split: str, *, batch_size: int | None,
                 limit: int | None, desc: str, what: str) -> Evaluation: ...


# ---------------------------------------------------------------------------------------------
# what a method reads


@dataclass(frozen=True)
class LiveRun:
    """The MLflow run a run's work streams to while it works; ``streamed`` collects the keys of
    the curves already written there (epoch by epoch), which the final record does not repeat."""

    tracking_uri: str
    run_id: str
    streamed: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class RunContext:
    """What a method may read and use during a run (see the module docstring)."""

    config: RunConfig
    dataset: "Dataset"
    model_name: str
    device: str
    train: TrainConfig
    cache_dir: Path
    architecture: Callable[[], "nn.Module"]  # a fresh, untrained instance of the run's network
    graph: "Graph"  # the traced network (BatchNorm not folded)
    schema: "Schema"
    evaluator: Evaluator
    progress: bool = True
    fit_callbacks: tuple = ()  # extra Lightning callbacks of methods that train (a study's pruning)
    live_run: LiveRun | None = None
    world: Any = None  # harness.distributed.World: this process's rank when evaluations are sharded

    @property
    def main(self) -> bool:
        """This process writes the run's files and tracking (rank 0, or the only process)."""
        return self.world is None or self.world.main

    @property
    def seed(self) -> int:
        return self.config.seed

    def loader(self, split: str, *, batch_size: int | None = None, shuffle: bool = False,
               limit: int | None = None, frames: bool = False):
        """A split's loader: images, or with ``frames`` event data's frames ``[B, T, ...]``."""
        bs = batch_size or (self.train.batch_size if shuffle else self.config.eval_batch_size)
        if split == "test" and self.config.eval_limit:
            limit = min(limit or self.config.eval_limit, self.config.eval_limit)
        extra = {"frames": True} if frames else {}  # a data set of images alone need not know the keyword
        return self.dataset.loader(split, bs, shuffle=shuffle, seed=self.seed, limit=limit, **extra)

    def evaluate(self, model: "Evaluable | nn.Module", split: str = "test", *, batch_size: int | None = None,
                 limit: int | None = None, desc: str = "evaluate", what: str = "evaluation") -> Evaluation:
        """The harness's evaluation loop (meters and invariants) over one split."""
        return self.evaluator(self, model, split, batch_size=batch_size, limit=limit, desc=desc, what=what)


# ---------------------------------------------------------------------------------------------
# what a method returns


@dataclass(frozen=True)
class Artifact:
    """A file a method wants kept with the run, written by the runner once the run's numbers are
    safe: ``write(path)`` writes it. A writer that fails costs the run this file only — the
    failure becomes a note in the run's provenance (``artifact_notes``), never a lost run."""

    name: str
    write: Callable[[Path], Any]


@dataclass
class Preparation:
    """What ``prepare`` returns: the network to evaluate and the method's own results so far."""

    model: "Evaluable | nn.Module"
    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # provenance notes (warnings, cache use)
    artifacts: list[Artifact] = field(default_factory=list)


@dataclass
class Extras:
    """What ``analyse`` returns: more metrics, curves and artifacts from extra evaluations."""

    metrics: dict[str, float] = field(default_factory=dict)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)


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
    events_refusal: ClassVar[str] = ""  # why it cannot take event data (refused before any work), if it cannot
    event_keys: ClassVar[tuple[str, ...]] = ()  # parameters event data decide (a study does not sample them there)

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
    def for_data(cls, params: Any, given: "set[str]", dataset: Any) -> Any:
        """The parameters for the run's data (``given``: the keys the user set): e.g. on event data
        (``dataset.is_events``) a method that steps once per frame takes T from the data. Raise
        ``ConfigError`` before any work where the method cannot take such data (say why). By
        default a method runs on event data as on images: on the frames' mean (what an ANN takes),
        unless it gives ``events_refusal``."""
        if dataset.is_events and cls.events_refusal:
            from .errors import ConfigError

            raise ConfigError(f"{cls.name} cannot take event data ({dataset.name}): {cls.events_refusal}; use rate, "
                              "layer-scaling, qcfs or surrogate on event data")
        return params

    @classmethod
    def graph_problems(cls, graph: "Graph") -> list[tuple["Op", str]]:
        """The ops of ``graph`` (the traced, unfolded network) this method cannot take, each with a
        reason. Used before training and to name, in another method's error, who would accept an op."""
        return []

    def check(self, ctx: RunContext, params: Any) -> None:
        """Raise ``ConfigError`` if the method cannot handle this network/data; runs before training
        (an unsupported op raises :class:`harness.graph.UnsupportedOps`)."""
        ctx.graph.check(self.name, self.graph_problems(ctx.graph))

    @abstractmethod
    def prepare(self, ctx: RunContext, ann: Any, params: Any) -> Preparation:
        """Convert, train or prune; return the network to evaluate."""

    def analyse(self, ctx: RunContext, prep: Preparation, evaluation: Evaluation, params: Any) -> Extras:
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
