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


def write_atomic(path: Path, write: Callable[[IO], None], *, binary: bool = False) -> Path:
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
