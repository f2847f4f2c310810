"""MLflow tracking: settings from ``mlflow.yaml``, a store check before any work, and one run
per harness run (params, metrics, per-layer and step metrics, artifacts, the data set as a run
input, provenance tags).

A run opens (RUNNING, with its name, tags and parameters) when the work starts, receives its
training curves epoch by epoch while it trains (Lightning's ``MLFlowLogger`` on the same run), and
its results at the end; it is FINISHED when everything is written, FAILED if the work or the
writing fails, KILLED on Ctrl-C or SIGTERM (tag ``harness.status_reason`` says why). A process
killed outright leaves it RUNNING: the owner tag (host:pid) lets the next harness process that
opens the store mark it FAILED (:meth:`Tracker.close_orphans`).

A study's runs — its parent run and the trials' bookkeeping beyond one harness run — are in
:mod:`.studies`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TrackingError
from ..io import pid_alive

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
        from ..config import read_yaml_mapping

        data = dict(DEFAULTS)
        p = Path(path) if path else Path("mlflow.yaml")
        loaded: dict[str, Any] = {}
        if p.is_file():
            loaded = read_yaml_mapping(p, TrackingError, "settings (tracking_uri, experiment, artifact_location)")
            data.update({k: v for k, v in loaded.items() if k in DEFAULTS})
        data["tracking_uri"] = os.environ.get("MLFLOW_TRACKING_URI") or data["tracking_uri"]
        data["experiment"] = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or data["experiment"]
        loc = data.get("artifact_location")
        if data["tracking_uri"].startswith(("http://", "https://")) and not (p.is_file() and "artifact_location" in loaded):
            # a tracking server keeps the artifacts (``mlflow server --serve-artifacts``): a local
            # folder would be invisible to every other worker and to the server's UI
            loc = None
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
        self._orphans_closed = False  # once per process: check() runs before every trial of a study

    def check(self) -> None:
        """Open the store and the experiment now, so a bad store fails before any training."""
        uri = self.settings.tracking_uri
        db = _sqlite_path(uri)
        if db is not None and db.is_dir():  # sqlite would retry for minutes before failing
            raise TrackingError(f"MLflow store {uri}: {db} is a directory, not an SQLite file; set tracking_uri in "
                                "mlflow.yaml or MLFLOW_TRACKING_URI")
        if uri.startswith(("http://", "https://")):
            _probe_server(uri)
        elif uri.split(":", 1)[0].split("+", 1)[0] in DB_PORTS:
            _probe_database(uri)
        if db is not None:
            from ..errors import OutputError
            from ..io import ensure_writable_dir

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
        if not self._orphans_closed:
            self._orphans_closed = True
            self.close_orphans()

    def close_orphans(self) -> list[str]:
        """Mark FAILED the runs of this experiment left RUNNING by a process of this host that no
        longer exists (SIGKILL while a run was written, a crash); returns their ids. Runs of other
        hosts are left to their own host (and a study's to Optuna's heartbeat)."""
        from mlflow.tracking import MlflowClient

        host = socket.gethostname()
        if self.experiment_id is None:
            return []
        try:
            client = MlflowClient(self.settings.tracking_uri)
            runs = client.search_runs([self.experiment_id], max_results=1000, filter_string=(
                f"attributes.status = 'RUNNING' and tags.`{OWNER_TAG}` LIKE '{host}:%'"))
        except Exception as exc:  # noqa: BLE001 - tidying must not stop the work
            log.warning("runs left running could not be listed: %s", exc)
            return []
        closed = []
        for r in runs:
            pid = r.data.tags.get(OWNER_TAG, "").rpartition(":")[2]
            if pid.isdigit() and not pid_alive(int(pid)):
                self.end_run(r.info.run_id, "FAILED", f"orphaned: its process ({host}, pid {pid}) ended without "
                             "closing it")
                closed.append(r.info.run_id)
        return closed

    def _open_experiment(self, mlflow) -> None:
        """Find or create the experiment. For SQLite this runs under the store lock: processes
        started together on a new store would otherwise race in MLflow's schema migration and
        experiment creation, and all but one fail."""
        exp = mlflow.get_experiment_by_name(self.settings.experiment)
        if exp is None:
            self.experiment_id = mlflow.create_experiment(
                self.settings.experiment, artifact_location=self.settings.artifact_location,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        elif exp.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {self.settings.experiment!r} is deleted; "
                                "restore it or choose another with --experiment")
        else:
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made before the harness set it
                mlflow.MlflowClient(self.settings.tracking_uri).set_experiment_tag(
                    self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def start_run(self, name: str, tags: dict[str, Any], parent_run_id: str | None = None) -> str:
        """Create a RUNNING run now and return its id. A study's trial starts its run when it starts,
        so the run can be watched, and a worker that dies leaves a run the study marks FAILED."""
        from mlflow.tracking import MlflowClient

        if self.experiment_id is None:
            self.check()
        assert self.experiment_id is not None
        all_tags = {"mlflow.runName": name, **{k: str(v) for k, v in tags.items()}, OWNER_TAG: owner()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            return MlflowClient(self.settings.tracking_uri).create_run(
                self.experiment_id, tags=all_tags, run_name=name).info.run_id
        except Exception as exc:  # noqa: BLE001 - a full or broken store: nothing was written
            raise TrackingError(f"creating the MLflow run in {self.settings.tracking_uri} failed ({exc}); "
                                "no run was recorded") from None

    def log_params(self, run_id: str, params: list[tuple[str, str]]) -> None:
        """The run's parameters, now (a failing store closes the just-opened run FAILED)."""
        from mlflow.tracking import MlflowClient

        try:
            _log_params(MlflowClient(self.settings.tracking_uri), run_id, params)
        except Exception as exc:  # noqa: BLE001 - said as a TrackingError, the run closed
            self.end_run(run_id, "FAILED", f"logging its parameters failed: {exc}")
            raise TrackingError(f"logging the parameters of MLflow run {run_id} failed ({exc}); the run was "
                                "marked FAILED") from None

    def end_run(self, run_id: str, status: str, reason: str | None = None, **tags: Any) -> None:
        """Close ``run_id`` with ``status`` (FAILED, KILLED, FINISHED), saying why in the tag
        ``harness.status_reason``. Best effort: the caller's own outcome matters more."""
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        all_tags = {**({"harness.status_reason": reason[:5000]} if reason else {}), **tags}
        try:
            client = MlflowClient(self.settings.tracking_uri)
            if all_tags:
                client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
            client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001
            log.warning("the MLflow run %s could not be marked %s: %s", run_id, status, exc)

    def log(self, result, artifacts: list[Path], dataset=None, parent_run_id: str | None = None,
            tags: dict[str, str] | None = None, *, run_id: str, streamed: set[str] | None = None) -> str:
        """Write ``result`` (a :class:`~harness.api.RunResult`) into ``run_id``, the run
        :meth:`start_run` opened when the work started, and close it FINISHED; returns the run id.
        A failure raises :class:`TrackingError` and is left to the run's owner to record (it marks
        the run FAILED). Step metrics in ``streamed`` were logged epoch by epoch while training and
        are not written again."""
        from mlflow.entities import Metric, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.settings.tracking_uri)
        extra = tags or {}
        all_tags = {"mlflow.runName": str(extra.get("mlflow.runName", run_name(result))),
                    **{k: str(v) for k, v in provenance_tags(result).items()}, **{k: str(v) for k, v in extra.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        metrics = [Metric(k, float(v), 0, 0) for k, v in result.metrics.items() if _is_number(v)]
        for key, values in result.step_metrics.items():
            if key not in (streamed or ()):
                metrics += [Metric(key, float(v), 0, step) for step, v in enumerate(values) if _is_number(v)]
        try:
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in all_tags.items()])
            _log_params(client, run_id, flat_params(result))
            for i in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[i:i + 1000])
            for path in artifacts:
                client.log_artifact(run_id, str(path))
            if dataset is not None:
                self._log_dataset(client, run_id, dataset)
            client.set_terminated(run_id, "FINISHED")
        except Exception as exc:
            raise TrackingError(f"writing the MLflow run {run_id} failed ({exc})") from exc
        return run_id

    def _log_dataset(self, client, run_id: str, ds) -> None:
        """The test split as the run's input. MLflow stores a data set once per experiment and
        inserts it without a lock: trials logging the same data set at the same instant (threads of
        ``--n-jobs``, or worker processes) collide on its unique key. Threads take turns; a process
        that loses the race to another finds the row on its next try."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        x, y = ds.x["test"], ds.y["test"]
        data = mlflow.data.from_numpy(x.reshape(len(x), -1), targets=y,  # type: ignore[attr-defined]
                                      name=f"{ds.name}:{ds.version}")
        entity = DatasetInput(data._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "test")])
        with _DATASET_LOCK:
            for attempt in range(DATASET_TRIES):
                try:
                    client.log_inputs(run_id, datasets=[entity])
                    return
                except Exception as exc:  # only the unique-key race is retried (re-raised otherwise)
                    text = str(exc)
                    if attempt == DATASET_TRIES - 1 or not ("UNIQUE constraint" in text or "duplicate key" in text):
                        raise
                    time.sleep(0.2 * (attempt + 1))


def _log_params(client, run_id: str, params: list[tuple[str, str]]) -> None:
    from mlflow.entities import Param

    for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=[Param(k, v) for k, v in params[i:i + 100]])


_DATASET_LOCK = threading.Lock()
DATASET_TRIES = 5


OWNER_TAG = "harness.owner"  # host:pid of the process writing a run
# MLflow 3's UI opens an experiment on the page its kind says: this one is model development, so
# the runs table (and the compare view) is the landing page, not the GenAI overview
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


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


DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _probe_database(uri: str) -> None:
    """Reach a database store's host and port within a few seconds: MLflow's SQLAlchemy store
    retries a database that does not answer for minutes. Login and database errors are left to
    MLflow, whose message names them."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if not parts.hostname:  # a Unix socket: nothing to wait for
        return
    scheme = parts.scheme.split("+", 1)[0]
    try:
        port = parts.port or DB_PORTS[scheme]
        with socket.create_connection((parts.hostname, port), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise TrackingError(f"MLflow store {scheme}://{parts.hostname}:{parts.port or DB_PORTS[scheme]} is unreachable "
                            f"({exc}); start it or fix MLFLOW_TRACKING_URI") from None


def run_name(result) -> str:
    """``method-model-dataset-sSEED``, then the parameters set on the command line (what differs
    from the defaults) and a digest of every parameter and training setting, so that runs that
    differ anywhere have different names: ``rate-cnn7-digits-s0 timesteps=16 [3fa9c1]``."""
    import hashlib
    import json

    base = f"{result.method}-{result.model}-{result.dataset['name']}-s{result.seed}"
    sets = " ".join(str(s) for s in result.config.get("sets", ()))
    if len(sets) > 60:
        sets = sets[:59] + "…"
    key = json.dumps([result.params, result.config.get("train"), result.config.get("weights")], sort_keys=True,
                     default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:6]
    return f"{base}{' ' + sets if sets else ''} [{digest}]"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


RESULT_SETTINGS = ("weights", "baseline", "eval_limit")  # run settings beside training that change results


def flat_params(result) -> list[tuple[str, str]]:
    """One param per knob that changes results: the method's parameters (``method.*``), the ANN's
    training (``train.*``), ``run.weights``/``run.baseline``/``run.eval_limit``, and the method,
    model, data set and seed once each. Plumbing (paths, progress, tracking) is not a parameter;
    the device is a tag."""
    out = [(f"method.{k}", str(v)) for k, v in result.params.items()]
    out += [(f"train.{k}", str(v)) for k, v in (result.config.get("train") or {}).items()]
    out += [(f"run.{k}", str(result.config[k])) for k in RESULT_SETTINGS if k in result.config]
    out += [("dataset", result.dataset["name"]), ("dataset_version", result.dataset["version"]),
            ("model", result.model), ("method", result.method), ("seed", str(result.seed)),
            ("data_kind", result.dataset.get("kind", "static"))]
    events = result.dataset.get("events")
    if events:  # runs on event data compare only at the same binning
        out.append(("data_binning", ",".join(f"{k}={v}" for k, v in sorted(events.get("binning", {}).items()))))
    return [(k, v[:6000]) for k, v in out]


def provenance_tags(result) -> dict[str, Any]:
    prov = result.provenance
    tags = {"git_commit": prov.get("git_commit", "unknown"), "seed": result.seed,
            "device": prov.get("device"), "harness_version": prov.get("harness_version"),
            "dataset_version": result.dataset["version"], "method": result.method,
            "processes": prov.get("processes", 1)}
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
