"""ann — the trained network itself, metered like any SNN: every comparison's baseline row."""

from __future__ import annotations

from ..api import Evaluation, Method
from ..meters import meter_ann


class Ann(Method):
    name = "ann"
    spiking = False
    default_model = "cnn7"

    def prepare(self, ctx, ann, params):
        return ann

    def evaluate(self, ctx, model, params, split="test"):
        metrics, layers = meter_ann(model, ctx.loader(split), ctx.device, progress=ctx.progress)
        return Evaluation(metrics, layers)
