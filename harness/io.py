"""Writing files: atomic writes (a temporary file in the same directory, renamed into place, so an
interrupted run never leaves a half-written file) and CSV tables. Every writer of the harness
goes through these helpers."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[IO], object], *, binary: bool = False) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``.
    The file gets the mode a plain ``open`` would give (the umask is honoured)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_json_atomic(obj: Any, path: Path) -> Path:
    def write(f: IO) -> None:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    return write_atomic(path, write)


def save_torch_atomic(obj: Any, path: Path) -> Path:
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f), binary=True)


def write_csv(rows: Iterable[dict], path: Path) -> Path:
    """Rows (dicts) as a CSV table; the columns are the union of the rows' keys, in first-seen order."""
    rows = list(rows)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]

    def write(f: IO) -> None:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    return write_atomic(path, write)


def private_tempdir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary directory ``harness-<kind>-<pid>-*`` in the system's temp folder. First removes
    such folders left by processes of this host that no longer exist (a SIGKILL skips Python's
    clean-up), so killed runs do not pile up empty folders."""
    clean_stale_tempdirs(kind)
    return tempfile.TemporaryDirectory(prefix=f"harness-{kind}-{os.getpid()}-")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (someone else's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def redact_url(url: str) -> str:
    """``url`` without its password, for messages and records."""
    head, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{head}://{creds.split(':', 1)[0]}:***@{host}"


def clean_stale_tempdirs(kind: str) -> list[Path]:
    import shutil

    removed = []
    for d in Path(tempfile.gettempdir()).glob(f"harness-{kind}-*-*"):
        pid = d.name.split("-")[2]
        if d.is_dir() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Prove a file can be created in folder ``path`` (or, if it does not exist yet, in its nearest
    existing ancestor, so that creating it will work) without creating anything. Creating a file is
    the only sure test (``os.access`` consults permission bits and mount flags, not quotas, ACL
    policies or exhausted inodes), and a run should fail before its work, not after it."""
    from .errors import OutputError

    path = Path(path).expanduser()
    probe_in = path
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder" if probe_in == path else
                          f"{what} {path} cannot be created: {probe_in} is a file")
    try:
        fd, probe = tempfile.mkstemp(prefix=".harness-probe-", dir=probe_in)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path} is not writable ({exc.strerror or exc})") from None
    return path


def ensure_writable_file(path: Path, what: str) -> Path:
    """``ensure_writable_dir`` for a file's folder; refuses a path that is a folder."""
    from .errors import OutputError

    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    ensure_writable_dir(path.parent, f"{what}: the folder of")
    return path


def tqdm_disable(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a bar the user asked for (``progress``): ``None`` lets tqdm show it
    only when its stream (stderr) is a terminal, so redirected output gets no ``\r`` updates."""
    return None if progress else True
