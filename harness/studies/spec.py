"""What a study searches: its objectives, sampler, grid and settings, checked before any trial,
and the summary it returns (see :mod:`harness.studies`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, RunConfig
from ..errors import UnknownNameError

SAMPLERS = ("tpe", "nsga2", "random", "grid")
DIRECTIONS = {"max": "maximize", "maximize": "maximize", "min": "minimize", "minimize": "minimize"}
HEARTBEAT_S = 10  # default --heartbeat
GRACE_INTERVALS = 3  # a trial is dead after this many missed heartbeats (Optuna's default is 2: too
#                      tight for a worker whose machine is busy training)
SEED_STRIDE = 7919  # sampler seeds of workers: seed + trials stored + SEED_STRIDE × worker index
WORKER_INDEX_ENV = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")  # SLURM arrays, Kubernetes indexed Jobs


@dataclass(frozen=True)
class Objective:
    key: str
    direction: str  # "maximize" | "minimize"

    @classmethod
    def parse(cls, text: str) -> "Objective":
        key, sep, d = text.rpartition(":")
        if not sep or not key:
            raise ConfigError(f"--objective {text!r}: expected METRIC:max or METRIC:min, "
                              "e.g. test/accuracy:max")
        if d not in DIRECTIONS:
            raise UnknownNameError(f"direction in --objective {text!r}", d, ["max", "min"])
        return cls(key, DIRECTIONS[d])

    def __str__(self) -> str:
        return f"{self.key}:{'max' if self.direction == 'maximize' else 'min'}"


def check_metric_key(key: str, classes: list) -> None:
    """Refuse a metric no run of these methods writes (the metric schema, with the methods' own
    metrics), with did-you-mean, before any trial runs."""
    from ..energy import ENERGY_MODELS
    from ..metrics import method_schema

    schema = method_schema(classes)
    energy = [m for m, _ in ENERGY_MODELS.usable()]
    spec = schema.spec(key)
    if spec is None:
        candidates = [s.key for s in schema.specs if "{" not in s.key and not s.curve]
        candidates += [s.key.replace("{model}", m) for s in schema.specs if "{model}" in s.key for m in energy]
        raise UnknownNameError("metric in --objective", key, candidates)
    if spec.curve:
        raise ConfigError(f"--objective {key!r}: that metric is a curve (one value per step or epoch), not a number")
    if "{model}" in spec.key:
        model = key.split("/")[spec.key.split("/").index("{model}")]
        if model not in energy:
            raise UnknownNameError(f"energy model in objective {key!r}", model, energy)


def parse_grid(items: list[str] | tuple[str, ...] | None) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items or ():
        key, sep, values = item.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()] if sep else []
        if not key.strip() or not vals:
            raise ConfigError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. synapse=0.001,0.005,0.01")
        grid[key.strip()] = vals
    return grid


def format_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    if isinstance(v, tuple):
        return ",".join(format_value(x) for x in v)
    return str(v)



@dataclass
class StudyConfig:
    run: RunConfig
    trials: int = 20
    objectives: tuple[Objective, ...] = (Objective("test/accuracy", "maximize"),)
    sampler: str = "tpe"
    grid: dict[str, list[str]] = field(default_factory=dict)
    storage: str | None = None
    study_name: str | None = None
    n_jobs: int = 1
    workers: int = 1  # processes on this machine (this one and workers - 1 it starts)
    worker_index: int | None = None  # None: from WORKER_INDEX_ENV, else 0
    heartbeat: int = HEARTBEAT_S  # seconds between a running trial's heartbeats (RDB storage)
    worker_command: Any = None  # CLI: index -> the argv of a worker process (for --workers)
    reevaluate: int = 3
    output_json: str | None = None
    progress: bool = True
    model_obj: Any = None  # Python API: an nn.Module or factory instead of run.model
    dataset_obj: Any = None  # Python API: data splits instead of run.dataset

    def validate(self, classes: list) -> None:
        from ..runner import split_sets

        if self.trials < 1:
            raise ConfigError(f"--trials {self.trials}: valid range is [1, inf)")
        if self.n_jobs < 1:
            raise ConfigError(f"--n-jobs {self.n_jobs}: valid range is [1, inf)")
        if self.workers < 1:
            raise ConfigError(f"--workers {self.workers}: valid range is [1, inf)")
        if self.run.nproc > 1 and self.n_jobs > 1:
            raise ConfigError(f"--nproc {self.run.nproc} with --n-jobs {self.n_jobs}: the trials of --n-jobs share one "
                              "process, and a process takes part in one sharded evaluation at a time; use "
                              "--workers for parallel trials (trials x processes <= cores or GPUs)")
        if self.workers > 1 and self.worker_command is None:
            raise ConfigError("--workers starts processes of the command line: use `harness study --workers N`, "
                              "or start the processes yourself")
        if self.worker_index is not None and self.worker_index < 0:
            raise ConfigError(f"--worker-index {self.worker_index}: valid range is [0, inf)")
        if self.heartbeat < 1:
            raise ConfigError(f"--heartbeat {self.heartbeat}: valid range is [1, inf) seconds")
        if self.reevaluate < 0:
            raise ConfigError(f"--reevaluate {self.reevaluate}: valid range is [0, inf)")
        if self.sampler not in SAMPLERS:
            raise UnknownNameError("sampler", self.sampler, SAMPLERS)
        if not self.objectives:
            raise ConfigError("a study needs at least one --objective METRIC:max|min")
        keys = [o.key for o in self.objectives]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"--objective: each metric may appear once ({', '.join(keys)})")
        for o in self.objectives:
            check_metric_key(o.key, classes)
        if self.sampler == "grid" and not self.grid:
            raise ConfigError("--sampler grid needs --grid KEY=V1,V2,... (one or more)")
        if self.grid and self.sampler != "grid":
            raise ConfigError(f"--grid is for --sampler grid (got --sampler {self.sampler})")
        # the fixed --set values, and every grid value with them, must parse and lie in range
        for cls, sets in zip(classes, split_sets(self.run.method_sets, classes)):
            cls.Params.from_strings(sets, owner=cls.name)
        for key, values in self.grid.items():
            for v in values:
                per = split_sets({**self.run.method_sets, key: v}, classes)
                for cls, sets in zip(classes, per):
                    cls.Params.from_strings(sets, owner=cls.name)


# ---------------------------------------------------------------------------------------------


@dataclass
class StudySummary:
    study_name: str
    storage: str
    objectives: list[str]
    trials: list[dict]
    best: list[dict]
    reevaluated: list[dict]
    parent_run_id: str | None
    tracking_uri: str
    wall_s: float
    recovered: list[int] = field(default_factory=list)  # trials of a killed process, re-queued

    def to_record(self) -> dict:
        return dict(schema="snn-harness/study/1", **self.__dict__)
