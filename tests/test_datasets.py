import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from harness.datasets import DATASETS, load_dataset
from harness.datasets.cifar import read_batch
from harness.datasets.download import Remote, fetch
from harness.datasets.idx import read_idx
from harness.errors import DataError, UnknownNameError


def test_mnist5k_split_is_fixed_and_stratified(mnist5k):
    assert mnist5k.split_sizes == {"train": 3600, "val": 400, "test": 1000}
    assert mnist5k.input_shape == (1, 28, 28)
    for split, per_class in (("train", 360), ("val", 40), ("test", 100)):
        assert np.bincount(mnist5k.y[split]).tolist() == [per_class] * 10
    assert 0.0 <= mnist5k.x["test"].min() and mnist5k.x["test"].max() <= 1.0
    again = load_dataset("mnist-5k")
    assert np.array_equal(again.y["test"], mnist5k.y["test"])
    assert np.array_equal(again.x["val"], mnist5k.x["val"])
    assert mnist5k.version


def test_digits(digits):
    assert digits.input_shape == (1, 8, 8)
    assert sum(digits.split_sizes.values()) == 1797
    assert digits.x["train"].max() <= 1.0


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match="Did you mean 'mnist-5k'"):
        DATASETS.check("mnist5k")


# ---- IDX ------------------------------------------------------------------------------------

def _idx(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def _write_idx_set(d: Path, n_train=100, n_test=10, gz=True, size=28):
    rng = np.random.default_rng(0)
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in files.items():
        raw = _idx(arr)
        if gz:
            (d / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / name).write_bytes(raw)
    return files


def test_idx_dataset_from_data_dir(tmp_path):
    files = _write_idx_set(tmp_path / "m")
    ds = load_dataset("mnist", data_dir=str(tmp_path / "m"))
    assert ds.split_sizes == {"train": 90, "val": 10, "test": 10}
    assert np.allclose(ds.x["test"][0, 0] * 255, files["t10k-images-idx3-ubyte"][0])
    _write_idx_set(tmp_path / "f", gz=False)
    assert load_dataset("fashion-mnist", data_dir=str(tmp_path / "f")).split_sizes["test"] == 10


def test_idx_truncated_and_bad_magic_are_named(tmp_path):
    good = _idx(np.zeros((4, 28, 28)))
    p = tmp_path / "trunc-idx3-ubyte"
    p.write_bytes(good[:-5])
    with pytest.raises(DataError, match=r"trunc-idx3-ubyte: .*truncated"):
        read_idx(p)
    p2 = tmp_path / "magic"
    p2.write_bytes(b"\x00\x00\x0d\x03" + good[4:])
    with pytest.raises(DataError, match="magic.*bad IDX magic number"):
        read_idx(p2)
    p3 = tmp_path / "broken.gz"
    p3.write_bytes(gzip.compress(good)[:40])
    with pytest.raises(DataError, match="broken.gz"):
        read_idx(p3)


def test_idx_label_count_mismatch(tmp_path):
    d = tmp_path / "m"
    _write_idx_set(d)
    (d / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.arange(7) % 10)))
    with pytest.raises(DataError, match="10 images but .* 7 labels"):
        load_dataset("mnist", data_dir=str(d))


def test_missing_data_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=str(tmp_path / "nowhere"), download=False)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "--data-dir" in msg


# ---- downloads ------------------------------------------------------------------------------

def test_download_verifies_checksum_and_is_atomic(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"snn" * 1000)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "dl"
    got = fetch(Remote("file.bin", src.as_uri(), digest), dest, progress=False)
    assert got.read_bytes() == src.read_bytes()
    assert fetch(Remote("file.bin", "file:///does/not/matter", digest), dest, progress=False) == got  # cached
    with pytest.raises(DataError, match="failed its checksum"):
        fetch(Remote("other.bin", src.as_uri(), "0" * 64), dest, progress=False)
    assert sorted(p.name for p in dest.iterdir()) == ["file.bin"]  # nothing half-written kept
    with pytest.raises(DataError, match="could not download"):
        fetch(Remote("gone.bin", (tmp_path / "missing").as_uri(), digest), dest, progress=False)
    (dest / "file.bin").write_bytes(b"tampered")
    with pytest.raises(DataError, match="file.bin exists but its SHA-256"):
        fetch(Remote("file.bin", src.as_uri(), digest), dest, progress=False)


