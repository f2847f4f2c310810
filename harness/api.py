"""The contracts between the runner and the methods.

A method is a class registered in :data:`harness.methods.METHODS`. Its lifecycle, driven by
:func:`harness.runner.run`, is::

    params = Method.Params.from_strings(--set ...)    # validated before any work
    method = Method()
    method.check(ctx, params)                          # network compatibility, before training
    model  = method.prepare(ctx, ann, params)          # convert / train / prune
    result = method.evaluate(ctx, model, params)       # an Evaluation: metrics + per-layer rows

``ann`` is the trained, cached ANN (or ``None`` when ``needs_trained_ann`` is False). Methods
write artifacts under ``ctx.artifacts_dir`` and list them in the :class:`Evaluation`. A
*transform* (``is_transform = True``, e.g. ``prune``) maps an ANN to an ANN and can precede any
method: ``--method prune+ttfs``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .config import Params, RunConfig, TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    import optuna
    from torch import nn

    from .datasets import Dataset

RESULT_SCHEMA = "snn-harness/result/1"


@dataclass
class RunContext:
    config: RunConfig
    dataset: "Dataset"
    model_name: str
    device: str
    train: TrainConfig
    cache_dir: Path
    artifacts_dir: Path
    progress: bool = True
    info: dict[str, Any] = field(default_factory=dict)  # provenance notes (cache hits, ...)
    metrics: dict[str, float] = field(default_factory=dict)  # from transforms (e.g. prune/...)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)  # curves from transforms
    fit_callbacks: list = field(default_factory=list)  # extra Lightning callbacks for methods that train

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


@dataclass
class Evaluation:
    """What a method's ``evaluate`` returns. ``metrics`` use the flat keys of DESIGN §4."""

    metrics: dict[str, float]
    layers: list[dict] = field(default_factory=list)
    step_metrics: dict[str, list[float]] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)


class Method:
    """Base class of every method adapter (see the module docstring for the lifecycle)."""

    name: ClassVar[str] = ""
    needs_trained_ann: ClassVar[bool] = True
    spiking: ClassVar[bool] = True
    is_transform: ClassVar[bool] = False
    default_model: ClassVar[str] = "cnn7"

    @dataclass(frozen=True)
    class Params(Params):
        pass

    @classmethod
    def search_space(cls, trial: "optuna.Trial") -> Params:
        """Sample hyper-parameters for an Optuna trial (declared beside the method)."""
        return cls.Params()

    def check(self, ctx: RunContext, params: Params) -> None:
        """Raise ``ConfigError`` if the method cannot handle this network/data; runs before training."""

    def prepare(self, ctx: RunContext, ann: "nn.Module | None", params: Params) -> "nn.Module":
        raise NotImplementedError

    def evaluate(self, ctx: RunContext, model: "nn.Module", params: Params, split: str = "test") -> Evaluation:
        raise NotImplementedError


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
