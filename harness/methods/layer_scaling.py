"""layer-scaling — the seed's per-layer experiment: a base firing-rate scale on every layer and a
boost on one layer at a time (and, optionally, on pairs).

One run simulates the base configuration and every boosted one, and reports a table — layer(s),
boost, accuracy, extra spikes per inference over the base, accuracy gained per extra spike —
as the artifact ``layer_scaling.csv`` and as metrics ``layer_scaling/<layers>/...``. The run's
own headline metrics are those of the base configuration; per-layer firing-rate statistics of the
base configuration are saved as for ``rate``.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass

from ..config import param
from .rate import Rate, RateParams, rate_evaluation, simulate


class LayerScaling(Rate):
    name = "layer-scaling"
    default_model = "dnn5"
    smoke_sets = {"timesteps": "16", "eval_samples": "200"}

    @dataclass(frozen=True)
    class Params(RateParams):
        boost: float = param(4.0, "factor on the base scale for the boosted layer(s)", low=0, low_open=True)
        pairs: bool = param(False, "also boost every pair of layers")

    @classmethod
    def search_space(cls, trial):
        base = Rate.search_space(trial)
        return cls.Params(**base.as_dict(), boost=trial.suggest_float("boost", 1.5, 16, log=True))

    def evaluate(self, ctx, model, params, split="test"):
        base_scales = [params.scale_firing_rates] * len(model.lams)
        meters, correct = simulate(ctx, model.convert(params, base_scales), params, split,
                                   keep_per_neuron=True, desc="layer-scaling base")
        ev = rate_evaluation(ctx, meters, correct, params)
        base_acc, base_spikes = ev.metrics["test/accuracy"], ev.metrics["spikes"]
        names = [b.neuron for b in model.blocks[:-1]]
        combos = [(i,) for i in range(len(names))]
        if params.pairs:
            combos += list(itertools.combinations(range(len(names)), 2))
        rows = [dict(layers="base", boost=1.0, accuracy=base_acc, spikes=base_spikes, extra_spikes=0.0,
                     accuracy_gain=0.0, gain_per_extra_spike=0.0)]
        for combo in combos:
            scales = [s * (params.boost if i in combo else 1.0) for i, s in enumerate(base_scales)]
            label = ":".join(names[i] for i in combo)  # MLflow metric names admit no "+"
            m, _ = simulate(ctx, model.convert(params, scales), params, split, desc=f"boost {label}")
            acc = m.correct / max(m.samples, 1)
            spikes = m.summary()[0]["spikes"]
            extra = spikes - base_spikes
            rows.append(dict(layers=label, boost=params.boost, accuracy=acc, spikes=spikes, extra_spikes=extra,
                             accuracy_gain=acc - base_acc,
                             gain_per_extra_spike=(acc - base_acc) / extra if extra > 0 else 0.0))
        for r in rows[1:]:
            p = f"layer_scaling/{r['layers']}/"
            ev.metrics.update({p + k: float(r[k]) for k in ("accuracy", "extra_spikes", "accuracy_gain",
                                                              "gain_per_extra_spike")})
        best = max(rows[1:], key=lambda r: r["accuracy_gain"], default=None)
        if best is not None:
            ev.metrics["layer_scaling/best_gain"] = best["accuracy_gain"]
        path = ctx.artifact("layer_scaling.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        ev.artifacts.append(path)
        return ev
