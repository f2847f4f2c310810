"""Real services for tests: a PostgreSQL server and an ``mlflow server`` on 127.0.0.1.

PostgreSQL comes from the ``pgserver`` wheel (its ``initdb``/``pg_ctl``/``postgres`` binaries; the
test extra installs it), run by hand here so it listens on TCP. PostgreSQL refuses to run as root:
as root the cluster belongs to ``nobody`` and the server runs as that user. The MLflow server keeps
its runs in PostgreSQL and proxies artifacts (``--serve-artifacts``), as README's recipe says.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def postgres_bin() -> Path:
    spec = importlib.util.find_spec("pgserver")  # not imported: it takes a lock and a runtime dir at import
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the PostgreSQL binaries are missing: pip install -e '.[test]' installs pgserver")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ()) -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1; yields ``postgresql://postgres@127.0.0.1:PORT``."""
    bin_dir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not under pytest's 0700 folders: `nobody` must enter
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
        # `nobody` may not be able to enter the folders above the installed binaries (a checkout
        # under a 0700 home): run a copy of the installation (bin, lib, share; ~27 MB) from here,
        # laid out as installed (the binaries find their libraries at $ORIGIN/../../../pgserver.libs)
        site = bin_dir.parent.parent.parent
        for part in ("pgserver/pginstall/bin", "pgserver/pginstall/lib", "pgserver/pginstall/share", "pgserver.libs"):
            if (site / part).exists():
                shutil.copytree(site / part, root / "pg" / part, symlinks=True)
        bin_dir = root / "pg" / "pgserver" / "pginstall" / "bin"
    port, data = free_port(), root / "data"
    run = dict(user=user, cwd=root, capture_output=True, text=True, timeout=120)
    try:
        _check(subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "-E", "utf8", "--no-sync"], **run), "initdb")
        _check(subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"),
                               "-o", f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off", "start"], **run),
               "pg_ctl start", root / "log")
        url = f"postgresql://postgres@127.0.0.1:{port}"
        for db in databases:
            _check(subprocess.run([str(bin_dir / "psql"), f"{url}/postgres", "-c", f"CREATE DATABASE {db}"],
                                  capture_output=True, text=True, timeout=60), f"CREATE DATABASE {db}")
        yield url
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], **run)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, artifacts: Path) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with ``backend`` as its store, proxying artifacts into
    ``artifacts``; yields its URL once ``/health`` answers."""
    port = free_port()
    log = artifacts.parent / "mlflow-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
                                 "--serve-artifacts", "--artifacts-destination", str(artifacts),
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def _check(proc: subprocess.CompletedProcess, what: str, log: Path | None = None) -> None:
    if proc.returncode != 0:
        extra = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}{extra}")
