"""Checksummed, atomic downloads and the search for data files on disk.

A download streams into a hidden temporary file beside its destination, hashing as it goes;
only a file whose SHA-256 matches is renamed into place, so an interrupted or corrupt download
never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError


@dataclass(frozen=True)
class Remote:
    filename: str
    url: str
    sha256: str


def default_data_root() -> Path:
    """``$HARNESS_DATA_DIR`` or ``~/.cache/snn-harness/data``."""
    env = os.environ.get("HARNESS_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "snn-harness" / "data"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(remote: Remote, dest_dir: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``remote`` into ``dest_dir`` (unless already there with the right checksum)."""
    dest = dest_dir / remote.filename
    if dest.is_file():
        digest = sha256_file(dest)
        if digest == remote.sha256:
            return dest
        raise DataError(
            f"{dest} exists but its SHA-256 is {digest}, expected {remote.sha256}: "
            "the file is corrupt or a different version; delete it to download again"
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{remote.filename}.", suffix=".part", dir=dest_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = _bar(total, remote.filename, progress)
            while block := resp.read(1 << 16):
                out.write(block)
                h.update(block)
                bar.update(len(block))
            bar.close()
        if h.hexdigest() != remote.sha256:
            raise DataError(
                f"download of {remote.url} failed its checksum: SHA-256 {h.hexdigest()}, "
                f"expected {remote.sha256}; nothing was kept"
            )
        os.replace(tmp, dest)
        return dest
    except OSError as exc:  # URLError is an OSError
        raise DataError(f"could not download {remote.url}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _bar(total: int | None, name: str, enabled: bool):
    from tqdm.auto import tqdm

    from ..io import tqdm_disable

    return tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=tqdm_disable(enabled))


def find_files(names: list[str], candidates: list[Path]) -> Path | None:
    """The first directory in ``candidates`` holding every name (plain or ``.gz``)."""
    for d in candidates:
        if all(resolve_name(d, n) is not None for n in names):
            return d
    return None


def resolve_name(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None
