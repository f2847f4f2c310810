"""Run configuration and typed, validated method hyper-parameters.

* :class:`RunConfig` — one run: method, data set, model, seed, training and output settings. Built
  from CLI flags, a YAML file and keyword arguments (later sources override earlier ones).
* :class:`Params` — base of every method's frozen hyper-parameter dataclass. Fields are declared with
  :func:`param`, which records the valid range and a help line; values set with
  ``--set key=value`` are parsed by the field's type and checked against that range.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError, UnknownNameError

_P = typing.TypeVar("_P", bound="Params")

# ----------------------------------------------------------------------------------------------
# parameters with ranges


def param(
    default: Any,
    help: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A dataclass field with a documented valid range.

    ``low``/``high`` bound numeric values (and every element of a tuple); ``*_open`` excludes the
    bound itself. Choices come from a ``Literal[...]`` annotation.
    """
    meta = dict(help=help, low=low, high=high, low_open=low_open, high_open=high_open)
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for sequence defaults (params are frozen)")
    return field(default=default, metadata=meta)


def _range_text(meta: dict) -> str:
    lo, hi = meta.get("low"), meta.get("high")
    if lo is None and hi is None:
        return ""
    left = "(-inf" if lo is None else ("(" if meta.get("low_open") else "[") + f"{lo:g}"
    right = "inf)" if hi is None else f"{hi:g}" + (")" if meta.get("high_open") else "]")
    return f"{left}, {right}"


def _in_range(value: float, meta: dict) -> bool:
    lo, hi = meta.get("low"), meta.get("high")
    if lo is not None and (value < lo or (meta.get("low_open") and value == lo)):
        return False
    if hi is not None and (value > hi or (meta.get("high_open") and value == hi)):
        return False
    return True


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    base, optional = _strip_optional(tp)
    if typing.get_origin(base) is Literal:
        name = "|".join(str(a) for a in typing.get_args(base))
    elif typing.get_origin(base) is tuple:
        name = f"{_type_name(typing.get_args(base)[0])},..."
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or none" if optional else name


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(text: str, tp: Any, name: str) -> Any:
    """Parse a command-line string into a value of type ``tp`` (raises :class:`ConfigError`)."""
    base, optional = _strip_optional(tp)
    if optional and text.strip().lower() in {"none", "null", ""}:
        return None
    try:
        if typing.get_origin(base) is Literal:
            choices = typing.get_args(base)
            for c in choices:
                if str(c) == text:
                    return c
            raise UnknownNameError(f"value for {name!r}", text, [str(c) for c in choices])
        if typing.get_origin(base) is tuple:
            elem = typing.get_args(base)[0]
            return tuple(parse_value(p.strip(), elem, name) for p in text.split(",") if p.strip())
        if base is bool:
            low = text.strip().lower()
            if low in _TRUE | _FALSE:
                return low in _TRUE
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is str:
            return text
    except (ValueError, TypeError):
        raise ConfigError(f"{name}={text!r}: expected {_type_name(tp)}") from None
    raise ConfigError(f"{name}: unsupported parameter type {tp!r}")


def _check_value(name: str, value: Any, tp: Any, meta: dict) -> None:
    base, optional = _strip_optional(tp)
    if value is None:
        if not optional:
            raise ConfigError(f"{name} may not be none")
        return
    if typing.get_origin(base) is Literal:
        if value not in typing.get_args(base):
            raise UnknownNameError(f"value for {name!r}", str(value), [str(c) for c in typing.get_args(base)])
        return
    values = value if isinstance(value, tuple) else (value,)
    elem = typing.get_args(base)[0] if typing.get_origin(base) is tuple else base
    for v in values:
        _check_type(name, v, elem, tp)
        if isinstance(v, numbers.Real) and not isinstance(v, bool):
            if v != v:  # NaN
                raise ConfigError(f"{name}={v}: not a number")
            if math.isinf(v):  # no parameter gives infinity a meaning; the ranges' "inf" is an open end
                raise ConfigError(f"{name}={v}: must be finite; valid range is {_range_text(meta) or '(-inf, inf)'}")
            if not _in_range(float(v), meta):
                raise ConfigError(f"{name}={v:g} is out of range; valid range is {_range_text(meta)}")


def _check_type(name: str, v: Any, elem: Any, tp: Any) -> None:
    """Values from YAML or Python keep their own types: ``epochs: true`` or ``batch_size: 3.7`` is an
    error here, not a silent 1 or a crash after the data has loaded."""
    if elem is bool:
        ok = isinstance(v, bool)
    elif elem is int:
        ok = isinstance(v, numbers.Integral) and not isinstance(v, bool)
    elif elem is float:
        ok = isinstance(v, numbers.Real) and not isinstance(v, bool)
    elif elem is str:
        ok = isinstance(v, str)
    else:
        return
    if not ok:
        raise ConfigError(f"{name}={v!r}: expected {_type_name(tp)}, got {type(v).__name__}")