def test_download_path_of_idx_loader(tmp_path, monkeypatch):
    """The loader fetches missing files (here from file:// URLs with real checksums)."""
    from harness.datasets import idx

    srcdir = tmp_path / "mirror"
    _write_idx_set(srcdir)
    remotes = [Remote(p.name, p.as_uri(), hashlib.sha256(p.read_bytes()).hexdigest())
               for p in sorted(srcdir.iterdir())]
    monkeypatch.setattr(idx, "MNIST_REMOTES", remotes)
    ds = idx.load_mnist(data_dir=None, download=True)
    assert ds.split_sizes["test"] == 10
    assert (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


# ---- CIFAR ----------------------------------------------------------------------------------

def _write_cifar(d: Path, n=20):
    rng = np.random.default_rng(1)
    d.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(np.arange(n) % 10)}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar_from_generated_batches(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    assert ds.input_shape == (3, 32, 32)
    assert ds.split_sizes == {"train": 90, "val": 10, "test": 20}


def test_cifar_bad_batches(tmp_path):
    p = tmp_path / "b"
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}))
    with pytest.raises(DataError, match=r"b: data has shape \(3, 100\)"):
        read_batch(p)
    p.write_bytes(pickle.dumps({b"data": np.zeros((3, 3072), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        read_batch(p)
    p.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="not a readable CIFAR-10 batch"):
        read_batch(p)

    class Evil:
        def __reduce__(self):
            return (print, ("boom",))

    p.write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_batch(p)


def test_idx_gzip_bomb_is_refused_after_its_header(tmp_path):
    # a 200 MB body behind a bad magic number: the reader must stop after the 4-byte header
    import tracemalloc

    p = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(p, "wb", compresslevel=9) as f:
        f.write(b"\x00\x00\x0d\x03")
        chunk = bytes(1 << 20)
        for _ in range(200):
            f.write(chunk)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="bomb-idx3-ubyte.gz: bad IDX magic number"):
            read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"read {peak / 2**20:.0f} MiB to refuse a bad header"


def test_idx_header_that_declares_too_much_is_refused_before_reading(tmp_path):
    import struct

    p = tmp_path / "huge-idx3-ubyte"
    # 65536³ elements: its product wraps to 0 in int64 arithmetic, and is 2**48 bytes in fact
    p.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 65536, 65536, 65536) + bytes(16))
    with pytest.raises(DataError, match=r"huge-idx3-ubyte: its header \(65536, 65536, 65536\) declares "):
        read_idx(p)


def test_idx_corrupt_gzip_body_is_named(tmp_path):
    good = gzip.compress(_idx(np.zeros((4, 28, 28))))
    bad = bytearray(good)
    bad[30:60] = bytes(range(30))  # inside the deflate stream: zlib.error, not EOF
    p = tmp_path / "corrupt-idx3-ubyte.gz"
    p.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="corrupt-idx3-ubyte.gz: cannot read IDX file"):
        read_idx(p)


@pytest.mark.parametrize("labels", [["a", "b"], None, [[1, 2]], [1.5, 2.5]])
def test_cifar_labels_of_the_wrong_kind_are_named(tmp_path, labels):
    import pickle

    p = tmp_path / "data_batch_1"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, f)
    with pytest.raises(DataError, match="data_batch_1: "):
        read_batch(p)


def test_idx_lengths_exactly_right_one_short_or_one_long(tmp_path):
    """The body must be exactly the product of the header's dimensions: one byte short is
    truncated, one byte more is trailing data (a ``>=`` for ``==``, or a missed trailing check,
    would read garbage)."""
    arr = np.arange(2 * 3 * 5).reshape(2, 3, 5) % 256
    good = _idx(arr)
    for name, data, ok in (("exact", good, True), ("short", good[:-1], False), ("long", good + b"\x00", False)):
        p = tmp_path / name
        p.write_bytes(data)
        if ok:
            assert np.array_equal(read_idx(p), arr) and read_idx(p).dtype == np.uint8
        else:
            with pytest.raises(DataError, match=rf"{name}: .*header \(2, 3, 5\) needs 46: the file is truncated or "
                                                "has trailing data"):
                read_idx(p)


@pytest.mark.parametrize("ndim,ok", [(0, False), (1, True), (4, True), (5, False)])
def test_idx_dimension_counts_from_1_to_4_are_read_others_refused(tmp_path, ndim, ok):
    shape = (2,) * ndim
    p = tmp_path / "f"
    p.write_bytes(struct.pack(">BBBB", 0, 0, 8, ndim) + struct.pack(f">{ndim}I", *shape) + bytes(2 ** ndim))
    if ok:
        assert read_idx(p).shape == shape
    else:
        with pytest.raises(DataError, match="bad IDX magic number"):
            read_idx(p)


def test_idx_of_another_element_type_is_refused(tmp_path):
    p = tmp_path / "signed"
    p.write_bytes(b"\x00\x00\x09\x01" + struct.pack(">I", 3) + bytes(3))  # 0x09: signed bytes
    with pytest.raises(DataError, match=r"signed: bad IDX magic number 00000901 \(expected 000008 \+ dims, unsigned "
                                        r"bytes\); not an IDX image/label file$"):
        read_idx(p)


