"""Side-by-side timing. A suite times its contenders *interleaved* (A, B, C, A, B, C, ...) so that
drift in machine speed hits all of them alike, records each one's median, and declares the ratios
it reports in a module-level ``RATIOS`` list of (label, numerator, denominator, target); the
session prints them and writes them, with the machine and the date, to ``benchmarks/RESULTS.md``.
pytest-benchmark times the whole interleaved session as one round.

The networks are trained and converted as a run would (``trained_ann``): benchmarks time what the
harness really simulates, not randomly initialised weights.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pytest

_MEDIANS: dict[str, float] = {}
_RATIOS: list[tuple[str, str, str, str]] = []
_NOTES: list[str] = []
RESULTS = Path(__file__).parent / "RESULTS.md"


def interleaved(funcs: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        for f in funcs.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for _ in range(rounds):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    _MEDIANS.update(medians)
    return medians


@pytest.fixture
def side_by_side(benchmark):
    """``side_by_side({"name": fn, ...}, rounds)`` → medians; also stored in the benchmark JSON."""
    def run(funcs, rounds: int, warmup: int = 1):
        medians = benchmark.pedantic(interleaved, args=(funcs, rounds, warmup), rounds=1, iterations=1)
        benchmark.extra_info.update({f"median_s/{k}": v for k, v in medians.items()})
        return medians
    return run


@pytest.fixture(scope="session")
def note():
    """``note("text")`` adds a line to RESULTS.md (e.g. accuracies of the networks timed)."""
    return _NOTES.append


def trained_ann(model: str, dataset: str = "mnist-5k", epochs: int = 15):
    """The ANN a run trains (from the harness's cache after the first time), in eval mode."""
    import torch

    import harness
    from harness.ann_cache import load_cached
    from harness.models import build_model

    res = harness.run("ann", model=model, dataset=dataset, track=False, progress=False,
                      settings={"epochs": epochs})
    ds = res.dataset
    net = build_model(model, tuple(ds["input_shape"]), ds["num_classes"])
    net.load_state_dict(load_cached(Path(res.provenance["ann_cache_file"]))["state_dict"])
    torch.manual_seed(0)
    return net.eval(), res.metrics["test/accuracy"]


def pytest_collection_modifyitems(items):
    for module in {item.module for item in items if getattr(item, "module", None)}:
        for ratio in getattr(module, "RATIOS", []):
            if ratio not in _RATIOS:
                _RATIOS.append(ratio)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:
        return
    tr = terminalreporter
    tr.section("side-by-side ratios (interleaved, same run)")
    lines = []
    for label, num, den, target in _RATIOS:
        if num in _MEDIANS and den in _MEDIANS:
            ratio = _MEDIANS[num] / _MEDIANS[den]
            text = (f"{label}: {ratio:.2f}x   ({num} {_MEDIANS[num] * 1e3:.1f} ms / {den} "
                    f"{_MEDIANS[den] * 1e3:.1f} ms median; target {target})")
            tr.write_line(text)
            lines.append(f"| {label} | {ratio:.2f}× | {target} | {_MEDIANS[num] * 1e3:.1f} ms | "
                         f"{_MEDIANS[den] * 1e3:.1f} ms |")
    if not lines:
        return
    body = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`benchmarks/conftest.py`) at the end of its latest run; contenders are",
        "timed interleaved in one run, medians of the rounds. Ratios compare the contenders of one",
        "suite only (machines here are noisy).",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M')}",
        f"- machine: {_machine()}",
        "",
        "| ratio | measured | target | numerator median | denominator median |",
        "|---|---|---|---|---|",
        *lines,
        "",
    ]
    if _NOTES:
        body += ["Notes:", "", *[f"- {n}" for n in _NOTES], ""]
    RESULTS.write_text("\n".join(body))
    tr.write_line(f"written to {RESULTS}")
