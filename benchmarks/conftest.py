"""Side-by-side timing. A suite times its contenders *interleaved* (A, B, C, A, B, C, ...) so that
drift in machine speed hits all of them alike, records each one's median, and declares the ratios
it reports in a module-level ``RATIOS`` list of (label, numerator, denominator, target); the
session prints them. pytest-benchmark times the whole interleaved session as one round."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pytest

_MEDIANS: dict[str, float] = {}
_RATIOS: list[tuple[str, str, str, str]] = []


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


def pytest_collection_modifyitems(items):
    for module in {item.module for item in items if getattr(item, "module", None)}:
        for ratio in getattr(module, "RATIOS", []):
            if ratio not in _RATIOS:
                _RATIOS.append(ratio)


def pytest_terminal_summary(terminalreporter):
    if not _MEDIANS:
        return
    tr = terminalreporter
    tr.section("side-by-side ratios (interleaved, same run)")
    for label, num, den, target in _RATIOS:
        if num in _MEDIANS and den in _MEDIANS:
            ratio = _MEDIANS[num] / _MEDIANS[den]
            tr.write_line(f"{label}: {ratio:.2f}x   ({num} {_MEDIANS[num] * 1e3:.1f} ms / {den} "
                          f"{_MEDIANS[den] * 1e3:.1f} ms median; target {target})")
