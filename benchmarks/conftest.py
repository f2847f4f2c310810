"""Side-by-side timing. A suite times its contenders *interleaved* (A, B, C, A, B, C, ...) so that
drift in machine speed hits all of them alike, records each one's median, and declares the ratios
it reports in a module-level ``RATIOS`` list of (label, numerator, denominator, target); the
session prints them and writes them, with the machine and the date, to ``benchmarks/RESULTS.md``,
one section per suite: a session that runs some suites replaces their sections and keeps the
others'. pytest-benchmark times the whole interleaved session as one round.

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
_RATIOS: list[tuple[str, str, str, str, str]] = []  # (suite, label, numerator, denominator, target)
_NOTES: list[tuple[str, str]] = []  # (suite, text)
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


@pytest.fixture
def note(request):
    """``note("text")`` adds a line to the suite's section of RESULTS.md (e.g. accuracies of the
    networks timed)."""
    suite = _suite(request.module)
    return lambda text: _NOTES.append((suite, text))


def _suite(module) -> str:
    return Path(module.__file__).name


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
            entry = (_suite(module), *ratio)
            if entry not in _RATIOS:
                _RATIOS.append(entry)


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
    rows: dict[str, list[str]] = {}
    for suite, label, num, den, target in _RATIOS:
        if num in _MEDIANS and den in _MEDIANS:
            ratio = _MEDIANS[num] / _MEDIANS[den]
            tr.write_line(f"{label}: {ratio:.2f}x   ({num} {_MEDIANS[num] * 1e3:.1f} ms / {den} "
                          f"{_MEDIANS[den] * 1e3:.1f} ms median; target {target})")
            rows.setdefault(suite, []).append(f"| {label} | {ratio:.2f}× | {target} | {_MEDIANS[num] * 1e3:.1f} ms | "
                                              f"{_MEDIANS[den] * 1e3:.1f} ms |")
    if not rows:
        return
    sections = _read_sections()
    stamp = f"{time.strftime('%Y-%m-%d %H:%M')}; {_machine()}"
    for suite, lines in rows.items():
        body = [f"- measured: {stamp}", "", "| ratio | measured | target | numerator median | denominator median |",
                "|---|---|---|---|---|", *lines, ""]
        notes = [text for s, text in _NOTES if s == suite]
        if notes:
            body += ["Notes:", "", *[f"- {n}" for n in notes], ""]
        sections[suite] = "\n".join(body)
    RESULTS.write_text("\n".join([HEADER, *(f"## `{k}`\n\n{v.strip()}\n" for k, v in sorted(sections.items()))]))
    tr.write_line(f"written to {RESULTS}")


HEADER = """# Benchmark results

Written by `make bench` (`benchmarks/conftest.py`), one section per suite, each from the latest run
of that suite; contenders are timed interleaved in one run, medians of the rounds. Ratios compare
the contenders of one suite only (machines here are noisy).
"""


def _read_sections() -> dict[str, str]:
    """The suites' sections of RESULTS.md as it is (``## `bench_x.py` `` headings)."""
    if not RESULTS.is_file():
        return {}
    out: dict[str, str] = {}
    current = None
    for line in RESULTS.read_text().splitlines():
        if line.startswith("## `") and line.endswith("`"):
            current = line[4:-1]
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out
