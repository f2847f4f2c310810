"""MLflow tracking: settings from ``mlflow.yaml``, a store check before any work, and one
complete run per harness run (params, metrics, per-layer and step metrics, artifacts, the data
set as a run input, provenance tags).

A run is written only once the results exist; if writing fails half-way, the partial run is
deleted, so the store never holds a half-written run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import TrackingError

log = logging.getLogger(__name__)
DEFAULTS = dict(tracking_uri="sqlite:///mlruns.db", experiment="snn-harness", artifact_location="./mlartifacts")


@dataclass
class TrackingSettings:
    tracking_uri: str
    experiment: str
    artifact_location: str | None

    @classmethod
    def load(cls, path: str | Path | None = None, experiment: str | None = None) -> "TrackingSettings":
        """``mlflow.yaml`` in the working directory (or ``path``), then environment overrides."""
        from .config import read_yaml_mapping

        data = dict(DEFAULTS)
        p = Path(path) if path else Path("mlflow.yaml")
        if p.is_file():
            loaded = read_yaml_mapping(p, TrackingError, "settings (tracking_uri, experiment, artifact_location)")
            data.update({k: v for k, v in loaded.items() if k in DEFAULTS})
        data["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or data["tracking_uri"]
        data["experiment"] = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or data["experiment"]
        loc = data.get("artifact_location")
        if loc and "://" not in str(loc):
            loc = Path(loc).resolve().as_uri()
        return cls(str(data["tracking_uri"]), str(data["experiment"]), loc)


@contextlib.contextmanager
def _store_lock(db: Path | None):
    """An exclusive lock on ``.<db>.lock`` beside an SQLite store (no-op for other stores), held
    while the store is created or opened; MLflow itself does not serialise its schema migration."""
    if db is None:
        yield
        return
    import fcntl

    lock = db.resolve().parent / f".{db.name}.lock"
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):])
    return None


class Tracker:
    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self.experiment_id: str | None = None

    def check(self) -> None:
        """Open the store and the experiment now, so a bad store fails before any training."""
        uri = self.settings.tracking_uri
        db = _sqlite_path(uri)
        if db is not None and db.is_dir():  # sqlite would retry for minutes before failing
            raise TrackingError(f"MLflow store {uri}: {db} is a directory, not an SQLite file; set tracking_uri in "
                                "mlflow.yaml or MLFLOW_TRACKING_URI")
        if uri.startswith(("http://", "https://")):
            _probe_server(uri)
        if db is not None:
            from .errors import OutputError
            from .io import ensure_writable_dir

            parent = db.resolve().parent
            writable = parent.is_dir() and not (db.exists() and not os.access(db, os.W_OK))
            if writable:  # the probe every output gets: creating a file is the only sure test
                try:
                    ensure_writable_dir(parent, "the folder of the MLflow store")
                except OutputError:
                    writable = False
            if not writable:
                raise TrackingError(f"MLflow store {uri}: {db} is not writable; set tracking_uri in mlflow.yaml "
                                    "or MLFLOW_TRACKING_URI")
        try:
            import mlflow

            mlflow.set_tracking_uri(uri)
            with _store_lock(db):
                self._open_experiment(mlflow)
        except TrackingError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to reach the store
            raise TrackingError(f"cannot open MLflow store {uri}: {exc}") from None

    def _open_experiment(self, mlflow) -> None:
        """Find or create the experiment. For SQLite this runs under the store lock: processes
        started together on a new store would otherwise race in MLflow's schema migration and
        experiment creation, and all but one fail."""
        exp = mlflow.get_experiment_by_name(self.settings.experiment)
        if exp is None:
            self.experiment_id = mlflow.create_experiment(
                self.settings.experiment, artifact_location=self.settings.artifact_location)
        elif exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {self.settings.experiment!r} is deleted; "
                                "restore it or choose another with --experiment")
        else:
            self.experiment_id = exp.experiment_id

    def log(self, result, artifacts: list[Path], dataset=None, parent_run_id: str | None = None,
            tags: dict[str, str] | None = None) -> str:
        """Write ``result`` (a :class:`~harness.api.RunResult`) as one run; returns the run id."""
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        if self.experiment_id is None:
            self.check()
        client = MlflowClient(self.settings.tracking_uri)
        name = f"{result.method}-{result.model}-{result.dataset['name']}-s{result.seed}"
        extra = tags or {}
        name = str(extra.get("mlflow.runName", name))
        tags = {"mlflow.runName": name, **{k: str(v) for k, v in provenance_tags(result).items()},
                **{k: str(v) for k, v in extra.items()}}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        assert self.experiment_id is not None
        try:
            run = client.create_run(self.experiment_id, tags=tags, run_name=name)
        except Exception as exc:  # noqa: BLE001 - a full or broken store: nothing was written
            raise TrackingError(f"creating the MLflow run in {self.settings.tracking_uri} failed ({exc}); "
                                "no run was recorded") from None
        run_id = run.info.run_id
        try:
            params = flat_params(result)
            metrics = [Metric(k, float(v), 0, 0) for k, v in result.metrics.items() if _is_number(v)]
            for key, values in result.step_metrics.items():
                metrics += [Metric(key, float(v), 0, step) for step, v in enumerate(values) if _is_number(v)]
            for i in range(0, len(params), 100):
                client.log_batch(run_id, params=[Param(k, v) for k, v in params[i:i + 100]])
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            for path in artifacts:
                client.log_artifact(run_id, str(path))
            if dataset is not None:
                self._log_dataset(client, run_id, dataset)
            client.set_terminated(run_id, "FINISHED")
        except BaseException as exc:
            from mlflow.exceptions import MlflowException

            try:
                client.delete_run(run_id)
            except (MlflowException, OSError) as cleanup:  # the original error matters more
                log.warning("the partial MLflow run %s could not be deleted: %s", run_id, cleanup)
            if isinstance(exc, Exception):
                raise TrackingError(f"writing the MLflow run failed ({exc}); the partial run was deleted") from exc
            raise
        return run_id

    def _log_dataset(self, client, run_id: str, ds) -> None:
        import mlflow
        import mlflow.data

        x, y = ds.x["test"], ds.y["test"]
        data = mlflow.data.from_numpy(x.reshape(len(x), -1), targets=y,  # type: ignore[attr-defined]
                                      name=f"{ds.name}:{ds.version}")
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_input(data, context="test")


PROBE_TIMEOUT_S = 5.0


def _probe_server(uri: str) -> None:
    """Reach a tracking server's ``/health`` within a few seconds: MLflow's own client retries an
    unreachable server for minutes before it gives up."""
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as resp:
            resp.read(64)
    except urllib.error.HTTPError as exc:
        raise TrackingError(f"MLflow tracking server {uri} answered {exc.code} at {url}; is it an MLflow server?") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix "
                            "MLFLOW_TRACKING_URI") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def flat_params(result) -> list[tuple[str, str]]:
    out = [(f"method.{k}", str(v)) for k, v in result.params.items()]
    out += [(f"run.{k}", str(v)) for k, v in result.config.items() if k not in ("sets",)]
    out += [("dataset", result.dataset["name"]), ("dataset_version", result.dataset["version"]),
            ("model", result.model), ("method", result.method), ("seed", str(result.seed))]
    return [(k, v[:6000]) for k, v in out]


def provenance_tags(result) -> dict[str, Any]:
    prov = result.provenance
    tags = {"git_commit": prov.get("git_commit", "unknown"), "seed": result.seed,
            "device": prov.get("device"), "harness_version": prov.get("harness_version"),
            "dataset_version": result.dataset["version"], "method": result.method}
    for pkg, ver in prov.get("versions", {}).items():
        tags[f"version.{pkg}"] = ver
    return tags


def git_commit() -> str:
    """The commit of the harness source tree, with ``-dirty`` if it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, timeout=5)
        sha = proc.stdout.strip()
        if proc.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
