"""layer-scaling — the seed's per-layer experiment: a base firing-rate scale on every layer and a
boost on one layer at a time (and, optionally, on pairs).

One run simulates the base configuration (the run's headline metrics and firing-rate statistics,
as for ``rate``) and then every boosted one through the harness's evaluation loop, and reports a
table — layer(s), boost, accuracy, extra spikes per inference over the base, accuracy gained per
extra spike, and the boosted layer's own firing rate in the base configuration — as the artifact
``layer_scaling.csv`` and as metrics ``layer_scaling/<layers>/...``.

The seed explains where a boost pays by firing rates: "scaling is more beneficial in layers which
are statistically firing at lower rates". So the run also reports Spearman's rank correlation
between each single layer's base firing rate and its accuracy gained per extra spike
(``layer_scaling/rate_gain_spearman``): the explanation predicts a negative ρ, on any network.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..api import Artifact, Extras
from ..config import param
from ..io import write_csv
from ..metrics import MetricSpec
from .rate import LAYER_METRICS, Rate, RateEvaluable, RateParams


@dataclass(frozen=True)
class LayerScalingParams(RateParams):
    boost: float = param(4.0, "factor on the base scale for the boosted layer(s)", low=0, low_open=True)
    pairs: bool = param(False, "also boost every pair of layers")


class LayerScaling(Rate):
    name = "layer-scaling"
    default_model = "dnn5"
    smoke_sets = {"timesteps": "16", "eval_samples": "200"}
    Params = LayerScalingParams
    metrics = LAYER_METRICS + (
        MetricSpec("layer_scaling/{layer}/accuracy", "test accuracy with this layer (or pair) boosted", "fraction",
                   "max", 0, 1),
        MetricSpec("layer_scaling/{layer}/extra_spikes", "spikes per inference added by the boost", "count"),
        MetricSpec("layer_scaling/{layer}/accuracy_gain", "accuracy gained over the base configuration",
                   "fraction", "max", -1, 1),
        MetricSpec("layer_scaling/{layer}/gain_per_extra_spike", "accuracy gained per extra spike", "1/spike",
                   "max"),
        MetricSpec("layer_scaling/best_gain", "the largest accuracy gain of any boost", "fraction", "max", -1, 1),
        MetricSpec("layer_scaling/rate_gain_spearman", "Spearman's rank correlation, over the single layers, of a "
                   "layer's base firing rate and the accuracy its boost gains per extra spike (the seed's "
                   "explanation predicts < 0)", "rho", None, -1, 1),
        MetricSpec("layer_scaling/rate_gain_pvalue", "two-sided p-value of that correlation (exact over the "
                   "pairings of the ranks up to 8 layers)", "probability", None, 0, 1),
    )

    @classmethod
    def search_space(cls, trial):
        base = Rate.search_space(trial)
        return cls.Params(**base.as_dict(), boost=trial.suggest_float("boost", 1.5, 16, log=True))

    def analyse(self, ctx, prep, evaluation, params) -> Extras:
        extras = super().analyse(ctx, prep, evaluation, params)
        model = prep.model.model
        base_acc, base_spikes = evaluation.metrics["test/accuracy"], evaluation.metrics["spikes"]
        names = model.neuron_names
        combos: list[tuple[int, ...]] = [(i,) for i in range(len(names))]
        if params.pairs:
            combos += list(itertools.combinations(range(len(names)), 2))
        rate = {n: evaluation.metrics[f"layer/{n}/firing_rate_hz"] for n in names}
        rows = [dict(layers="base", boost=1.0, accuracy=base_acc, spikes=base_spikes, extra_spikes=0.0,
                     accuracy_gain=0.0, gain_per_extra_spike=0.0, base_firing_rate_hz=float("nan"))]
        for combo in combos:
            scales = {n: params.scale_firing_rates * (params.boost if i in combo else 1.0)
                      for i, n in enumerate(names)}
            label = ":".join(names[i] for i in combo)  # MLflow metric names admit no "+"
            ev = RateEvaluable(model, params, scales, label=self.name, events=prep.model.takes_frames)
            ev.keep_per_neuron = False
            m = ctx.evaluate(ev, desc=f"boost {label}", what=f"layer-scaling boost of {label}").metrics
            acc, spikes = m["test/accuracy"], m["spikes"]
            extra = spikes - base_spikes
            rows.append(dict(layers=label, boost=params.boost, accuracy=acc, spikes=spikes, extra_spikes=extra,
                             accuracy_gain=acc - base_acc,
                             gain_per_extra_spike=(acc - base_acc) / extra if extra > 0 else 0.0,
                             base_firing_rate_hz=rate[names[combo[0]]] if len(combo) == 1 else float("nan")))
        for r in rows[1:]:
            p = f"layer_scaling/{r['layers']}/"
            extras.metrics.update({p + k: float(r[k]) for k in ("accuracy", "extra_spikes", "accuracy_gain",
                                                                  "gain_per_extra_spike")})
        best = max(rows[1:], key=lambda r: r["accuracy_gain"], default=None)
        if best is not None:
            extras.metrics["layer_scaling/best_gain"] = best["accuracy_gain"]
        extras.metrics.update(rate_gain_correlation([r for r in rows[1:] if ":" not in r["layers"]]))
        extras.artifacts.append(Artifact("layer_scaling.csv", lambda path: write_csv(rows, path)))
        return extras


def rate_gain_correlation(singles: list[dict]) -> dict[str, float]:
    """Spearman's ρ (and its two-sided p-value) of base firing rate against gain per extra spike
    over the single-layer boosts; nothing when fewer than 3 layers or either column is constant
    (ρ undefined). Up to 8 layers the p-value is exact — the share of the n! pairings of the ranks
    whose |ρ| reaches the observed one — because scipy's asymptotic p-value is meaningless for a
    few layers (it gives 0 for ρ = −1 over 3 layers, where 2 of the 6 pairings reach |ρ| = 1)."""
    import itertools

    import numpy as np
    from scipy.stats import rankdata, spearmanr

    rates = [r["base_firing_rate_hz"] for r in singles]
    gains = [r["gain_per_extra_spike"] for r in singles]
    if len(singles) < 3 or len(set(rates)) < 2 or len(set(gains)) < 2:
        return {}
    res = spearmanr(rates, gains)
    rho, p = float(res.statistic), float(res.pvalue)
    if len(singles) <= 8:
        a, b = rankdata(rates), rankdata(gains)
        perms = np.array(list(itertools.permutations(b)))
        za = (a - a.mean()) / a.std()
        zb = (perms - perms.mean(1, keepdims=True)) / perms.std(1, keepdims=True)
        rhos = (zb * za).mean(1)
        p = float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))
    return {"layer_scaling/rate_gain_spearman": rho, "layer_scaling/rate_gain_pvalue": p}