@dataclass(frozen=True)
class Params:
    """Base class of a method's hyper-parameters. Subclasses are frozen dataclasses whose fields
    use :func:`param`; values are validated on construction."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _check_value(f.name, getattr(self, f.name), hints[f.name], dict(f.metadata))
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; override and raise :class:`ConfigError`."""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_strings(cls, items: dict[str, str], owner: str = "method") -> "Params":
        """Build from ``{"key": "text"}`` pairs (``--set key=value``), unknown keys named."""
        hints = typing.get_type_hints(cls)
        valid = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, text in items.items():
            if key not in valid:
                raise UnknownNameError(f"parameter of {owner}", key, valid)
            kwargs[key] = text if not isinstance(text, str) else parse_value(text, hints[key], key)
        return cls(**cls.completed(kwargs))

    @classmethod
    def completed(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The values to build from, given the ones set explicitly: a subclass fills in defaults that
        depend on what was set (a schedule that follows ``epochs``). Values set are never changed."""
        return given

    def replace(self: _P, **changes: Any) -> _P:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def describe(cls) -> list[dict[str, str]]:
        """Rows (key, type, default, range, help) for ``harness ls params``-style listings."""
        hints = typing.get_type_hints(cls)
        rows = []
        for f in fields(cls):
            rows.append(
                dict(
                    key=f.name,
                    type=_type_name(hints[f.name]),
                    default=repr(f.default),
                    range=_range_text(dict(f.metadata)),
                    help=f.metadata.get("help", ""),
                )
            )
        return rows


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value")
        out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------------------------
# the run configuration

Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class TrainConfig(Params):
    """How the ANN (or a trained SNN) is trained. Part of the ANN cache key."""

    epochs: int = param(15, "training epochs", low=0, high=10_000)
    batch_size: int = param(64, "training batch size", low=1)
    lr: float = param(1e-3, "Adam learning rate", low=0, low_open=True)
    weight_decay: float = param(0.0, "Adam weight decay", low=0)
    act_l1: float = param(0.0, "L1 penalty on hidden activations (sparser ANNs convert to fewer spikes)", low=0)


MIN_TRAIN_STEPS = 800  # optimizer steps the default ANN training takes at least ...
MAX_DEFAULT_EPOCHS = 100  # ... in at most this many epochs


def default_epochs(n_train: int, batch_size: int) -> int:
    """The ANN's epochs when none are given: 15, or as many as make ``MIN_TRAIN_STEPS`` optimizer
    steps on a small training split (at most ``MAX_DEFAULT_EPOCHS``). On ``digits`` (1 295 images,
    21 batches of 64) 15 epochs are ~300 steps and left ``cnn7`` 6 and ``stpu-cnn`` 8 points below
    what longer training reaches; on ``mnist-5k`` (57 batches) and larger sets 15 epochs are
    already more than 800 steps."""
    batches = max(1, math.ceil(n_train / batch_size))
    return max(TrainConfig.epochs, min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_TRAIN_STEPS / batches)))


@dataclass(frozen=True)
class RunConfig(Params):
    """One run of the harness. ``sets`` holds the method's ``--set key=value`` strings."""

    method: str = param("ann", "method (registry key), e.g. ann, ttfs, prune+ttfs")
    dataset: str = param("mnist-5k", "data set: registry key, plug-in, or module:factory")
    model: str | None = param(None, "model: registry key, plug-in, or module:factory / file.py:factory; "
                                    "default: the method's choice")
    weights: str | None = param(None, "a trained ANN's state_dict (.pt): no training, no cache")
    baseline: bool = param(True, "train (or load) and meter the ANN baseline: the ann/* metrics and energy ratios")
    seed: int = param(0, "random seed for data order, initialisation and sampling", low=0)
    device: Device = param("auto", "auto picks cuda when available")
    epochs: int | None = param(None, "training epochs of the ANN (default: 15, or enough for 800 optimizer steps "
                                      "on a small data set)", low=0, high=10_000)
    batch_size: int = param(64, "training batch size", low=1)
    lr: float = param(1e-3, "learning rate", low=0, low_open=True)
    act_l1: float = param(0.0, "activation-L1 penalty while training the ANN", low=0)
    eval_batch_size: int = param(500, "evaluation batch size", low=1)
    eval_limit: int = param(0, "evaluate on the first N test images (0 = all); studies use it for speed",
                            low=0)
    data_dir: str | None = param(None, "where to look for / download data files")
    time_bins: int | None = param(None, "event data: frames per sample (tonic ToFrame n_time_bins); one simulation "
                                        "step per frame", low=1, high=10_000)
    time_window: float | None = param(None, "event data: frames of this many milliseconds instead of a fixed count",
                                      low=0, low_open=True)
    denoise: float | None = param(None, "event data: drop events without a neighbour within this many ms "
                                        "(tonic Denoise)", low=0, low_open=True)
    downsample: float | None = param(None, "event data: scale the sensor's x and y by this factor (tonic "
                                           "Downsample), e.g. 0.25", low=0, high=1, low_open=True)
    cache_dir: str | None = param(None, "ANN cache (default $HARNESS_CACHE_DIR or ~/.cache/snn-harness)")
    output_json: str | None = param(None, "write the result record here")
    experiment: str | None = param(None, "MLflow experiment (default from mlflow.yaml)")
    track: bool = param(True, "log the run to MLflow")
    progress: bool = param(True, "show progress bars")
    nproc: int = param(1, "processes sharing every evaluation, each on its slice of the test set (one GPU each "
                          "on CUDA); under torchrun/SLURM the environment's WORLD_SIZE decides", low=1, high=4096)
    dist_timeout: float = param(1800.0, "seconds a process waits for the others (start, collectives) before "
                                        "the run fails", low=1)
    sets: tuple[str, ...] = param((), "method parameters as key=value strings")

    @property
    def method_sets(self) -> dict[str, str]:
        return parse_sets(list(self.sets))

    def train_config(self) -> TrainConfig:
        kw: dict[str, Any] = dict(batch_size=self.batch_size, lr=self.lr, act_l1=self.act_l1)
        if self.epochs is not None:
            kw["epochs"] = self.epochs
        return TrainConfig(**kw)

    @classmethod
    def build(cls, yaml_path: str | Path | None = None, **overrides: Any) -> "RunConfig":
        """Defaults < YAML file < keyword overrides (``None`` overrides are ignored)."""
        data: dict[str, Any] = {}
        if yaml_path is not None:
            data.update(load_yaml_config(yaml_path))
        file_sets = _set_items(data.pop("sets", None))
        data.update({k: v for k, v in overrides.items() if v is not None and k != "sets"})
        valid = set(cls.keys())
        for key in data:
            if key not in valid:
                raise UnknownNameError("run setting", key, valid)
        # method parameters merge key by key: a flag's --set overrides that key of the file's set:
        merged = {**parse_sets(file_sets), **parse_sets(_set_items(overrides.get("sets")))}
        if merged:
            data["sets"] = tuple(f"{k}={v}" for k, v in merged.items())
        return cls(**data)


def _set_items(sets: Any) -> list[str]:
    if sets is None:
        return []
    if isinstance(sets, dict):
        return [f"{k}={v}" for k, v in sets.items()]
    if isinstance(sets, str):  # set: "timesteps=8" is one setting, not eleven characters
        return [sets]
    if not isinstance(sets, (list, tuple)) or not all(isinstance(x, str) for x in sets):
        raise ConfigError(f"set: expected a mapping (timesteps: 8) or key=value strings, got {sets!r}")
    return list(sets)


def read_yaml_mapping(path: Path, error: type[Exception], what: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping; ``error`` names the file on any problem."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{path} is not a readable YAML file: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path} must hold a mapping of {what}")
    return data


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    data = read_yaml_mapping(p, ConfigError, "run settings")
    if "set" in data:  # friendlier spelling in YAML: set: {timesteps: 64}
        data["sets"] = data.pop("set")
    return {k.replace("-", "_"): v for k, v in data.items()}


def scaled_schedule(given: dict[str, Any], defaults: Any, *, epochs: str, start: str, length: str) -> dict[str, Any]:
    """``given`` with a schedule that follows ``epochs`` when the user set ``epochs`` and neither of
    the schedule's knobs (``start``, ``length``): the defaults scaled by epochs / default epochs (the
    length at least 1), started early enough to end within the epochs. A schedule set explicitly is
    left as it is (and refused by the method if it does not fit)."""
    if epochs not in given or start in given or length in given:
        return given
    e, e0 = int(given[epochs]), int(getattr(defaults, epochs))
    n = max(1, round(getattr(defaults, length) * e / e0))
    t0 = min(round(getattr(defaults, start) * e / e0), max(0, e - n))
    return {**given, start: t0, length: min(n, e)}
