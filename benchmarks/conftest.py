"""Side-by-side timing: every benchmark records its mean under a name, and the session prints the
ratios each suite declares (``RATIOS``), all measured in the same run on the same machine."""

import pytest

_MEANS: dict[str, float] = {}
_RATIOS: list[tuple[str, str, str, str]] = []  # (label, numerator, denominator, target)


@pytest.fixture
def record(benchmark):
    def _record(name: str):
        _MEANS[name] = benchmark.stats.stats.mean
        benchmark.extra_info["name"] = name
    return _record


def declare_ratio(label: str, numerator: str, denominator: str, target: str) -> None:
    _RATIOS.append((label, numerator, denominator, target))


def pytest_terminal_summary(terminalreporter):
    if not _MEANS:
        return
    tr = terminalreporter
    tr.section("side-by-side ratios (same run)")
    for label, num, den, target in _RATIOS:
        if num in _MEANS and den in _MEANS:
            ratio = _MEANS[num] / _MEANS[den]
            tr.write_line(f"{label}: {ratio:.2f}x   ({num} {_MEANS[num] * 1e3:.2f} ms / {den} "
                          f"{_MEANS[den] * 1e3:.2f} ms; target {target})")