def test_idx_size_limit_is_inclusive(tmp_path, monkeypatch):
    import harness.datasets.idx as idx

    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 12)
    ok, over = tmp_path / "ok", tmp_path / "over"
    ok.write_bytes(_idx(np.zeros((3, 4))))  # 12 bytes: at the limit
    over.write_bytes(_idx(np.zeros((13,))))  # 13 bytes
    assert read_idx(ok).shape == (3, 4)
    with pytest.raises(DataError, match=r"declares 13 bytes, more than the 12 this reader accepts"):
        read_idx(over)


def test_idx_labels_up_to_9_are_classes_and_10_is_refused(tmp_path):
    from harness.datasets.idx import read_idx_pair

    images, labels = tmp_path / "i", tmp_path / "l"
    images.write_bytes(_idx(np.zeros((2, 2, 2))))
    labels.write_bytes(_idx(np.array([0, 9])))
    assert read_idx_pair(images, labels)[1].tolist() == [0, 9]
    labels.write_bytes(_idx(np.array([0, 10])))
    with pytest.raises(DataError, match=r"label 10 outside 0..9"):
        read_idx_pair(images, labels)


def test_a_download_streams_in_blocks_into_a_part_file_beside_its_target(tmp_path, monkeypatch):
    """Wrong variants: the body read in one piece (a 170 MB archive in memory), the part file
    written elsewhere (os.replace across file systems fails), the size the server announced not
    given to the progress bar, the bar named after something else."""
    import urllib.request

    from harness.datasets import download

    body = bytes(range(256)) * 1000  # 256 000 bytes: four blocks of 64 KiB
    reads, seen_parts, bars = [], [], []

    class Resp:
        headers = {"Content-Length": str(len(body))}

        def __init__(self):
            self.pos = 0

        def read(self, n):
            reads.append(n)
            seen_parts.extend(p.name for p in (tmp_path / "d").glob(".file.bin.*.part"))
            out = body[self.pos:self.pos + n]
            self.pos += len(out)
            return out

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    class Bar:
        def update(self, n):
            pass

        def close(self):
            pass

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Resp())
    monkeypatch.setattr(download, "_bar", lambda total, name, enabled: bars.append((total, name, enabled)) or Bar())
    got = fetch(Remote("file.bin", "https://example.org/file.bin", hashlib.sha256(body).hexdigest()),
                tmp_path / "d", progress=False)
    assert got.read_bytes() == body and reads == [1 << 16] * 5  # the fifth read finds the end
    assert seen_parts and not list((tmp_path / "d").glob("*.part"))  # beside the target, then gone
    assert bars == [(len(body), "file.bin", False)]


def test_a_cached_file_with_another_checksum_says_what_to_do(tmp_path):
    (tmp_path / "file.bin").write_bytes(b"old")
    with pytest.raises(DataError, match=r"file.bin exists but its SHA-256 is [0-9a-f]{64}, expected 0{64}: the file "
                                        r"is corrupt or a different version; delete it to download again"):
        fetch(Remote("file.bin", "https://example.org/file.bin", "0" * 64), tmp_path, progress=False)


def test_cifar_pixels_are_scaled_by_255_so_white_is_one(tmp_path):
    """Wrong variant: dividing by 256 (white would be 0.996)."""
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar(d)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.full((20, 3072), 255, np.uint8)
        data[:, 0] = 51
        (d / name).write_bytes(pickle.dumps({b"data": data, b"labels": list(np.arange(20) % 10)}, protocol=2))
    ds = load_dataset("cifar10", data_dir=str(tmp_path), download=False)
    x = ds.x["test"]
    assert x.max() == 1.0 and x[0, 0, 0, 0] == np.float32(51) / np.float32(255)


@pytest.mark.parametrize("batch,needle", [
    ({b"data": np.zeros((2, 3072), np.uint8)}, "must be a dict with b'data' and b'labels'"),
    ({b"labels": [0, 1]}, "must be a dict with b'data' and b'labels'"),
    ([1, 2], "must be a dict with b'data' and b'labels'"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]}, "labels outside 0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [-1, 3]}, "labels outside 0..9"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, r"expected uint8 \(N, 3072\)"),
])
def test_cifar_batches_missing_a_key_or_with_labels_past_either_end_are_refused(tmp_path, batch, needle):
    """Wrong variants: the key checks joined with ``and`` (one key missing passes), the label range
    checked at one end only or with ``and``."""
    p = tmp_path / "data_batch_1"
    p.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=needle):
        read_batch(p)


def test_cifar_extraction_takes_only_the_batches_folder(tmp_path):
    """Wrong variant: the member filter joined with ``or`` (every file of the archive, or any
    path without "..", would be written)."""
    import io
    import tarfile

    from harness.datasets.cifar import _extract

    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("cifar-10-batches-py/test_batch", "elsewhere.txt", "cifar-10-batches-py/../up.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))
    _extract(archive, tmp_path / "out")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["a.tar.gz", "out/cifar-10-batches-py/test_batch"]
