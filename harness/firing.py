"""Firing-rate statistics per layer: raw per-neuron rates, a summary, and a fitted distribution
(the seed's box-and-whisker plots and histograms with a best-fit curve read these artifacts)."""

from __future__ import annotations

import logging

import numpy as np

from .io import write_csv

log = logging.getLogger(__name__)

CANDIDATES = ("norm", "expon", "gamma", "lognorm")


def fit_distribution(rates: np.ndarray, max_points: int = 20_000, seed: int = 0) -> dict:
    """Best of normal / exponential / gamma / log-normal by the Kolmogorov-Smirnov statistic,
    fitted to the neurons that fire (silent neurons are reported separately)."""
    from scipy import stats

    r = rates[rates > 0]
    if r.size < 5 or np.ptp(r) == 0:
        return dict(fit="none", fit_params="", fit_ks=float("nan"))
    if r.size > max_points:
        r = np.random.default_rng(seed).choice(r, max_points, replace=False)
    best = None
    for name in CANDIDATES:
        dist = getattr(stats, name)
        try:
            params = dist.fit(r, floc=0) if name in ("expon", "gamma", "lognorm") else dist.fit(r)
        except (ValueError, RuntimeError, FloatingPointError, OverflowError) as exc:
            log.info("firing-rate fit %s skipped: %s", name, exc)  # a family that does not fit
            continue
        # the frozen distribution's CDF: newer SciPy passes ``args`` to norm's ndtr, which refuses them
        ks = stats.kstest(r, dist(*params).cdf).statistic
        if best is None or ks < best[2]:
            best = (name, params, ks)
    if best is None:
        return dict(fit="none", fit_params="", fit_ks=float("nan"))
    return dict(fit=best[0], fit_params=" ".join(f"{p:.6g}" for p in best[1]), fit_ks=float(best[2]))


def summarize(name: str, rates: np.ndarray) -> dict:
    q = np.percentile(rates, [5, 25, 50, 75, 95]) if rates.size else [np.nan] * 5
    return dict(layer=name, neurons=int(rates.size), mean_hz=float(rates.mean()) if rates.size else np.nan,
                std_hz=float(rates.std()) if rates.size else np.nan, p5_hz=q[0], q1_hz=q[1], median_hz=q[2],
                q3_hz=q[3], p95_hz=q[4], max_hz=float(rates.max()) if rates.size else np.nan,
                silent_fraction=float((rates == 0).mean()) if rates.size else np.nan, **fit_distribution(rates))


def firing_rate_artifacts(rates: dict, prefix: str = "firing_rates") -> list:
    """``<prefix>.npz`` (raw Hz per neuron, one array per layer) and ``<prefix>_summary.csv`` (the
    summary and fitted distribution per layer), as artifacts the runner writes."""
    from .api import Artifact

    arrays = {name: r.double().numpy() for name, r in rates.items()}
    if not arrays:
        return []

    def raw(path) -> None:
        with open(path, "wb") as f:  # np.savez_compressed would add .npz to a name without it
            np.savez_compressed(f, **arrays)

    def summary(path) -> None:
        write_csv([summarize(name, a) for name, a in arrays.items()], path)

    return [Artifact(f"{prefix}.npz", raw), Artifact(f"{prefix}_summary.csv", summary)]
