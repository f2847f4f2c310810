"""IDX-format data sets: ``mnist`` and ``fashion-mnist``.

The reader validates the magic number, the element type, the dimensions and the exact byte
length, so a truncated or foreign file is named in a clear error instead of producing garbage; it
reads the header before the body, so a file that inflates to gigabytes is refused without being
decompressed.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .base import Dataset, files_digest, make_dataset
from .download import Remote, default_data_root, fetch, find_files, resolve_name

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# SHA-256 of the gzipped files as distributed upstream.
MNIST_REMOTES = [
    Remote("train-images-idx3-ubyte.gz", "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
           "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    Remote("train-labels-idx1-ubyte.gz", "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",
           "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    Remote("t10k-images-idx3-ubyte.gz", "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
           "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    Remote("t10k-labels-idx1-ubyte.gz", "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
           "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
]
_FASHION_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_REMOTES = [
    Remote("train-images-idx3-ubyte.gz", _FASHION_URL + "train-images-idx3-ubyte.gz",
           "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
    Remote("train-labels-idx1-ubyte.gz", _FASHION_URL + "train-labels-idx1-ubyte.gz",
           "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
    Remote("t10k-images-idx3-ubyte.gz", _FASHION_URL + "t10k-images-idx3-ubyte.gz",
           "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
    Remote("t10k-labels-idx1-ubyte.gz", _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
           "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


MAX_IDX_BYTES = 1 << 30  # 1 GiB: 20× full MNIST's training images; a header asking for more is refused


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped), validating header and length.

    The header is read and checked first and the body is then read up to the length the header
    declares (at most ``MAX_IDX_BYTES``), so a file that inflates to gigabytes, or a header whose
    dimensions multiply to an absurd size, is refused without being decompressed.
    """
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with (gzip.open if gzipped else open)(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4:
                raise DataError(f"{path}: {len(magic)} bytes is too short for an IDX header")
            zero1, zero2, dtype, ndim = magic
            if zero1 or zero2 or dtype != 0x08 or not 1 <= ndim <= 4:
                raise DataError(f"{path}: bad IDX magic number {magic.hex()} (expected 000008 + dims, "
                                "unsigned bytes); not an IDX image/label file")
            raw = f.read(4 * ndim)
            if len(raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", raw)
            size = math.prod(dims)  # a Python int: no overflow
            if size > MAX_IDX_BYTES:
                raise DataError(f"{path}: its header {dims} declares {size:,} bytes, more than the "
                                f"{MAX_IDX_BYTES:,} this reader accepts; the file is corrupt or not an image file")
            data = f.read(size)
            trailing = f.read(1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc}); the file is corrupt or truncated") from None
    header = 4 + 4 * ndim
    if len(data) != size or trailing:
        found = f"{header + len(data)} bytes" if not trailing else "more bytes"
        raise DataError(f"{path}: {found}, but its header {dims} needs {header + size}: "
                        "the file is truncated or has trailing data")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def read_idx_pair(images: Path, labels: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3:
        raise DataError(f"{images}: expected 3 dimensions (N, H, W), found {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels}: expected 1 dimension (N,), found {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} holds {len(y)} labels")
    if len(y) and int(y.max()) >= num_classes:
        raise DataError(f"{labels}: label {int(y.max())} outside 0..{num_classes - 1}")
    return x, y


def _load_idx_dataset(name: str, remotes: list[Remote], extra_dirs: list[Path],
                      data_dir: str | None, download: bool, classes: tuple[str, ...] = (),
                      hint: str = "") -> Dataset:
    root = default_data_root() / name
    candidates = ([Path(data_dir), Path(data_dir) / name] if data_dir else []) + extra_dirs + [root]
    found = find_files(list(FILES), candidates)
    why = ""
    if found is None and download:
        try:
            for r in remotes:
                fetch(r, root)
            found = root
        except DataError as exc:
            why = f" Download failed: {exc}."
    if found is None:
        looked = ", ".join(str(c) for c in candidates)
        raise DataError(
            f"{name}: the four IDX files ({', '.join(FILES)}, optionally .gz) were not found. "
            f"Looked in: {looked}.{why} Provide them with --data-dir DIR{hint}."
        )
    paths = [p for p in (resolve_name(found, n) for n in FILES) if p is not None]
    x_tr, y_tr = read_idx_pair(paths[0], paths[1])
    x_te, y_te = read_idx_pair(paths[2], paths[3])
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise DataError(f"{name}: train images are {x_tr.shape[1:]} but test images {x_te.shape[1:]}")
    version = f"{name}-idx/{len(y_tr)}+{len(y_te)}/split-v1/sha-{files_digest(paths)}"
    to_f = lambda a: (a.astype(np.float32) / 255.0)[:, None]
    return make_dataset(name, version, to_f(x_tr), y_tr, to_f(x_te), y_te, num_classes=10,
                        source=str(found), classes=classes)


def load_mnist(data_dir: str | None = None, download: bool = True) -> Dataset:
    return _load_idx_dataset("mnist", MNIST_REMOTES, [], data_dir, download)


def load_fashion_mnist(data_dir: str | None = None, download: bool = True) -> Dataset:
    return _load_idx_dataset("fashion-mnist", FASHION_REMOTES, [DEBIAN_FASHION], data_dir, download,
                             FASHION_CLASSES,
                             hint=" or on Debian: apt-get install dataset-fashion-mnist")
